// End-to-end test of the web page against the real `ember serve` (tiny test model, CPU): upload an init image,
// generate img2img at strength 0.7 × 10 steps, watch the 7 steps arrive, find the image and its parameters in the
// gallery, then the gallery buttons, cancel, error display, the LoRA and embedding pickers, the Advanced options with
// "Variations", and the phone layout. Prints "N passed, M failed" last.
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

/** Records every "step i / n" text and preview update the page shows from now on. */
async function watchProgress(page) {
  await page.evaluate(() => {
    window.__steps = [];
    window.__previews = 0;
    const step = document.getElementById("progress-step");
    const preview = document.getElementById("preview");
    new MutationObserver((records) => {
      for (const r of records) for (const n of r.addedNodes) window.__steps.push(n.textContent);
    }).observe(step, { childList: true });
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

async function waitJobStatus(page, jobId, status, options = LONG) {
  await page.waitForFunction(
    ([id, st]) => {
      const el = document.getElementById("job-status");
      return el.dataset.status === st && el.textContent.startsWith(`Job #${id} `);
    },
    [jobId, status],
    options,
  );
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

let server = null;

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
      await page.waitForSelector("#init-preview:visible", SHORT);
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
      const steps = (await page.evaluate(() => window.__steps)).filter((t) => /^step \d+ \/ \d+$/.test(t));
      assertEq(steps, [1, 2, 3, 4, 5, 6, 7].map((i) => `step ${i} / 7`), "steps shown on the page");
      assertEq(await page.getAttribute("#progress-step", "data-steps-seen"), "1,2,3,4,5,6,7", "steps received");
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
      await page.waitForSelector("#cancel:enabled", SHORT);
      await page.click("#cancel");
      await waitJobStatus(page, job.id, "canceled", SHORT);
      const res = await (await page.request.get(`${server.url}/api/jobs/${job.id}`)).json();
      assertEq(res.status, "canceled", "job status on the server");
      assert(res.steps_done < 1000, `steps done: ${res.steps_done}`);
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

    // The mock server does not resolve variation_amount into with_variations; only the real one is checked.
    const realServer = process.env.EMBER_E2E_MOCK !== "1";
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

    await check("a phone-sized screen needs no horizontal scrolling", async () => {
      await page.setViewportSize({ width: 390, height: 844 });
      const widths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
      assert(widths[0] <= widths[1], `page is ${widths[0]} px wide in a ${widths[1]} px window`);
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
