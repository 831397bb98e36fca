// Ember's web page: builds generation requests from the form, follows jobs through the server-sent events of
// /api/events, and shows the gallery. Plain browser JavaScript, no build step; the API is docs/api.md. The form's
// Advanced section lives in advanced.js, the LoRA and embedding pickers in addons.js, the mask painter in inpaint.js,
// the gallery cards in gallery.js, the progress panel's job lines in jobs.js, the full-size viewer in viewer.js;
// the scripts share their top-level names.
"use strict";

const $ = (id) => document.getElementById(id);

// `text` cut to `max` characters with an ellipsis (job titles, gallery cards; the viewer shows values whole).
function cutText(text, max) {
  const t = String(text ?? "");
  return t.length > max ? `${t.slice(0, max)}…` : t;
}

const MAX_UPLOAD_BYTES = 20 * 1024 * 1024;
const UPLOAD_TYPES = ["image/png", "image/jpeg", "image/webp", "image/bmp"];
const PER_PAGE = 24;
const FINISHED = new Set(["done", "failed", "canceled"]);
// Statuses only move forward; used to ignore a stale report that arrives after a newer one.
const STATUS_RANK = { queued: 0, running: 1, done: 2, failed: 2, canceled: 2 };
// API error `field` → the control to point at.
const FIELD_CONTROL = { init_image: "init-file", init_image_id: "init-file", loras: "lora-pick",
  init_mask: "mask-canvas", init_mask_id: "mask-canvas", invert_mask: "mask-invert", outcrop: "outcrop_top" };

const state = {
  init: null, // {kind: "file", file, url} | {kind: "gallery", id, url}
  jobs: new Map(), // id → Job, as last reported
  images: [], // the gallery page shown (the viewer steps through it)
  selected: new Set(), // ids of the gallery images ticked for "Delete selected"
  search: "", // the gallery's prompt search
  uploads: new Map(), // job id → {file, mask} this tab uploaded with it: Retry sends them again
  lastSeed: null,
  page: 1,
  totalImages: 0,
  submitting: false,
  everConnected: false,
  model: null, // the model jobs run on (the chosen one, else the loaded one), as GET /api/models reports it
  models: [], // every model GET /api/models lists; with more than one, the form has a model picker
  nativeSize: 512, // its native side in pixels (hires fix's first pass)
  touched: new Set(), // ids of the form controls the user has changed: the model's defaults leave them alone
};
// Form controls the loaded model's `defaults` set (their ids are the API's field names).
const MODEL_DEFAULT_FIELDS = ["sampler", "steps", "cfg_scale", "width", "height"];

// ---------------------------------------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, field, message) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

async function api(path, options = {}, signedIn = false) {
  let res;
  try {
    res = await fetch(path, options);
  } catch (e) {
    throw new ApiError(0, null, "The Ember server cannot be reached. Is `ember serve` still running?");
  }
  // A server started with --token: ask for it once; the session cookie carries it from then on.
  if (res.status === 401 && !signedIn) {
    await signIn();
    return api(path, options, true);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (e) {} // not JSON: the status is reported below
  if (!res.ok) {
    const err = body && body.error;
    const message = (err && err.message) || `${res.status} ${res.statusText || "error"} from ${path}`;
    throw new ApiError(res.status, (err && err.field) || null, message);
  }
  return body;
}

let signingIn = null;

// Asks for the server's access token until it is right (or the user gives up); concurrent callers share one prompt.
function signIn() {
  if (!signingIn) {
    signingIn = (async () => {
      let message = "This Ember server needs its access token (the --token it was started with):";
      for (;;) {
        const token = window.prompt(message);
        if (token === null) {
          throw new ApiError(401, null, "This server needs its access token; reload the page to enter it.");
        }
        const res = await fetch("/api/session", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ token }),
        });
        if (res.ok) return;
        message = "That is not the server's token. Access token:";
      }
    })().finally(() => {
      signingIn = null;
    });
  }
  return signingIn;
}

// ---------------------------------------------------------------------------------------------- form

function intValue(id) {
  const v = $(id).value.trim();
  return /^\d+$/.test(v) ? Number(v) : NaN;
}

// Python's `int(strength * steps)` for non-negative values, as the server and InvokeAI count img2img steps.
function stepsToRun(strength, steps) {
  return Math.floor(strength * steps);
}

