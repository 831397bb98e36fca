// End-to-end test of the web page against the real `ember serve` (tiny test model, CPU): upload an init image,
// generate img2img at strength 0.7 × 10 steps, watch the 7 steps arrive, find the image and its parameters in the
// gallery, then the gallery buttons, cancel, error display, the LoRA and embedding pickers, the Advanced options with
// "Variations", inpainting (mask strokes painted with the mouse and by touch, outcrop, the stored mask, "use all"
// bringing the mask back), and the phone layout. Prints "N passed, M failed" last.
//
//   node tests/e2e/run.mjs          (EMBER_BIN=path/to/ember, CHROMIUM=path/to/chromium, EMBER_E2E_MOCK=1)
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { launchBrowser, openPage, REPO, startServer } from "./lib.mjs";

const INIT_IMAGE = path.join(REPO, "tests/fixtures/init-64x96.png");
const LONG = { timeout: 120_000 }; // a generation in a debug build
const SHORT = { timeout: 15_000 };

const results = [];
async function check(name, fn) {
  try {
    await fn();
    results.push(true);
    console.log(`ok   ${name}`);
  } catch (e) {
    results.push(false);
    console.log(`FAIL ${name}\n     ${String((e && e.stack) || e).split("\n").slice(0, 4).join("\n     ")}`);
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

function assertEq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const b = JSON.stringify(expected);
  if (a !== b) throw new Error(`${what}: expected ${b}, got ${a}`);
}

/** Records every "step i / n" text of a job line and every preview update the page shows from now on. */
async function watchProgress(page) {
  await page.evaluate(() => {
    window.__steps = [];
    window.__previews = 0;
    const jobs = document.getElementById("jobs");
    const preview = document.getElementById("preview");
    new MutationObserver((records) => {
      for (const r of records) {
        if (!r.target.classList || !r.target.classList.contains("step")) continue;
        const line = r.target.closest(".job-line");
        for (const n of r.addedNodes) window.__steps.push(`${line.dataset.jobId}:${n.textContent}`);
      }
    }).observe(jobs, { childList: true, subtree: true });
    new MutationObserver((records) => {
      window.__previews += records.length;
    }).observe(preview, { attributes: true, attributeFilter: ["src"] });
  });
}

/** Clicks/presses `action`, returns the Job the server answered to the POST /api/jobs it caused. */
async function submitJob(page, action) {
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/api/jobs") && r.request().method() === "POST", SHORT),
    action(),
  ]);
  assertEq(response.status(), 201, `POST /api/jobs status (${await response.text()})`);
  return { job: await response.json(), request: response.request() };
}

/** The progress panel's line of job `id`. */
function jobLine(page, id) {
  return page.locator(`#jobs .job-line[data-job-id="${id}"]`);
}

async function waitJobStatus(page, jobId, status, options = LONG) {
  await page.waitForSelector(`#jobs .job-line[data-job-id="${jobId}"][data-status="${status}"]`, options);
}

/** Saves a screenshot for a person to look at (the test cannot judge looks): /tmp/ember-e2e-NAME.png. */
async function snap(page, name, selector = null) {
  const file = path.join(os.tmpdir(), `ember-e2e-${name}.png`);
  if (selector) await page.locator(selector).screenshot({ path: file });
  else await page.screenshot({ path: file });
  console.log(`     screenshot ${file}`);
}

/**
 * A LoRA folder (`style`: the tiny model's LoRA fixture with trigger words in its metadata; `broken`: not a
 * safetensors file) and an embedding folder (`ztok`: one vector for the tiny model) under a temporary folder.
 */
function addonFolders() {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "ember-e2e-addons-"));
  const loras = path.join(root, "loras");
  const embeddings = path.join(root, "embeddings");
  fs.mkdirSync(loras);
  fs.mkdirSync(embeddings);
  const lora = fs.readFileSync(path.join(REPO, "tests/fixtures/lora/sd1_kohya_locon.safetensors"));
  const length = Number(lora.readBigUInt64LE(0));
  const header = JSON.parse(lora.subarray(8, 8 + length).toString("utf8"));
  header.__metadata__ = { "modelspec.trigger_phrase": "zxc style, blue hat" };
  let text = JSON.stringify(header);
  while ((8 + text.length) % 8 !== 0) text += " ";
  const size = Buffer.alloc(8);
  size.writeBigUInt64LE(BigInt(Buffer.byteLength(text)));
  fs.writeFileSync(path.join(loras, "style.safetensors"),
    Buffer.concat([size, Buffer.from(text, "utf8"), lora.subarray(8 + length)]));
  fs.writeFileSync(path.join(loras, "broken.safetensors"), "not a safetensors file");
  fs.copyFileSync(path.join(REPO, "tests/fixtures/lora/sd1_emb_st.safetensors"),
    path.join(embeddings, "ztok.safetensors"));
  return { root, args: ["--lora-dir", loras, "--embedding-dir", embeddings] };
}

/** The page position of init-image pixel (x, y) on the mask canvas (the outcrop's left and top added). */
async function canvasPoint(page, x, y) {
  return page.evaluate(([px, py]) => {
    const canvas = document.getElementById("mask-canvas");
    const r = canvas.getBoundingClientRect();
    const left = Number(document.getElementById("outcrop_left").value) || 0;
    const top = Number(document.getElementById("outcrop_top").value) || 0;
    return [r.left + ((px + left + 0.5) * r.width) / canvas.width, r.top + ((py + top + 0.5) * r.height) / canvas.height];
  }, [x, y]);
}

/** A mouse stroke through init-image pixels `points`. */
async function mouseStroke(page, points) {
  const [x0, y0] = await canvasPoint(page, ...points[0]);
  await page.mouse.move(x0, y0);
  await page.mouse.down();
  for (const p of points.slice(1)) {
    const [x, y] = await canvasPoint(page, ...p);
    await page.mouse.move(x, y, { steps: 8 });
  }
  await page.mouse.up();
}

