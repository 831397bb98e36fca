// Shared by the browser scripts: start `ember serve` (or the mock server) on a free port with a temporary data
// directory, and launch Debian's Chromium through playwright-core with a fresh profile.
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** A TCP port nobody listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function tempDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/**
 * Starts the server and waits until it answers. EMBER_E2E_MOCK=1 runs tests/e2e/mock-server.mjs instead of the
 * real binary (for working on the page alone). Returns {url, dataDir, stop(), kill(), log()}.
 */
export async function startServer(extraArgs = []) {
  const port = await freePort();
  const dataDir = tempDir("ember-e2e-data-");
  let cmd;
  let args;
  if (process.env.EMBER_E2E_MOCK === "1") {
    cmd = process.execPath;
    args = [path.join(REPO, "tests/e2e/mock-server.mjs"), String(port)];
  } else {
    cmd = path.resolve(REPO, process.env.EMBER_BIN || "target/debug/ember");
    if (!fs.existsSync(cmd)) {
      throw new Error(`${cmd} does not exist: build it with \`cargo build -p ember-cli\` or set EMBER_BIN`);
    }
    const model = path.join(REPO, "tests/fixtures/tiny-sd.safetensors");
    args = ["serve", "--host", "127.0.0.1", "--port", String(port), "--model", model, "--device", "cpu",
      "--data-dir", dataDir, ...extraArgs];
  }
  const child = spawn(cmd, args, { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.on("data", (d) => { output += d; });
  child.stderr.on("data", (d) => { output += d; });
  let exited = null;
  child.on("exit", (code, signal) => { exited = { code, signal }; });

  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (exited === null) {
      child.kill("SIGTERM");
      const done = new Promise((r) => child.once("exit", r));
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await done;
      clearTimeout(timer);
    }
    fs.rmSync(dataDir, { recursive: true, force: true });
  };
  // Loading the model takes a moment; a debug build is slower still.
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (exited !== null) {
      throw new Error(`the server exited (${JSON.stringify(exited)}) before answering:\n${output}`);
    }
    try {
      // Open even on a server started with --token.
      const res = await fetch(`${url}/api/health`);
      if (res.ok) break;
    } catch (e) {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`the server did not answer on ${url} within 120 s:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  // For a watchdog that must exit now: no waiting, just make sure the server does not outlive the test.
  const kill = () => {
    if (exited === null) child.kill("SIGKILL");
  };
  return { url, dataDir, stop, kill, log: () => output };
}

/** Chromium with a fresh profile; returns {context, close()}. CHROMIUM overrides /usr/bin/chromium. */
export async function launchBrowser(viewport = { width: 1280, height: 900 }) {
  const profile = tempDir("ember-e2e-profile-");
  // playwright-core refuses --user-data-dir in args: the persistent context is how it takes a profile directory.
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport,
  });
  const close = async () => {
    await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}

/** Opens the page and waits until its event stream is connected and the sampler list is loaded. */
export async function openPage(context, url, page = null) {
  page = page || context.pages()[0] || (await context.newPage());
  await page.goto(url);
  await page.waitForSelector("body[data-sse=open]", { timeout: 15_000 });
  await page.waitForFunction(() => document.querySelectorAll("#sampler option").length > 1, null, {
    timeout: 15_000,
  });
  return page;
}
