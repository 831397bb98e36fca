// Ember's web page, the gallery: pages of image cards with their parameters (long values cut: the full-size viewer of
// viewer.js shows them whole), the mask of inpainted images, search by prompt, multi-select delete, and the actions on
// an image (use the settings, the seed or the image as init image, make a variation, download, delete). Loaded after
// app.js, whose state and helpers it uses.
"use strict";

// Order in which an image's parameters are listed; keys not named here follow, alphabetically.
const PARAM_ORDER = ["model", "prompt", "negative_prompt", "loras", "sampler", "steps", "cfg_scale", "seed", "width",
  "height", "strength", "fit", "karras_max", "hires_fix", "exact_steps", "with_variations", "seamless", "vae_tiling",
  "threshold", "perlin", "skip_normalize", "truncate_prompts", "downweight_mask", "prediction_type", "timestep_spacing",
  "init_image_id", "init_mask_id", "invert_mask", "mask_blur", "outcrop", "paste_back"];

// `{top, bottom, left, right}` → "top 64 left 128" (InvokeAI's words), "none" when nothing is added.
function formatOutcrop(o) {
  const words = ["top", "bottom", "left", "right"].filter((s) => o[s] > 0).map((s) => `${s} ${o[s]}`);
  return words.length > 0 ? words.join(" ") : "none";
}

function formatValue(v) {
  if (typeof v === "string") return v === "" ? "(empty)" : v;
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "number") return String(v);
  if (Array.isArray(v) && v.length === 0) return "none";
  if (Array.isArray(v) && v.every((x) => x && "seed" in x && "weight" in x)) return formatVariations(v);
  if (Array.isArray(v) && v.every((x) => x && "name" in x && "weight" in x)) {
    return v.map((x) => `${x.name}:${x.weight}`).join(", ");
  }
  if (v && typeof v === "object" && ["top", "bottom", "left", "right"].every((s) => s in v)) return formatOutcrop(v);
  return JSON.stringify(v);
}

// Card values longer than this are cut (a long prompt would make the page tall); the viewer shows them whole.
const CARD_VALUE_MAX = 160;

function paramEntries(params) {
  const keys = Object.keys(params || {}).filter((k) => params[k] !== null && params[k] !== undefined);
  const rank = (k) => (PARAM_ORDER.includes(k) ? PARAM_ORDER.indexOf(k) : PARAM_ORDER.length);
  keys.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  return keys.map((k) => [k, params[k]]);
}

function useAll(image) {
  const p = image.params || {};
  const set = (id, v) => {
    if (v !== undefined && v !== null) $(id).value = String(v);
  };
  // The image's model first (its details, not its defaults: the image's own settings follow).
  let msgModel = "";
  if (typeof p.model === "string" && state.models.length > 1 && !chooseModel(p.model, false)) {
    msgModel = ` Its model, ${p.model}, is not on this server any more.`;
  }
  // The form has no LoRA list: the image's `loras` go into the prompt as terms, which apply the same way.
  const terms = loraTerms(p.loras);
  set("prompt", terms.length > 0 ? [p.prompt, ...terms].filter(Boolean).join(" ") : p.prompt);
  set("negative_prompt", p.negative_prompt);
  if (p.sampler && ![...$("sampler").options].some((o) => o.value === p.sampler)) {
    $("sampler").append(new Option(p.sampler, p.sampler));
  }
  set("sampler", p.sampler);
  set("steps", p.steps);
  set("cfg_scale", p.cfg_scale);
  set("width", p.width);
  set("height", p.height);
  set("strength", p.strength);
  set("karras_max", p.karras_max);
  $("fit").checked = Boolean(p.fit);
  fillAdvanced(p);
  fillInpaint(p);
  setSeedRandom(false);
  set("seed", image.seed);
  let msg = `Settings of image #${image.id} loaded.${msgModel}`;
  if (terms.length > 0) msg += " Its LoRAs are in the prompt.";
  // Its mask goes on the next init image that loads: the gallery image below, or the upload chosen again. The
  // stored mask is as painted, before `invert_mask`: the painter shows what is repainted.
  painterRestore(image.mask_url || null, p.invert_mask);
  if (typeof p.init_image_id === "number") {
    setGalleryInit(p.init_image_id);
  } else if (fromUpload(image)) {
    // The server keeps the upload with the image: it becomes the init image again (the mask goes back on it).
    note(`${msg} Fetching its uploaded init image…`);
    setInit(null);
    const ticket = {};
    useAll.pending = ticket;
    keptUpload(image).then((file) => {
      // Another init image chosen meanwhile (or another "use all") wins.
      if (useAll.pending !== ticket || state.init !== null) return;
      if (file) {
        setFileInit(file);
        note(`${msg} Its uploaded init image is back${image.mask_url ? ", with its mask" : ""}.`);
      } else {
        note(`${msg} Its init image was an upload the server did not keep: choose that file again to reproduce it`
          + (image.mask_url ? " (its mask is put back on it)." : "."));
      }
    });
    updateStepsRun();
    $("prompt").focus();
    return;
  } else {
    setInit(null);
  }
  updateStepsRun();
  note(msg);
  $("prompt").focus();
}