function updateStepsRun() {
  const strength = Number($("strength").value);
  const steps = intValue("steps");
  $("strength-value").textContent = $("strength").value;
  const out = $("steps-run");
  if (!Number.isFinite(steps) || steps < 1) {
    out.textContent = "Enter the number of steps to see how many will run.";
  } else if (!state.init && $("hires_fix").checked) {
    const native = `${state.nativeSize} × ${state.nativeSize}`;
    out.textContent = `Hires fix: ${steps} steps at about ${native}, then ${stepsToRun(strength, steps)} at full size`
      + ` (when the image is larger than ${native}).`;
  } else if (!state.init) {
    out.textContent = `No init image: txt2img runs all ${steps} steps (strength only applies to img2img).`;
  } else if ($("exact_steps").checked) {
    const schedule = exactSchedule(strength, steps);
    out.textContent = schedule === null
      ? `Exact steps: ${steps} steps at this strength would need a schedule over 1000 steps.`
      : `Exact steps: ${steps} steps will run, from a schedule of ${schedule}.`;
  } else {
    const n = stepsToRun(strength, steps);
    out.textContent = n === 0
      ? `0 of ${steps} steps will run: the init image comes back as it is, through the VAE.`
      : `${n} of ${steps} steps will run.`;
  }
}

function setSeedRandom(random) {
  $("seed_random").checked = random;
  $("seed").disabled = random;
}

function clearFieldErrors() {
  $("form-error").hidden = true;
  $("form-error").textContent = "";
  for (const el of document.querySelectorAll("[aria-invalid=true]")) el.removeAttribute("aria-invalid");
}

function showFormError(field, message) {
  const err = $("form-error");
  err.textContent = field ? `${field.replace(/_/g, " ")}: ${message}` : message;
  err.hidden = false;
  // A field inside a list or object (`with_variations[0].seed`, `outcrop.top`) points at the list's control.
  const base = field && field.replace(/[[.].*$/, "");
  const control = field && $(FIELD_CONTROL[field] || FIELD_CONTROL[base] || base);
  if (control) {
    const section = control.closest("details");
    if (section) section.open = true;
    control.setAttribute("aria-invalid", "true");
    control.focus();
  }
}

function note(message) {
  $("form-note").textContent = message;
}

// The request's params from the form, or throws an ApiError-shaped complaint naming the field.
function readParams() {
  const prompt = $("prompt").value;
  if (!prompt.trim()) throw new ApiError(0, "prompt", "write what the image should show.");
  const steps = intValue("steps");
  if (!(steps >= 1 && steps <= 1000)) throw new ApiError(0, "steps", "must be a whole number from 1 to 1000.");
  const cfg = Number($("cfg_scale").value);
  if ($("cfg_scale").value.trim() === "" || !Number.isFinite(cfg)) {
    throw new ApiError(0, "cfg_scale", "must be a number (7.5 is the usual value).");
  }
  const params = {
    prompt,
    negative_prompt: $("negative_prompt").value,
    steps,
    cfg_scale: cfg,
    sampler: $("sampler").value,
    seed: null,
    width: intValue("width"),
    height: intValue("height"),
    strength: Number($("strength").value),
    fit: $("fit").checked,
  };
  for (const f of ["width", "height"]) {
    if (!Number.isFinite(params[f])) throw new ApiError(0, f, "must be a whole number of pixels, e.g. 512.");
  }
  if (!$("seed_random").checked) {
    const seed = intValue("seed");
    if (!(seed <= 4294967295)) {
      throw new ApiError(0, "seed", "must be a whole number from 0 to 4294967295, or tick Random.");
    }
    params.seed = seed;
  }
  const karras = intValue("karras_max");
  if (!Number.isFinite(karras)) throw new ApiError(0, "karras_max", "must be a whole number (30 by default).");
  params.karras_max = karras;
  if (state.init && state.init.kind === "gallery") params.init_image_id = state.init.id;
  if (state.models.length > 1 && $("model").value) params.model = $("model").value;
  return readAdvancedParams(readInpaintParams(params));
}

async function generate() {
  if (state.submitting) return;
  clearFieldErrors();
  let params;
  try {
    params = readParams();
  } catch (e) {
    showFormError(e.field, e.message);
    return;
  }
  // The painted mask (a promise of a PNG, or of null when nothing is painted); only with an init image to paint on.
  const mask = state.init ? await maskBlob() : null;
  const file = state.init && state.init.kind === "file" ? state.init.file : null;
  rememberPrompt(params.prompt, params.negative_prompt);
  // Batch count: that many jobs; a fixed seed counts up (seed, seed+1, …, as A1111 does), a random one stays random.
  const count = Math.min(32, Math.max(1, intValue("batch_count") || 1));
  let queued = 0;
  for (let i = 0; i < count; i++) {
    const one = params.seed == null ? params : { ...params, seed: (params.seed + i) % 4294967296 };
    if (!(await submitJob(one, file, mask))) break;
    queued += 1;
  }
  // On a phone the progress panel is below the long form: bring it into view (not when the form shows an error).
  if (queued > 0 && window.matchMedia("(max-width: 760px)").matches) {
    $("progress-heading").scrollIntoView({ block: "start" });
  }
}

// POSTs a job (multipart when there is an uploaded init image or a painted mask) and follows it; errors go to the
// form. `mask` is a Blob, a promise of one (or of null), or null. Returns the Job, or null when it was refused.
async function submitJob(params, file, mask = null) {
  state.submitting = true;
  $("generate").disabled = true;
  try {
    const maskFile = await mask;
    let options;
    if (file || maskFile) {
      const body = new FormData();
      body.append("params", JSON.stringify(params));
      if (file) body.append("init_image", file, file.name);
      if (maskFile) body.append("init_mask", maskFile, "mask.png");
      options = { method: "POST", body };
    } else {
      options = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(params) };
    }
    const job = await api("/api/jobs", options);
    state.lastSeed = job.params.seed;
    $("seed_reuse").disabled = false;
    const variations = job.params.with_variations || [];
    const fresh = params.variation_amount > 0 && variations.length > 0 ? variations[variations.length - 1] : null;
    note(`Job #${job.id} queued with seed ${job.params.seed}`
      + (fresh ? ` and variation seed ${fresh.seed} (weight ${fresh.weight}).` : "."));
    if (file || maskFile) state.uploads.set(job.id, { file, mask: maskFile });
    onJob(job);
    return job;
  } catch (e) {
    showFormError(e.field, e.message);
    return null;
  } finally {
    state.submitting = false;
    $("generate").disabled = false;
  }
}

