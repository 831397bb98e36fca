// A stand-in for `ember serve` that follows docs/api.md closely enough to work on the page without the engine:
// jobs "run" one step every 150 ms and every image is the init-64x96 fixture; an uploaded `init_mask` is kept and
// served back as the image's mask. Development only; the e2e test
// runs against the real server unless EMBER_E2E_MOCK=1.
//
//   node tests/e2e/mock-server.mjs [PORT]      then open http://127.0.0.1:PORT/
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const ASSETS = path.join(REPO, "crates/ember-server/assets");
const IMAGE = fs.readFileSync(path.join(REPO, "tests/fixtures/init-64x96.png"));
const SAMPLERS = ["k_lms", "k_euler", "k_euler_a", "k_heun", "k_dpm_2", "k_dpm_2_a", "k_dpmpp_2", "k_dpmpp_2_a",
  "ddim", "plms"];
const PREVIEW = `data:image/png;base64,${IMAGE.toString("base64")}`;
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css" };
// Two named models, as `ember serve --models FILE` lists them; a job's `model` (default: the loaded one) picks one.
const MODELS = [
  { name: "mock-sd", loaded: true, description: "a stand-in SD 1.x model", family: { id: "sd1", name: "SD 1.x" },
    prediction_type: "epsilon", timestep_spacing: "karras-kdiffusion", native_size: 512,
    defaults: { steps: 50, cfg_scale: 7.5, sampler: "k_lms", width: 512, height: 512 }, notes: [] },
  { name: "mock-xl", loaded: false, description: "a stand-in SDXL model", family: { id: "sdxl", name: "SDXL" },
    prediction_type: "epsilon", timestep_spacing: "leading", native_size: 1024,
    defaults: { steps: 30, cfg_scale: 7.5, sampler: "k_euler", width: 1024, height: 1024 }, notes: [] },
];

// The add-on libraries, as GET /api/loras and /api/embeddings list them (the same names as run.mjs's folders).
const LORAS = [
  { name: "broken", family: null, trigger_words: [],
    error: "not a valid .safetensors file (header too large); it may be truncated or corrupt, download it again" },
  { name: "style", family: null, trigger_words: ["zxc style", "blue hat"] },
];
const EMBEDDINGS = [{ name: "ztok", family: null, trigger_words: [], vectors: 1 }];

const jobs = [];
const images = [];
const clients = new Set();
const now = () => new Date().toISOString();

function send(res, status, body) {
  res.writeHead(status, { "Content-Type": "application/json" });
  res.end(body === undefined ? "" : JSON.stringify(body));
}
const fail = (res, status, field, message) => send(res, status, { error: { field, message } });

function emit(event, data) {
  for (const c of clients) c.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}

/**
 * The `params` part, whether an `init_image` part came and the `init_mask` part's bytes, from a multipart body
 * (enough for a browser's).
 */
function parseMultipart(body, contentType) {
  const boundary = /boundary=(?:"([^"]+)"|([^;]+))/.exec(contentType);
  if (!boundary) return null;
  const text = body.toString("latin1");
  const out = { params: null, hasImage: false, imageName: null, mask: null };
  for (const part of text.split(`--${boundary[1] || boundary[2]}`)) {
    const name = /name="([^"]+)"/.exec(part);
    if (!name) continue;
    const content = part.slice(part.indexOf("\r\n\r\n") + 4).replace(/\r\n$/, "");
    if (name[1] === "params") out.params = Buffer.from(content, "latin1").toString("utf8");
    if (name[1] === "init_image") {
      out.hasImage = content.length > 0;
      out.imageName = (/filename="([^"]*)"/.exec(part) || [])[1] || "upload";
    }
    if (name[1] === "init_mask") out.mask = Buffer.from(content, "latin1");
  }
  return out;
}