// "Use seed": the image's seed into the form.
function useSeed(image) {
  setSeedRandom(false);
  $("seed").value = String(image.seed);
  note(`Seed ${image.seed} of image #${image.id} will be used.`);
  $("seed").focus();
}

// "Use as init": the gallery image becomes the form's init image.
function useAsInit(image) {
  setGalleryInit(image.id);
  note(`Image #${image.id} is the init image.`);
  $("strength").focus();
}

// The uploaded init image an img2img image was made from, which the server keeps with it (as a File, under its
// upload name); null when it has none (made by an older Ember) or it cannot be fetched.
async function keptUpload(image) {
  try {
    const res = await fetch(`/api/images/${image.id}/init`);
    if (!res.ok) return null;
    const blob = await res.blob();
    const named = /filename\*=UTF-8''([^;]+)/.exec(res.headers.get("content-disposition") || "");
    let name = `init-${image.id}.png`;
    try {
      if (named) name = decodeURIComponent(named[1]);
    } catch (e) {} // a malformed name: keep the default
    return new File([blob], name, { type: blob.type || "image/png" });
  } catch (e) {
    return null;
  }
}

// An img2img image whose init image was an upload (kept by the server with the image: `keptUpload`).
function fromUpload(image) {
  return typeof (image.params || {}).init_image_id !== "number" && /(^|\s)-I\s/.test(image.dream || "");
}

// "Variations": the same params with a fresh variation seed blended in; the form is left as it is.
async function makeVariation(image) {
  clearFieldErrors();
  if (fromUpload(image)) {
    const file = await keptUpload(image);
    if (!file) {
      note(`Image #${image.id} was made from an uploaded init image the server did not keep: choose that file, `
        + "\"Use all\" and set a variation amount under Advanced instead.");
      return;
    }
    const params = variationParams(image);
    // Its stored mask comes along by id, as for a gallery init image.
    if (image.mask_url) params.init_mask_id = image.id;
    await submitJob(params, file);
    return;
  }
  await submitJob(variationParams(image), null);
}

// Asks, deletes, reloads the page; true when the image was deleted.
async function deleteImage(image) {
  if (!window.confirm(`Delete image #${image.id}? Its file is removed too.`)) return false;
  try {
    await api(`/api/images/${image.id}`, { method: "DELETE" });
  } catch (e) {
    $("gallery-status").textContent = `Could not delete image #${image.id}: ${e.message}`;
    return false;
  }
  state.selected.delete(image.id);
  renderSelection();
  if (state.init && state.init.kind === "gallery" && state.init.id === image.id) setInit(null);
  const lastOnPage = $("gallery").children.length === 1 && state.page > 1;
  await loadGallery(lastOnPage ? state.page - 1 : state.page);
  if (!$("viewer").open) $("gallery-heading").focus();
  return true;
}