/** A one-finger touch stroke from `from` to `to` (init-image pixels), through the DevTools protocol. */
async function touchStroke(page, from, to) {
  const cdp = await page.context().newCDPSession(page);
  try {
    const [x0, y0] = await canvasPoint(page, ...from);
    const [x1, y1] = await canvasPoint(page, ...to);
    await cdp.send("Input.dispatchTouchEvent", { type: "touchStart", touchPoints: [{ x: x0, y: y0 }] });
    for (let i = 1; i <= 10; i++) {
      const t = i / 10;
      await cdp.send("Input.dispatchTouchEvent",
        { type: "touchMove", touchPoints: [{ x: x0 + (x1 - x0) * t, y: y0 + (y1 - y0) * t }] });
    }
    await cdp.send("Input.dispatchTouchEvent", { type: "touchEnd", touchPoints: [] });
  } finally {
    await cdp.detach();
  }
}

/** The mask pixels at `points` of a stored mask (its red channel, decoded by the page), its size and white count. */
async function readMask(page, url, points) {
  return page.evaluate(async ([src, pts]) => {
    const img = new Image();
    img.src = src;
    await img.decode();
    const c = document.createElement("canvas");
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let white = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] >= 128) white++;
    return { size: [c.width, c.height], white, values: pts.map(([x, y]) => d[(y * c.width + x) * 4]) };
  }, [url, points]);
}

const painted = (page) => page.evaluate(() => paintedPixels());

/** From now on the page keeps the parts of the forms it posts (playwright does not see a form's file parts). */
async function recordForms(page) {
  await page.evaluate(() => {
    const fetch = window.fetch;
    window.__forms = [];
    window.fetch = (url, options) => {
      if (options && options.body instanceof FormData) {
        window.__forms.push([...options.body.entries()].map(([k, v]) => [k, typeof v === "string" ? "text" : v.type]));
      }
      return fetch(url, options);
    };
  });
}

/** The parts of the last form the page posted, as [name, type]. */
const sentForm = (page) => page.evaluate(() => window.__forms[window.__forms.length - 1] || []);

let server = null;
// The mock server does not resolve variation_amount into with_variations nor really paint: only the real one is
// checked for those.
const realServer = process.env.EMBER_E2E_MOCK !== "1";