async function cancelJob(id) {
  try {
    onJob(await api(`/api/jobs/${id}/cancel`, { method: "POST" }));
  } catch (e) {
    note(e.status === 409 ? `Job #${id} had already finished.` : `Could not cancel job #${id}: ${e.message}`);
  }
}

// ---------------------------------------------------------------------------------------------- prompt history

const HISTORY_KEY = "ember.promptHistory";
const HISTORY_MAX = 50;

function promptHistory() {
  try {
    const list = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
    return Array.isArray(list) ? list.filter((h) => h && typeof h.prompt === "string") : [];
  } catch (e) {
    return [];
  }
}

// Keeps the last 50 distinct prompts (with their negative prompts) in this browser, newest first.
function rememberPrompt(prompt, negative) {
  const list = promptHistory().filter((h) => h.prompt !== prompt || h.negative !== negative);
  list.unshift({ prompt, negative: negative || "" });
  try {
    localStorage.setItem(HISTORY_KEY, JSON.stringify(list.slice(0, HISTORY_MAX)));
  } catch (e) {} // storage full or off: history is a convenience
  renderPromptHistory();
}

function renderPromptHistory() {
  const list = promptHistory();
  const pick = $("prompt-history");
  pick.replaceChildren(new Option(list.length ? `Earlier prompts (${list.length})…` : "No earlier prompts", ""),
    ...list.map((h, i) => {
      const text = h.negative ? `${h.prompt}  [− ${h.negative}]` : h.prompt;
      return new Option(text.length > 90 ? `${text.slice(0, 90)}…` : text, String(i));
    }));
  pick.disabled = list.length === 0;
}

function recallPrompt(i) {
  const h = promptHistory()[i];
  if (!h) return;
  $("prompt").value = h.prompt;
  $("negative_prompt").value = h.negative;
  note(`Earlier prompt ${i + 1} recalled (Alt+↑/↓ in the prompt steps through them).`);
}

function bindPromptHistory() {
  renderPromptHistory();
  $("prompt-history").addEventListener("change", (e) => {
    if (e.target.value !== "") recallPrompt(Number(e.target.value));
    $("prompt").focus();
  });
  // Alt+Up/Down in the prompt: older/newer prompts, as a shell's history.
  let at = -1;
  $("prompt").addEventListener("keydown", (e) => {
    if (!e.altKey || (e.key !== "ArrowUp" && e.key !== "ArrowDown")) return;
    const n = promptHistory().length;
    if (n === 0) return;
    e.preventDefault();
    at = Math.min(n - 1, Math.max(0, at + (e.key === "ArrowUp" ? 1 : -1)));
    recallPrompt(at);
  });
}

// ---------------------------------------------------------------------------------------------- init image