function renderCard(image) {
  const li = $("card-template").content.firstElementChild.cloneNode(true);
  const p = image.params || {};
  li.dataset.imageId = String(image.id);
  li.dataset.jobId = String(image.job_id);
  const link = li.querySelector(".thumb");
  link.href = image.url;
  link.setAttribute("aria-label", `Open image #${image.id} full size`);
  const img = li.querySelector(".thumb img");
  img.src = image.url;
  img.alt = `Image #${image.id}: ${p.prompt || "(no prompt)"}`;
  img.width = image.width;
  img.height = image.height;
  const when = image.created_at ? new Date(image.created_at).toLocaleString() : "";
  li.querySelector(".card-title").textContent = `#${image.id}` + (p.model ? ` · ${p.model}` : "")
    + ` · seed ${image.seed} · ${image.width}×${image.height}` + (when ? ` · ${when}` : "");
  const dl = li.querySelector("dl");
  for (const [k, v] of paramEntries(p)) {
    const dt = document.createElement("dt");
    dt.textContent = k.replace(/_/g, " ");
    const dd = document.createElement("dd");
    dd.dataset.key = k;
    const full = formatValue(v);
    dd.textContent = cutText(full, CARD_VALUE_MAX);
    if (full.length > CARD_VALUE_MAX) dd.title = full;
    dl.append(dt, dd);
  }
  if (image.mask_url) {
    const fig = li.querySelector(".mask-fig");
    fig.hidden = false;
    const maskLink = fig.querySelector("a");
    maskLink.href = image.mask_url;
    maskLink.setAttribute("aria-label", `Open the mask of image #${image.id}`);
    const maskImg = fig.querySelector("img");
    maskImg.src = image.mask_url;
    maskImg.alt = `Mask of image #${image.id}: white was repainted`;
    li.dataset.hasMask = "true";
  }
  li.querySelector(".dream").textContent = cutText(image.dream || "", CARD_VALUE_MAX * 2);
  const download = li.querySelector("[data-act=download]");
  download.href = image.url;
  // The server's Content-Disposition names the file (`{prompt-words}-{seed}.png`): one name, whichever way it is saved.
  download.setAttribute("download", "");
  const select = li.querySelector(".select");
  select.setAttribute("aria-label", `Select image #${image.id}`);
  select.checked = state.selected.has(image.id);
  select.addEventListener("change", () => {
    if (select.checked) state.selected.add(image.id);
    else state.selected.delete(image.id);
    li.classList.toggle("selected", select.checked);
    renderSelection();
  });
  li.classList.toggle("selected", select.checked);
  link.addEventListener("click", (e) => {
    if (e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return; // a new tab, as the link says
    e.preventDefault();
    openViewer(image.id);
  });
  const actions = {
    "use-all": () => useAll(image),
    "use-seed": () => useSeed(image),
    "use-init": () => useAsInit(image),
    variations: () => makeVariation(image),
    delete: () => deleteImage(image),
  };
  for (const btn of li.querySelectorAll("button[data-act]")) {
    btn.setAttribute("aria-label", `${btn.textContent}: image #${image.id}`);
    btn.addEventListener("click", actions[btn.dataset.act]);
  }
  return li;
}

function renderSelection() {
  const n = state.selected.size;
  const btn = $("delete-selected");
  btn.disabled = n === 0;
  btn.textContent = n > 0 ? `Delete selected (${n})` : "Delete selected";
}

async function deleteSelected() {
  const ids = [...state.selected].sort((a, b) => a - b);
  if (ids.length === 0) return;
  if (!window.confirm(`Delete ${ids.length} image${ids.length > 1 ? "s" : ""} (#${ids.join(", #")})? `
    + "Their files are removed too.")) return;
  const failed = [];
  for (const id of ids) {
    try {
      await api(`/api/images/${id}`, { method: "DELETE" });
    } catch (e) {
      if (e.status !== 404) failed.push(`#${id}: ${e.message}`);
    }
    state.selected.delete(id);
    if (state.init && state.init.kind === "gallery" && state.init.id === id) setInit(null);
  }
  renderSelection();
  const emptied = $("gallery").children.length <= ids.length && state.page > 1;
  await loadGallery(emptied ? state.page - 1 : state.page);
  $("gallery-status").textContent = failed.length ? `Could not delete ${failed.join("; ")}`
    : `Deleted ${ids.length} image${ids.length > 1 ? "s" : ""}.`;
}

function bindGallery() {
  let timer = null;
  $("gallery-search").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      state.search = $("gallery-search").value.trim();
      loadGallery(1);
    }, 250);
  });
  $("select-page").addEventListener("click", () => {
    const boxes = [...document.querySelectorAll("#gallery .select")];
    const all = boxes.length > 0 && boxes.every((b) => b.checked);
    for (const box of boxes) {
      if (box.checked === all) {
        box.checked = !all;
        box.dispatchEvent(new Event("change"));
      }
    }
  });
  $("delete-selected").addEventListener("click", deleteSelected);
  renderSelection();
}

async function loadGallery(page) {
  let data;
  const search = state.search ? `&q=${encodeURIComponent(state.search)}` : "";
  try {
    data = await api(`/api/images?page=${page}&per_page=${PER_PAGE}${search}`);
  } catch (e) {
    $("gallery-status").textContent = `Could not load the gallery: ${e.message}`;
    return;
  }
  state.page = data.page || page;
  state.totalImages = data.total || 0;
  const pages = Math.max(1, Math.ceil(state.totalImages / (data.per_page || PER_PAGE)));
  state.images = data.images;
  $("gallery").replaceChildren(...data.images.map(renderCard));
  $("gallery-total").textContent = `(${state.totalImages})`;
  $("gallery-status").textContent = state.totalImages > 0 ? ""
    : state.search ? `No image's prompt contains “${state.search}”.` : "No images yet: generate one.";
  $("page-info").textContent = `Page ${state.page} of ${pages}`;
  $("page-prev").disabled = state.page <= 1;
  $("page-next").disabled = state.page >= pages;
}

