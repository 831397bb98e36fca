// Screenshot of the web page for the docs: starts `ember serve` with the tiny model, generates a txt2img and an
// img2img image, and saves the page with the last image and the gallery.
//
//   node tests/e2e/screenshot.mjs docs/web-ui.png
import fs from "node:fs";
import path from "node:path";
import { launchBrowser, openPage, REPO, startServer } from "./lib.mjs";

const out = process.argv[2];
if (!out) {
  console.error("usage: node tests/e2e/screenshot.mjs OUT.png");
  process.exit(2);
}

const server = await startServer();
let browser;
let status = 0;
try {
  browser = await launchBrowser({ width: 1280, height: 800 });
  const page = await openPage(browser.context, server.url);
  const generate = async () => {
    const answer = page.waitForResponse((r) => r.url().endsWith("/api/jobs") && r.request().method() === "POST");
    await page.click("#generate");
    const job = await (await answer).json();
    await page.waitForSelector(`#jobs .job-line[data-job-id="${job.id}"][data-status="done"]`, { timeout: 120_000 });
    await page.locator(`#gallery .card[data-job-id="${job.id}"] .thumb img`).waitFor();
  };
  await page.fill("#prompt", "a lighthouse on a cliff at dusk, oil painting");
  await page.fill("#width", "128");
  await page.fill("#height", "128");
  await page.fill("#steps", "20");
  await generate();
  await page.setInputFiles("#init-file", path.join(REPO, "tests/fixtures/init-64x96.png"));
  await page.fill("#prompt", "fire");
  await page.fill("#steps", "10");
  await page.fill("#strength", "0.7");
  await generate();
  // Let the gallery's images finish decoding before the picture is taken.
  await page.waitForFunction(() => [...document.images].every((i) => i.hidden || i.complete));
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: out });
  console.log(`wrote ${out} (${fs.statSync(out).size} bytes)`);
} catch (e) {
  console.error(`screenshot failed: ${(e && e.stack) || e}\n--- server output ---\n${server.log()}`);
  status = 1;
} finally {
  if (browser) await browser.close();
  await server.stop();
}
process.exit(status);