function setInit(init) {
  if (state.init && state.init.kind === "file") URL.revokeObjectURL(state.init.url);
  state.init = init;
  const img = $("init-preview");
  $("drop").dataset.hasImage = String(Boolean(init));
  $("init-clear").hidden = !init;
  if (init) {
    img.src = init.url;
    img.alt = init.kind === "file" ? `Init image: ${init.file.name}` : `Init image: gallery image #${init.id}`;
    $("init-label").textContent = init.kind === "file" ? `${init.file.name}. Drop another, or`
      : `Gallery image #${init.id}. Drop another, or`;
  } else {
    img.removeAttribute("src");
    $("init-label").textContent = "Drop an image here, or";
  }
  // The mask painter shows the image (the preview stays hidden).
  painterSetImage(init ? init.url : null);
  updateStepsRun();
}

function setFileInit(file) {
  clearFieldErrors();
  const byName = /\.(png|jpe?g|webp|bmp)$/i.test(file.name);
  if (!UPLOAD_TYPES.includes(file.type) && !byName) {
    showFormError("init_image", `${file.name} is not a PNG, JPEG, WebP or BMP image.`);
    return;
  }
  if (file.size > MAX_UPLOAD_BYTES) {
    showFormError("init_image", `${file.name} is ${(file.size / 1048576).toFixed(1)} MB; the limit is 20 MB.`);
    return;
  }
  setInit({ kind: "file", file, url: URL.createObjectURL(file) });
}

function setGalleryInit(id) {
  setInit({ kind: "gallery", id, url: `/api/images/${id}/file` });
}

function bindInit() {
  $("init-file").addEventListener("change", (e) => {
    const file = e.target.files && e.target.files[0];
    if (file) setFileInit(file);
    e.target.value = ""; // so choosing the same file again still fires `change`
  });
  $("init-clear").addEventListener("click", () => {
    setInit(null);
    $("init-file").focus();
  });
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) return setFileInit(file);
    // A gallery thumbnail dragged onto the zone arrives as its URL.
    const uri = e.dataTransfer.getData("text/uri-list") || e.dataTransfer.getData("text/plain");
    const m = /\/api\/images\/(\d+)\/file/.exec(uri || "");
    if (m) setGalleryInit(Number(m[1]));
  });
}

// ---------------------------------------------------------------------------------------------- jobs and events

function formatEta(s) {
  if (typeof s !== "number" || !Number.isFinite(s)) return "";
  if (s < 1) return "ETA < 1 s";
  if (s < 60) return `ETA ${Math.round(s)} s`;
  return `ETA ${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function parseEvent(handler) {
  return (e) => {
    let data;
    try {
      data = JSON.parse(e.data);
    } catch (err) {
      console.warn("Ignoring an event that is not JSON", e.data);
      return;
    }
    handler(data);
  };
}

function connectEvents() {
  const conn = $("conn");
  const events = new EventSource("/api/events");
  events.addEventListener("open", () => {
    conn.textContent = "Live";
    conn.dataset.state = "open";
    document.body.dataset.sse = "open";
    // Events sent while disconnected are lost: catch up on the jobs still open and on the gallery.
    if (state.everConnected) resync();
    state.everConnected = true;
  });
  events.addEventListener("error", () => {
    conn.textContent = "Connection lost, reconnecting…";
    conn.dataset.state = "closed";
    document.body.dataset.sse = "closed";
  });
  events.addEventListener("job", parseEvent(onJob));
  events.addEventListener("progress", parseEvent(onProgress));
  events.addEventListener("image", parseEvent(onImage));
}

async function resync() {
  for (const job of [...state.jobs.values()].filter((j) => !FINISHED.has(j.status))) {
    try {
      onJob(await api(`/api/jobs/${job.id}`));
    } catch (e) {
      console.warn(`Could not refresh job #${job.id}`, e);
    }
  }
  loadGallery(state.page);
}

// ---------------------------------------------------------------------------------------------- model

// Shows the model jobs will run on (name and family) and makes its defaults the form's, except where the user typed
// already; `force` (a model chosen in the picker) sets them all.
function applyModel(model, force = false) {
  if (!model || typeof model.name !== "string") return;
  state.model = model;
  const family = model.family && model.family.name;
  const label = $("model-label");
  label.textContent = family ? `${model.name} (${family})` : model.name;
  label.dataset.family = (model.family && model.family.id) || "";
  const about = [model.description, model.prediction_type && `predicts ${model.prediction_type}`,
    model.timestep_spacing && `${model.timestep_spacing} timestep spacing`, ...(model.notes || [])].filter(Boolean);
  label.title = about.join("; ");
  if (model.native_size > 0) {
    state.nativeSize = model.native_size;
    $("native-size").textContent = `${model.native_size} × ${model.native_size}`;
  }
  const defaults = model.defaults || {};
  for (const id of MODEL_DEFAULT_FIELDS) {
    const v = defaults[id];
    if (v === undefined || v === null || (state.touched.has(id) && !force)) continue;
    state.touched.delete(id);
    if (id === "sampler" && ![...$("sampler").options].some((o) => o.value === v)) {
      $("sampler").append(new Option(v, v));
    }
    $(id).value = String(v);
  }
  showModelSchedule(model);
  updateStepsRun();
}