function createJob(req, res, body) {
  let raw = body.toString("utf8");
  let hasImage = false;
  let imageName = null;
  let mask = null;
  const ct = req.headers["content-type"] || "";
  if (ct.startsWith("multipart/form-data")) {
    const mp = parseMultipart(body, ct);
    if (!mp || mp.params === null) return fail(res, 400, null, "the multipart body needs a `params` part");
    raw = mp.params;
    hasImage = mp.hasImage;
    imageName = mp.imageName;
    mask = mp.mask;
  }
  let p;
  try {
    p = JSON.parse(raw);
  } catch (e) {
    return fail(res, 400, null, `params are not JSON: ${e.message}`);
  }
  if (typeof p.prompt !== "string" || !p.prompt.trim()) return fail(res, 400, "prompt", "must not be empty");
  const model = p.model ? MODELS.find((m) => m.name === p.model) : MODELS.find((m) => m.loaded);
  if (!model) {
    return fail(res, 400, "model", `there is no model '${p.model}'; its models are ${MODELS.map((m) => m.name)}`);
  }
  const unknown = (p.loras || []).find((l) => !LORAS.some((k) => k.name === l.name));
  if (unknown) return fail(res, 400, "loras", `there is no LoRA '${unknown.name}' for this model`);
  const params = { negative_prompt: "", ...model.defaults, strength: 0.75, fit: false, karras_max: 30, ...p,
    loras: (p.loras || []).map((l) => ({ name: l.name, weight: l.weight ?? 1 })), model: model.name };
  if (params.seed == null) params.seed = Math.floor(Math.random() * 4294967296);
  // As the server: a variation amount becomes one more variation, with a fresh seed.
  params.with_variations = [...(p.with_variations || [])];
  if (p.variation_amount > 0) {
    params.with_variations.push({ seed: Math.floor(Math.random() * 4294967296), weight: p.variation_amount });
  }
  delete params.variation_amount;
  if (params.init_image_id != null && !images.some((i) => i.id === params.init_image_id)) {
    return fail(res, 400, "init_image_id", `there is no image ${params.init_image_id} in the gallery`);
  }
  const img2img = hasImage || params.init_image_id != null;
  if (mask && !img2img) return fail(res, 400, "init_mask", "a mask needs an init image to paint on");
  if (params.init_mask_id != null) {
    const source = images.find((i) => i.id === params.init_mask_id);
    if (!source || !source.mask) return fail(res, 400, "init_mask_id", `image ${params.init_mask_id} has no mask`);
    mask = source.mask;
  }
  const outcrop = { top: 0, bottom: 0, left: 0, right: 0, ...(p.outcrop || {}) };
  if (Object.values(outcrop).some((v) => v % 8 !== 0)) return fail(res, 400, "outcrop", "not a multiple of 8");
  Object.assign(params, { outcrop, invert_mask: Boolean(p.invert_mask), mask_blur: p.mask_blur || 0,
    paste_back: p.paste_back !== false, init_mask_id: p.init_mask_id ?? null });
  for (const f of ["width", "height"]) {
    if (!img2img && params[f] % 8 !== 0) return fail(res, 400, f, `${params[f]} is not a multiple of 8`);
  }
  const job = { id: jobs.length + 1, status: "queued", params, mode: img2img ? "img2img" : "txt2img",
    steps_total: img2img ? Math.floor(params.strength * params.steps) : params.steps, steps_done: 0,
    created_at: now(), started_at: null, finished_at: null, error: null, image_id: null, mask_url: null };
  Object.defineProperty(job, "mask", { value: mask, enumerable: false });
  Object.defineProperty(job, "upload", { value: hasImage ? { name: imageName, bytes: IMAGE } : null,
    enumerable: false });
  jobs.push(job);
  send(res, 201, job);
  emit("job", job);
  work();
}

let busy = false;
async function work() {
  if (busy) return;
  busy = true;
  for (let job; (job = jobs.find((j) => j.status === "queued"));) {
    for (const m of MODELS) m.loaded = m.name === job.params.model;
    Object.assign(job, { status: "running", started_at: now() });
    emit("job", job);
    for (let step = 1; step <= job.steps_total && job.status === "running"; step++) {
      await new Promise((r) => setTimeout(r, 150));
      if (job.status !== "running") break;
      job.steps_done = step;
      emit("progress", { job_id: job.id, step, total: job.steps_total, eta_s: (job.steps_total - step) * 0.15,
        preview: PREVIEW });
    }
    if (job.status === "running") {
      const id = images.length ? images[images.length - 1].id + 1 : 1;
      const image = { id, job_id: job.id, url: `/api/images/${id}/file`, seed: job.params.seed, width: 64,
        height: 96, created_at: now(), params: job.params,
        dream: `"${job.params.prompt}" -s ${job.params.steps} -S ${job.params.seed}`
          + (job.mode === "img2img" ? ` -I upload.png -A ${job.params.sampler} -f ${job.params.strength}` : "") };
      image.mask_url = job.mask ? `/api/images/${id}/mask` : null;
      Object.defineProperty(image, "mask", { value: job.mask, enumerable: false });
      // An uploaded init image is kept with the image, as the server keeps it (`GET /api/images/{id}/init`).
      Object.defineProperty(image, "upload", { value: job.upload, enumerable: false });
      images.push(image);
      Object.assign(job, { status: "done", finished_at: now(), image_id: id, mask_url: image.mask_url });
      emit("job", job);
      emit("image", { job_id: job.id, image });
    }
  }
  busy = false;
}