async function main() {
  const folders = addonFolders();
  // The server reads the files when it needs them: the folders stay until the test exits.
  process.on("exit", () => fs.rmSync(folders.root, { recursive: true, force: true }));
  server = await startServer(folders.args);
  let browser;
  const externalRequests = [];
  const pageErrors = [];
  try {
    browser = await launchBrowser();
    browser.context.on("request", (r) => {
      const u = r.url();
      // Loopback: this server, or the second one of the token check.
      if (!u.startsWith("http://127.0.0.1:") && !u.startsWith("data:") && !u.startsWith("blob:")) externalRequests.push(u);
    });
    const watchErrors = (p) => p.on("pageerror", (e) => pageErrors.push(String(e)));
    browser.context.pages().forEach(watchErrors);
    browser.context.on("page", watchErrors);
    let page;
    await check("the page loads, connects to /api/events and lists the samplers", async () => {
      page = await openPage(browser.context, server.url);
      const samplers = await page.$$eval("#sampler option", (os) => os.map((o) => o.value));
      assert(samplers.includes("k_lms") && samplers.includes("ddim"), `samplers: ${samplers}`);
    });
    if (!page) throw new Error("the page did not load; the remaining checks need it");

    await check("strength 0.7 with 10 steps and an uploaded init image shows 7 steps will run", async () => {
      await page.setInputFiles("#init-file", INIT_IMAGE);
      await page.waitForSelector("#painter[data-ready=true]", SHORT);
      await page.fill("#prompt", "fire");
      await page.fill("#steps", "10");
      await page.fill("#strength", "0.7");
      assertEq(await page.textContent("#strength-value"), "0.7", "strength shown");
      assertEq(await page.textContent("#steps-run"), "7 of 10 steps will run.", "steps that will run");
      await page.fill("#strength", "0.4");
      assertEq(await page.textContent("#steps-run"), "4 of 10 steps will run.", "steps at 0.4");
      await page.fill("#steps", "29");
      await page.fill("#strength", "0.7");
      assertEq(await page.textContent("#steps-run"), "20 of 29 steps will run.", "Python's int(0.7 * 29)");
      await page.fill("#steps", "10");
    });

    let first;
    await check("Generate sends the upload and the page shows 7 progress steps with previews", async () => {
      await watchProgress(page);
      const { job, request } = await submitJob(page, () => page.click("#generate"));
      first = job;
      const contentType = (await request.allHeaders())["content-type"] || "";
      assert(contentType.startsWith("multipart/form-data"), `the upload is multipart: ${contentType}`);
      assertEq([job.mode, job.steps_total, job.params.strength, job.params.steps], ["img2img", 7, 0.7, 10], "job");
      assert(Number.isInteger(job.params.seed), `the server chose a seed: ${job.params.seed}`);
      await waitJobStatus(page, job.id, "done");
      first = await (await page.request.get(`${server.url}/api/jobs/${job.id}`)).json();
      assert(Number.isInteger(first.image_id), `the done job names its image: ${first.image_id}`);
      await page.waitForFunction(() => {
        const img = document.getElementById("result");
        return !img.hidden && img.complete && img.naturalWidth > 0;
      }, null, SHORT);
      const steps = (await page.evaluate(() => window.__steps)).filter((t) => /^\d+:step \d+ \/ \d+$/.test(t));
      assertEq(steps, [1, 2, 3, 4, 5, 6, 7].map((i) => `${job.id}:step ${i} / 7`), "steps shown on the job's line");
      assertEq(await jobLine(page, job.id).locator(".step").getAttribute("data-steps-seen"), "1,2,3,4,5,6,7",
        "steps received");
      assertEq(await jobLine(page, job.id).locator("progress").evaluate((b) => b.value), 1, "the bar is full");
      assert((await page.evaluate(() => window.__previews)) >= 7, "a preview image for every step");
      const size = await page.$eval("#result", (img) => [img.naturalWidth, img.naturalHeight]);
      assertEq(size, [64, 96], "the final image keeps the init image's size");
    });

    const card = () => page.locator(`#gallery .card[data-job-id="${first.id}"]`);
    await check("the image appears in the gallery and its parameters show strength 0.7 and the seed", async () => {
      await card().waitFor(SHORT);
      assertEq(await page.locator("#gallery .card").count(), 1, "gallery cards");
      await card().locator("summary").click();
      await card().locator("dd[data-key=strength]").waitFor({ state: "visible", ...SHORT });
      assertEq(await card().locator("dd[data-key=strength]").textContent(), "0.7", "strength in the gallery");
      assertEq(await card().locator("dd[data-key=seed]").textContent(), String(first.params.seed), "seed");
      const dream = await card().locator(".dream").textContent();
      assert(dream.includes(`-S ${first.params.seed}`) && dream.includes("-f 0.7"), `Dream command: ${dream}`);
      const href = await card().locator("a[data-act=download]").getAttribute("href");
      const png = await page.request.get(server.url + href);
      assertEq([png.status(), png.headers()["content-type"]], [200, "image/png"], "download link");
    });

    await check("\"use seed\" and \"use all\" fill the form from a gallery image", async () => {
      await page.fill("#prompt", "something else");
      await page.fill("#steps", "3");
      await card().getByRole("button", { name: /^Use seed/ }).click();
      assertEq(await page.inputValue("#seed"), String(first.params.seed), "seed after use seed");
      assert(!(await page.isChecked("#seed_random")), "random is off after use seed");
      await card().getByRole("button", { name: /^Use all/ }).click();
      const values = await Promise.all(["#prompt", "#steps", "#strength"].map((s) => page.inputValue(s)));
      assertEq(values, ["fire", "10", "0.7"], "prompt, steps, strength after use all");
    });

    await check("\"use as init\" and Ctrl+Enter generate from a gallery image (init_image_id)", async () => {
      await card().getByRole("button", { name: /^Use as init/ }).click();
      assert((await page.textContent("#init-label")).includes(`#${first.image_id}`), "init label names the image");
      await page.focus("#prompt");
      const { job, request } = await submitJob(page, () => page.keyboard.press("Control+Enter"));
      assertEq(JSON.parse(request.postData()).init_image_id, first.image_id, "init_image_id sent");
      assertEq([job.mode, job.steps_total, job.params.seed], ["img2img", 7, first.params.seed], "second job");
      await waitJobStatus(page, job.id, "done");
      await page.locator(`#gallery .card[data-job-id="${job.id}"]`).waitFor(SHORT);
      assertEq(await page.locator("#gallery .card").count(), 2, "gallery cards");
      assertEq(await page.textContent("#gallery-total"), "(2)", "gallery total");
    });

    await check("delete removes an image from the gallery and the server", async () => {
      page.once("dialog", (d) => d.accept());
      await card().getByRole("button", { name: /^Delete/ }).click();
      await card().waitFor({ state: "detached", ...SHORT });
      assertEq(await page.locator("#gallery .card").count(), 1, "gallery cards after delete");
      const res = await page.request.get(`${server.url}/api/images/${first.image_id}`);
      assertEq(res.status(), 404, "deleted image");
    });

    await check("a server validation error is shown and points at its field", async () => {
      if (await page.isVisible("#init-clear")) await page.click("#init-clear");
      await page.fill("#width", "12");
      await page.click("#generate");
      await page.waitForSelector("#form-error:visible", SHORT);
      assertEq(await page.getAttribute("#width", "aria-invalid"), "true", "width marked invalid");
      assert((await page.textContent("#form-error")).startsWith("width:"), "the message names the field");
    });

    await check("Cancel stops a running job", async () => {
      // Big enough that the tiny model is still running when Cancel is clicked.
      await page.fill("#width", "256");
      await page.fill("#height", "256");
      await page.fill("#steps", "1000");
      const { job } = await submitJob(page, () => page.click("#generate"));
      await waitJobStatus(page, job.id, "running", SHORT);
      await page.getByRole("button", { name: `Cancel job #${job.id}` }).click();
      await waitJobStatus(page, job.id, "canceled", SHORT);
      const res = await (await page.request.get(`${server.url}/api/jobs/${job.id}`)).json();
      assertEq(res.status, "canceled", "job status on the server");
      assert(res.steps_done < 1000, `steps done: ${res.steps_done}`);
    });

    await check("two jobs: each has its own line, bar, ETA and Cancel; another client's job appears too", async () => {
      await page.fill("#prompt", "slow one");
      await page.fill("#width", "128");
      await page.fill("#height", "128");
      await page.fill("#steps", "1000");
      const { job: running } = await submitJob(page, () => page.click("#generate"));
      await waitJobStatus(page, running.id, "running", SHORT);
      await page.fill("#prompt", "waiting one");
      await page.fill("#width", "64");
      await page.fill("#height", "64");
      await page.fill("#steps", "2");
      const { job: queued } = await submitJob(page, () => page.click("#generate"));
      await waitJobStatus(page, queued.id, "queued", SHORT);
      // The running job's line counts its own steps; the queued one's stays empty and says where it is in line.
      await page.waitForFunction((id) => {
        const line = document.querySelector(`#jobs .job-line[data-job-id="${id}"]`);
        return line && line.querySelector("progress").value > 0 && /^step \d+ \/ 1000$/.test(line.querySelector(".step").textContent)
          && /^ETA /.test(line.querySelector(".eta").textContent);
      }, running.id, LONG).catch(async (e) => {
        throw new Error(`${e.message}\n${await page.$eval("#jobs", (j) => j.textContent.replace(/\s+/g, " "))}`);
      });
      const q = jobLine(page, queued.id);
      assertEq(await q.locator("progress").evaluate((b) => b.value), 0, "the queued job's bar");
      assertEq(await q.locator(".job-state").textContent(), "queued (1st in line)", "the queued job's status");
      assertEq(await q.locator(".step").textContent(), "2 steps", "the queued job's steps");
      assert((await q.locator(".eta").textContent()).startsWith("≈ ETA"), "the queued job has an estimated ETA");
      assert((await q.locator(".job-title").textContent()).includes("waiting one"), "each line names its prompt");
      // A job from another client (no page involved) gets its line from the events.
      const other = await (await page.request.post(`${server.url}/api/jobs`, {
        data: { prompt: "from a script", width: 64, height: 64, steps: 1 } })).json();
      await waitJobStatus(page, other.id, "queued", SHORT);
      assertEq(await jobLine(page, other.id).locator(".job-state").textContent(), "queued (2nd in line)", "its place");
      await snap(page, "two-jobs", "section.progress");
      // Cancel the queued job: the running one goes on.
      const before = (await (await page.request.get(`${server.url}/api/jobs/${running.id}`)).json()).steps_done;
      await page.getByRole("button", { name: `Cancel job #${queued.id}` }).click();
      await waitJobStatus(page, queued.id, "canceled", SHORT);
      await page.waitForFunction(async ([url, n]) => (await (await fetch(url)).json()).steps_done > n,
        [`/api/jobs/${running.id}`, before], SHORT);
      assertEq(await jobLine(page, running.id).getAttribute("data-status"), "running", "the running job goes on");
      assertEq(await jobLine(page, other.id).locator(".job-state").textContent(), "queued (1st in line)", "moved up");
      // Cancel the running one: the other client's queued job runs.
      await page.getByRole("button", { name: `Cancel job #${running.id}` }).click();
      await waitJobStatus(page, running.id, "canceled", SHORT);
      await waitJobStatus(page, other.id, "done");
      assertEq((await (await page.request.get(`${server.url}/api/jobs/${queued.id}`)).json()).steps_done, 0,
        "the canceled queued job never ran");
    });

    await check("Esc cancels the running job", async () => {
      await page.fill("#prompt", "escape me");
      await page.fill("#width", "256");
      await page.fill("#height", "256");
      await page.fill("#steps", "1000");
      const { job } = await submitJob(page, () => page.click("#generate"));
      await waitJobStatus(page, job.id, "running", SHORT);
      await page.focus("#prompt");
      await page.keyboard.press("Escape");
      await waitJobStatus(page, job.id, "canceled", SHORT);
      await page.fill("#width", "64");
      await page.fill("#height", "64");
      await page.fill("#steps", "2");
    });

    if (realServer) {
      await check("a job that fails when it runs shows its reason; Retry sends its params again", async () => {
        // The LoRA file is corrupt: the submission is accepted, the worker refuses the file.
        await page.fill("#prompt", "fire <lora:broken:1>");
        const { job } = await submitJob(page, () => page.click("#generate"));
        await waitJobStatus(page, job.id, "failed");
        const line = jobLine(page, job.id);
        const error = await line.locator(".job-error").textContent();
        assert(error.includes("<lora-dir>/broken.safetensors") && error.includes("corrupt"), `the reason: ${error}`);
        assert(await line.locator(".job-error").isVisible(), "the reason is shown");
        await snap(page, "failed-job", "section.progress");
        const { job: again, request } = await submitJob(page,
          () => page.getByRole("button", { name: `Retry job #${job.id}` }).click());
        const sent = JSON.parse(request.postData());
        assertEq([sent.prompt, sent.seed, sent.steps], [job.params.prompt, job.params.seed, job.params.steps], "resent");
        await waitJobStatus(page, again.id, "failed");
        for (const id of [job.id, again.id]) await page.getByRole("button", { name: `Dismiss job #${id}` }).click();
        await jobLine(page, job.id).waitFor({ state: "detached", ...SHORT });
        assertEq(await jobLine(page, again.id).count(), 0, "dismissed");
        await page.fill("#prompt", "fire");
      });
    }

    await check("batch count queues that many jobs with consecutive seeds; prompt history recalls them", async () => {
      await page.fill("#prompt", "batch of two");
      await page.uncheck("#seed_random");
      await page.fill("#seed", "4294967295");
      await page.fill("#batch_count", "2");
      const posted = [];
      const onResponse = async (r) => {
        if (r.url().endsWith("/api/jobs") && r.request().method() === "POST") posted.push(await r.json());
      };
      page.on("response", onResponse);
      await page.click("#generate");
      for (let i = 0; i < 300 && posted.length < 2; i++) await page.waitForTimeout(50);
      page.off("response", onResponse);
      assertEq(posted.map((j) => j.params.seed), [4294967295, 0], "seeds, wrapping at 2^32");
      for (const j of posted) await waitJobStatus(page, j.id, "done");
      await page.fill("#batch_count", "1");
      await page.check("#seed_random");
      const history = await page.$$eval("#prompt-history option", (os) => os.map((o) => o.textContent));
      // The prompt before the batch: the failing job's (real server only), else the one Esc cancelled.
      const before = realServer ? "fire <lora:broken:1>" : "escape me";
      assertEq(history.slice(1, 3), ["batch of two", before], "newest prompts first");
      await page.selectOption("#prompt-history", "1");
      assertEq(await page.inputValue("#prompt"), before, "a recalled prompt");
      await page.focus("#prompt");
      await page.keyboard.press("Alt+ArrowUp");
      assertEq(await page.inputValue("#prompt"), "batch of two", "Alt+Up recalls the newest");
      await page.fill("#prompt", "fire");
    });

    await check("the viewer shows an image full size with its settings; arrows step, Esc closes", async () => {
      await page.evaluate(() => window.scrollTo(0, 0));
      const ids = await page.$$eval("#gallery .card", (cs) => cs.map((c) => Number(c.dataset.imageId)));
      assert(ids.length >= 3, `gallery images: ${ids}`);
      await page.locator(`#gallery .card[data-image-id="${ids[0]}"] .thumb`).click();
      await page.waitForSelector("#viewer[open]", SHORT);
      const shown = () => page.$eval("#viewer", (d) => Number(d.dataset.imageId));
      assertEq(await shown(), ids[0], "the clicked image");
      await page.waitForFunction(() => document.getElementById("viewer-img").complete, null, SHORT);
      const image = await (await page.request.get(`${server.url}/api/images/${ids[0]}`)).json();
      assertEq(await page.textContent("#viewer-prompt"), image.params.prompt, "the whole prompt");
      assertEq(await page.textContent("#viewer-params dd[data-key=seed]"), String(image.seed), "its seed");
      assert(await page.isHidden("#viewer-prev"), "no previous image before the newest");
      await snap(page, "viewer");
      await page.keyboard.press("ArrowRight");
      assertEq(await shown(), ids[1], "→ the next (older) image");
      await page.keyboard.press("ArrowRight");
      assertEq(await shown(), ids[2], "→ again");
      await page.keyboard.press("ArrowLeft");
      assertEq(await shown(), ids[1], "← back");
      await page.click("#viewer-next");
      assertEq(await shown(), ids[2], "the Next button");
      await page.getByRole("button", { name: "Copy prompt" }).click();
      await page.waitForFunction(() => document.getElementById("viewer-note").textContent !== "", null, SHORT);
      assertEq(await page.textContent("#viewer-note"), "Prompt copied.", "copy prompt");
      await page.keyboard.press("Escape");
      await page.waitForFunction(() => !document.getElementById("viewer").open, null, SHORT);
      // "Use all settings" from the viewer fills the form.
      await page.locator(`#gallery .card[data-image-id="${ids[1]}"] .thumb`).click();
      await page.waitForSelector("#viewer[open]", SHORT);
      const second = await (await page.request.get(`${server.url}/api/images/${ids[1]}`)).json();
      await page.getByRole("button", { name: "Use all settings" }).click();
      await page.waitForFunction(() => !document.getElementById("viewer").open, null, SHORT);
      assertEq(await page.inputValue("#seed"), String(second.seed), "use all: the seed");
      assertEq(await page.inputValue("#steps"), String(second.params.steps), "use all: the steps");
      await page.check("#seed_random");
    });

    await check("the gallery searches prompts, and several images are deleted at once", async () => {
      await page.fill("#gallery-search", "batch");
      await page.waitForFunction(() => document.getElementById("gallery-total").textContent === "(2)", null, SHORT);
      const prompts = await page.$$eval("#gallery .card .thumb img", (is) => is.map((i) => i.alt));
      assert(prompts.every((a) => a.includes("batch of two")), `found: ${prompts}`);
      const posted = await page.$$eval("#gallery .card", (cs) => cs.map((c) => c.dataset.imageId));
      await page.click("#select-page");
      assertEq(await page.textContent("#delete-selected"), "Delete selected (2)", "two ticked");
      page.once("dialog", (d) => d.accept());
      await page.click("#delete-selected");
      await page.waitForFunction(() => document.getElementById("gallery-total").textContent === "(0)", null, SHORT);
      assertEq(await page.textContent("#gallery-status"), "Deleted 2 images.", "the status");
      assertEq(await page.locator("#gallery .card").count(), 0, "no card matches any more");
      for (const id of posted) assertEq((await page.request.get(`${server.url}/api/images/${id}`)).status(), 404, "gone");
      await page.fill("#gallery-search", "");
      await page.waitForFunction(() => document.getElementById("gallery-total").textContent !== "(0)", null, SHORT);
    });

    const pickers = "the LoRA and embedding pickers list the server's files and add them at the prompt's cursor";
    await check(pickers, async () => {
      await page.click("#addons summary");
      await page.waitForFunction(() => document.querySelectorAll("#lora-pick option").length === 2, null, SHORT);
      const loras = await page.$$eval("#lora-pick option", (os) => os.map((o) => [o.value, o.textContent]));
      assertEq(loras.map(([v]) => v), ["broken", "style"], "LoRAs listed");
      assert(loras[1][1].includes("zxc style, blue hat"), `the option shows the trigger words: ${loras[1][1]}`);
      assert(loras[0][1].includes("cannot be read"), `an unreadable file is marked: ${loras[0][1]}`);
      assertEq(await page.textContent("#addons-count"), "(2 LoRAs, 1 embedding)", "counts in the summary");
      await page.selectOption("#lora-pick", "broken");
      assert(await page.isDisabled("#lora-add"), "an unreadable LoRA cannot be added");
      assert((await page.textContent("#lora-info")).includes("cannot be used"), "and says why");
      await page.selectOption("#lora-pick", "style");
      assert((await page.textContent("#lora-info")).includes("Trigger words: zxc style, blue hat."), "details");
      await page.fill("#prompt", "fire at night");
      await page.$eval("#prompt", (box) => box.setSelectionRange(4, 4));
      await page.getByRole("button", { name: "Add to prompt: LoRA" }).click();
      assertEq(await page.inputValue("#prompt"), "fire <lora:style:1> at night", "the term at the cursor");
      await page.getByRole("button", { name: "Add to prompt: embedding" }).click();
      assertEq(await page.inputValue("#prompt"), "fire <lora:style:1> ztok at night", "the next one after it");
      await page.fill("#negative_prompt", "");
      await page.getByRole("button", { name: "Add to negative prompt: embedding" }).click();
      assertEq(await page.inputValue("#negative_prompt"), "ztok", "an embedding in the negative prompt");
      await page.fill("#negative_prompt", "");
      await page.fill("#width", "64");
      await page.fill("#height", "64");
      await page.fill("#steps", "2");
      const { job } = await submitJob(page, () => page.click("#generate"));
      assertEq(job.params.prompt, "fire <lora:style:1> ztok at night", "the prompt sent");
      await waitJobStatus(page, job.id, "done");
    });

    if (realServer) {
      const name = "Advanced options reach the server, and \"Variations\" blends a fresh seed into an image";
      await check(name, async () => {
        await page.fill("#width", "64");
        await page.fill("#height", "64");
        await page.fill("#steps", "2");
        await page.click("#advanced summary");
        await page.fill("#perlin", "1.5");
        await page.click("#generate");
        await page.waitForSelector("#form-error:visible", SHORT);
        assertEq(await page.getAttribute("#perlin", "aria-invalid"), "true", "perlin marked invalid");
        await page.fill("#perlin", "0.1");
        await page.fill("#variation_amount", "0.2");
        await page.check("#seamless");
        await page.check("#vae_tiling");
        const { job, request } = await submitJob(page, () => page.click("#generate"));
        const sent = JSON.parse(request.postData());
        assertEq([sent.variation_amount, sent.perlin, sent.seamless, sent.vae_tiling, sent.with_variations],
          [0.2, 0.1, true, true, []], "sent");
        const [variation] = job.params.with_variations;
        assert(job.params.with_variations.length === 1 && Number.isInteger(variation.seed), "a variation seed chosen");
        assertEq([variation.weight, job.params.perlin, job.params.seamless, job.params.vae_tiling], [0.2, 0.1, true, true],
          "resolved params");
        await waitJobStatus(page, job.id, "done");
        const made = page.locator(`#gallery .card[data-job-id="${job.id}"]`);
        await made.waitFor(SHORT);
        await made.locator("summary").click();
        assertEq(await made.locator("dd[data-key=with_variations]").textContent(), `${variation.seed}:0.2`, "card");

        const { job: child, request: childRequest } = await submitJob(page,
          () => made.getByRole("button", { name: /^Variations/ }).click());
        const childSent = JSON.parse(childRequest.postData());
        assertEq([childSent.variation_amount, childSent.with_variations], [0.1, job.params.with_variations], "sent");
        assertEq([child.params.seed, child.params.with_variations.length], [job.params.seed, 2], "same seed, one more");
        assertEq(child.params.with_variations[1].weight, 0.1, "the new blend");
        await waitJobStatus(page, child.id, "done");

        await page.locator(`#gallery .card[data-job-id="${job.id}"]`).getByRole("button", { name: /^Use all/ }).click();
        assertEq(await page.inputValue("#with_variations"), `${variation.seed}:0.2`, "use all fills the variations");
        assertEq(await page.inputValue("#variation_amount"), "0", "and asks for no new one");
        assert(await page.isChecked("#seamless"), "use all fills seamless");
        assert(await page.isChecked("#vae_tiling"), "use all fills VAE tiling");
      });
    }

    // Inpainting: the init-image pixels the strokes go through, and pixels far from every kept stroke.
    const strokeA = [[16, 24], [48, 24]]; // mouse
    const strokeB = [[12, 56], [12, 84]]; // touch
    const onStrokes = [[16, 24], [24, 24], [32, 24], [40, 24], [48, 24], [12, 56], [12, 70], [12, 84]];
    const farAway = [[60, 4], [2, 94], [48, 80], [40, 68], [32, 46], [60, 50]];
    let inpainted = null;
    let maskWhite = 0;
    const paintName = "the init image shows on a canvas: mouse and touch strokes, erase, undo, invert, clear, outcrop";
    await check(paintName, async () => {
      if (await page.isVisible("#init-clear")) await page.click("#init-clear");
      assert(await page.isHidden("#painter"), "no painter without an init image");
      // Options of earlier checks that do not suit a 64×96 init image.
      await page.evaluate(() => {
        for (const [id, v] of [["perlin", "0"], ["variation_amount", "0"], ["with_variations", ""]]) {
          document.getElementById(id).value = v;
        }
        for (const id of ["seamless", "vae_tiling"]) document.getElementById(id).checked = false;
      });
      await page.setInputFiles("#init-file", INIT_IMAGE);
      await page.waitForSelector("#painter[data-ready=true]", SHORT);
      assertEq(await page.$eval("#mask-canvas", (c) => [c.width, c.height]), [64, 96], "canvas = the image");
      assertEq(await painted(page), 0, "nothing painted yet");
      // Outpainting: "+64" on the left, then 16; the canvas shows the extended area.
      await page.getByRole("button", { name: "Extend the left side by 64 pixels" }).click();
      assertEq(await page.inputValue("#outcrop_left"), "64", "+64");
      await page.fill("#outcrop_left", "16");
      await page.waitForFunction(() => document.getElementById("mask-canvas").width === 80, null, SHORT);
      assertEq(await page.$eval("#mask-canvas", (c) => c.height), 96, "canvas height");
      assert((await page.textContent("#mask-status")).includes("left 16"), "the status names the outcrop");

      await page.fill("#brush-size", "6");
      await page.locator("#mask-canvas").scrollIntoViewIfNeeded();
      await page.evaluate(() => {
        window.__pointerTypes = new Set();
        document.getElementById("mask-canvas").addEventListener("pointerdown",
          (e) => window.__pointerTypes.add(e.pointerType));
      });
      await mouseStroke(page, strokeA);
      const afterA = await painted(page);
      assert(afterA > 100, `a mouse stroke paints: ${afterA} pixels`);
      assert((await page.textContent("#mask-status")).includes("% of the image is painted"), "status");
      await touchStroke(page, ...strokeB);
      const afterB = await painted(page);
      assert(afterB > afterA + 50, `a touch stroke paints too: ${afterA} → ${afterB}`);
      assertEq([...(await page.evaluate(() => [...window.__pointerTypes]))].sort(), ["mouse", "touch"], "pointers");

      // Undo a stroke.
      await mouseStroke(page, [[40, 80], [56, 80]]);
      assert((await painted(page)) > afterB, "third stroke");
      await page.click("#mask-undo");
      assertEq(await painted(page), afterB, "undo removes the last stroke");
      // Erase over a new stroke, then undo both.
      await mouseStroke(page, [[30, 68], [50, 68]]);
      const afterD = await painted(page);
      await page.click("#mask-erase");
      assertEq(await page.getAttribute("#mask-erase", "aria-pressed"), "true", "erase mode is pressed");
      await page.fill("#brush-size", "10");
      await mouseStroke(page, [[30, 68], [50, 68]]);
      const erased = await painted(page);
      assert(erased <= afterB + 4 && erased < afterD, `erase: ${afterB} → ${afterD} → ${erased}`);
      await page.click("#mask-undo");
      assertEq(await painted(page), afterD, "undo the erasing");
      await page.click("#mask-undo");
      assertEq(await painted(page), afterB, "undo the stroke");
      await page.click("#mask-paint");
      await page.fill("#brush-size", "6");
      // Invert twice, clear and undo.
      await page.click("#mask-invert");
      assertEq(await painted(page), 64 * 96 - afterB, "invert");
      await page.click("#mask-invert");
      assertEq(await painted(page), afterB, "invert back");
      await page.click("#mask-clear");
      assertEq(await painted(page), 0, "clear");
      await page.click("#mask-undo");
      assertEq(await painted(page), afterB, "undo the clear");
      maskWhite = afterB;
    });

    const sentName = "the painted mask is sent with the job and stored; the result and its mask are in the gallery";
    await check(sentName, async () => {
      await page.fill("#steps", "2");
      await page.fill("#strength", "1");
      await page.fill("#mask_blur", "2");
      await recordForms(page);
      const { job } = await submitJob(page, () => page.click("#generate"));
      assertEq(await sentForm(page), [["params", "text"], ["init_image", "image/png"], ["init_mask", "image/png"]],
        "the form's parts (name, type)");
      assertEq([job.mode, job.params.outcrop, job.params.mask_blur, job.params.paste_back],
        ["img2img", { top: 0, bottom: 0, left: 16, right: 0 }, 2, true], "job params");
      await waitJobStatus(page, job.id, "done");
      const done = await (await page.request.get(`${server.url}/api/jobs/${job.id}`)).json();
      const image = await (await page.request.get(`${server.url}/api/images/${done.image_id}`)).json();
      assertEq(image.mask_url, `/api/images/${done.image_id}/mask`, "mask_url");
      assertEq(done.mask_url, image.mask_url, "the job names the mask too");
      if (realServer) assertEq([image.width, image.height], [80, 96], "outcrop left 16 makes the image wider");
      const stored = await readMask(page, image.mask_url, [...onStrokes, ...farAway]);
      assertEq(stored.size, [64, 96], "the mask is at the init image's size");
      assertEq(stored.values.slice(0, onStrokes.length), onStrokes.map(() => 255), "white along the strokes");
      assertEq(stored.values.slice(onStrokes.length), farAway.map(() => 0), "black far from them");
      assertEq(stored.white, maskWhite, "the stored mask is the painted one");
      inpainted = image;

      const made = page.locator(`#gallery .card[data-job-id="${job.id}"]`);
      await made.waitFor(SHORT);
      await made.locator(".mask-fig").waitFor({ state: "visible", ...SHORT });
      await made.locator(".mask-fig img").scrollIntoViewIfNeeded(); // the thumbnails load lazily
      await page.waitForFunction((id) => {
        const img = document.querySelector(`#gallery .card[data-job-id="${id}"] .mask-fig img`);
        return img && img.complete && img.naturalWidth === 64;
      }, job.id, SHORT);
      assertEq(await made.locator(".mask-fig img").getAttribute("alt"),
        `Mask of image #${image.id}: white was repainted`, "mask thumbnail's text");
      await made.locator("summary").click();
      assertEq(await made.locator("dd[data-key=outcrop]").textContent(), "left 16", "outcrop in the parameters");
    });

    await check("\"use all\" brings the mask and the outcrop back for resubmission", async () => {
      assert(inpainted, "needs the inpainted image");
      await page.click("#mask-clear");
      await page.fill("#outcrop_left", "0");
      await page.fill("#mask_blur", "0");
      const made = page.locator(`#gallery .card[data-image-id="${inpainted.id}"]`);
      await made.getByRole("button", { name: /^Use all/ }).click();
      assertEq(await page.inputValue("#outcrop_left"), "16", "outcrop restored");
      assertEq(await page.inputValue("#mask_blur"), "2", "mask blur restored");
      // The init image was an upload: the server kept it with the image, and it comes back with the mask on it.
      await page.waitForFunction(() => document.getElementById("init-label").textContent.startsWith("init-64x96.png"),
        null, SHORT); // the upload's own name
      await page.waitForSelector("#painter[data-ready=true]", SHORT);
      await page.waitForFunction((n) => paintedPixels() === n, maskWhite, SHORT);
      const { job } = await submitJob(page, () => page.click("#generate"));
      const parts = await sentForm(page);
      assert(parts.some(([name]) => name === "init_mask"), "the restored mask is sent");
      assert(parts.some(([name]) => name === "init_image"), "and the kept upload");
      const kept = await page.request.get(`${server.url}/api/images/${inpainted.id}/init`);
      assertEq(Buffer.compare(await kept.body(), fs.readFileSync(INIT_IMAGE)), 0, "the kept upload is the file sent");
      assertEq(job.params.outcrop.left, 16, "and the outcrop");
      await waitJobStatus(page, job.id, "done");
      const done = await (await page.request.get(`${server.url}/api/jobs/${job.id}`)).json();
      assert(done.mask_url, `the resubmitted job has a mask: ${JSON.stringify(done)}`);
      const again = await readMask(page, done.mask_url, onStrokes);
      assertEq([again.white, again.values], [maskWhite, onStrokes.map(() => 255)], "the same mask");
    });

    await check("\"Variations\" of an image made from an upload sends the kept upload and its mask", async () => {
      assert(inpainted, "needs the inpainted image");
      await recordForms(page);
      const made = page.locator(`#gallery .card[data-image-id="${inpainted.id}"]`);
      const { job } = await submitJob(page, () => made.getByRole("button", { name: /^Variations/ }).click());
      assertEq((await sentForm(page)).map(([name]) => name), ["params", "init_image"], "the form's parts");
      assertEq([job.mode, job.params.init_mask_id, job.params.seed, job.params.with_variations.map((v) => v.weight)],
        ["img2img", inpainted.id, inpainted.seed, [0.1]], "an img2img variation of the same seed, with the stored mask");
      await waitJobStatus(page, job.id, "done");
    });

    await check("a phone-sized screen needs no horizontal scrolling; Generate brings the progress into view", async () => {
      await page.setViewportSize({ width: 390, height: 844 });
      const widths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
      assert(widths[0] <= widths[1], `page is ${widths[0]} px wide in a ${widths[1]} px window`);
      if (await page.isVisible("#init-clear")) await page.click("#init-clear");
      await page.evaluate(() => { document.getElementById("outcrop_left").value = "0"; });
      await page.fill("#prompt", "on a phone");
      await page.fill("#steps", "2");
      await page.locator("#generate").scrollIntoViewIfNeeded();
      const { job } = await submitJob(page, () => page.click("#generate"));
      const top = await page.$eval("#progress-heading", (h) => h.getBoundingClientRect().top);
      assert(top > -2 && top < 200, `the progress heading is at ${top} px`);
      await waitJobStatus(page, job.id, "done");
      await snap(page, "phone");
      await page.locator(`#gallery .card[data-job-id="${job.id}"] .thumb`).click();
      await page.waitForSelector("#viewer[open]", SHORT);
      const viewerWidths = await page.evaluate(() => [document.getElementById("viewer").scrollWidth, window.innerWidth]);
      assert(viewerWidths[0] <= viewerWidths[1], `the viewer is ${viewerWidths[0]} px wide`);
      await snap(page, "phone-viewer");
      await page.keyboard.press("Escape");
    });

    await check("every control has a label", async () => {
      const unlabeled = await page.$$eval("input, select, textarea", (els) =>
        els.filter((e) => e.labels.length === 0 && !e.getAttribute("aria-label")).map((e) => e.id || e.outerHTML));
      assertEq(unlabeled, [], "controls without a label");
    });

    // Not with the mock server, which has no access checks.
    if (process.env.EMBER_E2E_MOCK !== "1") {
      await check("a server started with --token asks for it once, then works", async () => {
        const guarded = await startServer(["--token", "e2e-token"]);
        try {
          const tokenPage = await browser.context.newPage();
          const asked = [];
          tokenPage.on("dialog", (dialog) => {
            asked.push(dialog.message());
            // A wrong answer is asked again; the right one signs the page in.
            dialog.accept(asked.length === 1 ? "wrong" : "e2e-token");
          });
          await openPage(tokenPage, guarded.url, tokenPage);
          assertEq(asked.length, 2, "prompts shown (wrong token, then the right one)");
          assert(asked[1].includes("not the server's token"), `second prompt: ${asked[1]}`);
          const reload = [];
          tokenPage.on("dialog", (dialog) => reload.push(dialog.message()));
          await openPage(tokenPage, guarded.url, tokenPage);
          assertEq(reload.length, 0, "no prompt after a reload: the session cookie carries the token");
          await tokenPage.close();
        } finally {
          await guarded.stop();
        }
      });
    }

    await check("no external requests and no script errors", async () => {
      assertEq(externalRequests, [], "external requests");
      assertEq(pageErrors, [], "uncaught errors in the page");
    });
  } finally {
    if (browser) await browser.close();
    await server.stop();
    if (results.includes(false)) console.log(`--- server output ---\n${server.log()}`);
  }
}

const watchdog = setTimeout(() => {
  console.log("the test ran for over 10 minutes: giving up");
  if (server) server.kill();
  results.push(false);
  console.log(`${results.filter(Boolean).length} passed, ${results.filter((r) => !r).length} failed`);
  process.exit(1);
}, 600_000);

try {
  await main();
} catch (e) {
  results.push(false);
  console.log(`FAIL ${String((e && e.stack) || e)}`);
}
clearTimeout(watchdog);
const failed = results.filter((r) => !r).length;
console.log(`${results.length - failed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