function modelOptionText(model) {
  const family = model.family && model.family.name;
  return (family ? `${model.name} (${family})` : model.name) + (model.loaded ? " · loaded" : "");
}

// Fills the model picker (shown only when the server has several models), keeping the chosen one.
function renderModelPicker() {
  const picker = $("model");
  const chosen = picker.value || (state.model && state.model.name);
  picker.replaceChildren(...state.models.map((m) => {
    const option = new Option(modelOptionText(m), m.name);
    if (m.description) option.title = m.description;
    return option;
  }));
  if (state.models.some((m) => m.name === chosen)) picker.value = chosen;
  $("model-field").hidden = state.models.length < 2;
}

// Picks a model by name (the picker's choice, or "Use all" of an image); `withDefaults` puts its defaults in the form.
function chooseModel(name, withDefaults) {
  const model = state.models.find((m) => m.name === name);
  if (!model) return false;
  const changed = $("model").value !== name || !state.model || state.model.name !== name;
  $("model").value = name;
  applyModel(model, withDefaults);
  // Each model has its own LoRAs and embeddings.
  if (changed) loadAddons();
  return true;
}

async function loadModel() {
  try {
    const { models } = await api("/api/models");
    state.models = (models || []).filter((m) => m && typeof m.name === "string");
    const current = state.models.find((m) => m.loaded) || state.models[0] || null;
    renderModelPicker();
    if (current) $("model").value = current.name;
    applyModel(current);
  } catch (e) {
    note(`Could not load the model's details (${e.message}); the form keeps InvokeAI's defaults.`);
  }
}

// Refreshes which model is loaded, without touching the form.
async function refreshModels() {
  try {
    const { models } = await api("/api/models");
    state.models = (models || []).filter((m) => m && typeof m.name === "string");
    renderModelPicker();
  } catch (e) {
    console.warn("Could not refresh the model list", e);
  }
}

// ---------------------------------------------------------------------------------------------- start

async function loadSamplers() {
  try {
    const { samplers } = await api("/api/samplers");
    const current = $("sampler").value;
    $("sampler").replaceChildren(...samplers.map((s) => new Option(s, s)));
    if (samplers.includes(current)) $("sampler").value = current;
  } catch (e) {
    note(`Could not load the sampler list (${e.message}); k_lms is available.`);
  }
}

function bindForm() {
  $("gen-form").addEventListener("submit", (e) => {
    e.preventDefault();
    generate();
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      generate();
    } else if (e.key === "Escape" && !e.defaultPrevented && !document.querySelector("dialog[open]")) {
      cancelFromKeyboard();
    }
  });
  bindPromptHistory();
  $("seed_random").addEventListener("change", (e) => setSeedRandom(e.target.checked));
  $("seed_reuse").addEventListener("click", () => {
    if (state.lastSeed == null) return;
    setSeedRandom(false);
    $("seed").value = String(state.lastSeed);
    note(`Seed ${state.lastSeed} of the last job will be used.`);
  });
  for (const id of ["strength", "steps"]) $(id).addEventListener("input", updateStepsRun);
  for (const id of ["hires_fix", "exact_steps"]) $(id).addEventListener("change", updateStepsRun);
  $("gen-form").addEventListener("input", (e) => {
    e.target.removeAttribute("aria-invalid");
    if (e.target.id && e.target.id !== "model") state.touched.add(e.target.id);
  });
  $("model").addEventListener("change", (e) => {
    if (chooseModel(e.target.value, true)) note(`Model ${e.target.value}: its defaults are in the form.`);
  });
  $("page-prev").addEventListener("click", () => loadGallery(state.page - 1));
  $("page-next").addEventListener("click", () => loadGallery(state.page + 1));
}

async function start() {
  bindForm();
  bindInit();
  bindPainter();
  bindAddons();
  bindGallery();
  bindViewer();
  updateStepsRun();
  renderJobs();
  // Signed in (if the server wants a token) before the event stream opens: EventSource gives up on a 401. The model's
  // defaults fill the form before the sampler list arrives (which keeps the chosen sampler).
  await loadModel();
  connectEvents();
  loadSamplers();
  loadAddons();
  loadJobs();
  loadGallery(1);
}

document.addEventListener("DOMContentLoaded", start);