function route(req, res, body) {
  const url = new URL(req.url, "http://x");
  const p = url.pathname;
  let m;
  if (req.method === "GET" && (p === "/" || (m = /^\/assets\/([\w.-]+)$/.exec(p)))) {
    const file = path.join(ASSETS, m ? m[1] : "index.html");
    if (!fs.existsSync(file)) return fail(res, 404, null, "no such asset");
    res.writeHead(200, { "Content-Type": TYPES[path.extname(file)] || "application/octet-stream" });
    return res.end(fs.readFileSync(file));
  }
  if (p === "/api/events") {
    res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
    res.write(": connected\n\n");
    clients.add(res);
    return res.on("close", () => clients.delete(res));
  }
  if (p === "/api/samplers") return send(res, 200, { samplers: SAMPLERS });
  if (p === "/api/health") return send(res, 200, { status: "ok", storage: "ok", running_job: null });
  if (p === "/api/models") return send(res, 200, { models: MODELS });
  if (p === "/api/loras") return send(res, 200, { loras: LORAS });
  if (p === "/api/embeddings") return send(res, 200, { embeddings: EMBEDDINGS });
  if (p === "/api/jobs" && req.method === "POST") return createJob(req, res, body);
  if (p === "/api/jobs") {
    const st = url.searchParams.get("status");
    const list = jobs.filter((j) => !st || j.status === st).reverse();
    return send(res, 200, { jobs: list.slice(0, Number(url.searchParams.get("limit") || 50)) });
  }
  if ((m = /^\/api\/jobs\/(\d+)(\/cancel)?$/.exec(p))) {
    const job = jobs.find((j) => j.id === Number(m[1]));
    if (!job) return fail(res, 404, null, `no job ${m[1]}`);
    if (!m[2]) return send(res, 200, job);
    if (!["queued", "running"].includes(job.status)) return fail(res, 409, null, `job ${job.id} is ${job.status}`);
    Object.assign(job, { status: "canceled", finished_at: now() });
    emit("job", job);
    return send(res, 200, job);
  }
  if (p === "/api/images") {
    const page = Number(url.searchParams.get("page") || 1);
    const per = Number(url.searchParams.get("per_page") || 24);
    // `q`: the images whose prompt contains the text, ignoring case (as the server's search).
    const q = (url.searchParams.get("q") || "").trim().toLowerCase();
    const found = images.filter((im) => !q || im.params.prompt.toLowerCase().includes(q));
    const list = [...found].reverse().slice((page - 1) * per, page * per);
    return send(res, 200, { images: list, total: found.length, page, per_page: per });
  }
  if ((m = /^\/api\/images\/(\d+)(\/file|\/mask|\/init)?$/.exec(p))) {
    const i = images.findIndex((im) => im.id === Number(m[1]));
    if (i < 0) return fail(res, 404, null, `no image ${m[1]}`);
    if (m[2] === "/mask" && !images[i].mask) return fail(res, 404, null, `image ${m[1]} has no mask`);
    if (m[2] === "/init" && !images[i].upload) {
      return fail(res, 404, null, `image ${m[1]} was not made from an uploaded init image`);
    }
    if (m[2] === "/init") {
      const { name, bytes } = images[i].upload;
      res.writeHead(200, { "Content-Type": "image/png",
        "Content-Disposition": `inline; filename*=UTF-8''${encodeURIComponent(name)}` });
      return res.end(bytes);
    }
    if (m[2]) {
      res.writeHead(200, { "Content-Type": "image/png" });
      return res.end(m[2] === "/mask" ? images[i].mask : IMAGE);
    }
    if (req.method === "DELETE") {
      images.splice(i, 1);
      res.writeHead(204);
      return res.end();
    }
    return send(res, 200, images[i]);
  }
  return fail(res, 404, null, `no route for ${req.method} ${p}`);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => route(req, res, Buffer.concat(chunks)));
});
const port = Number(process.argv[2] || 9090);
server.listen(port, "127.0.0.1", () => console.log(`mock Ember API on http://127.0.0.1:${port}/`));
