// Ember's web page, the gallery: pages of image cards with their parameters, the mask of inpainted images, and the
// actions on them (use the settings, the seed or the image as init image, make a variation, download, delete). Loaded after app.js, whose
// state and helpers it uses.
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
    msg += " Its init image was an upload: choose that file again to reproduce it"
      + (image.mask_url ? " (its mask is put back on it)." : ".");
  } else {
    setInit(null);
  }
  updateStepsRun();
  note(msg);
  $("prompt").focus();
}

// An img2img image whose init image was an upload (not kept by the server).
function fromUpload(image) {
  return typeof (image.params || {}).init_image_id !== "number" && /(^|\s)-I\s/.test(image.dream || "");
}

// "Variations": the same params with a fresh variation seed blended in; the form is left as it is.
async function makeVariation(image) {
  if (fromUpload(image)) {
    note(`Image #${image.id} was made from an uploaded init image: choose that file, "Use all" and set a variation `
      + "amount under Advanced instead.");
    return;
  }
  clearFieldErrors();
  await submitJob(variationParams(image), null);
}

async function deleteImage(image) {
  if (!window.confirm(`Delete image #${image.id}? Its file is removed too.`)) return;
  try {
    await api(`/api/images/${image.id}`, { method: "DELETE" });
  } catch (e) {
    $("gallery-status").textContent = `Could not delete image #${image.id}: ${e.message}`;
    return;
  }
  if (state.init && state.init.kind === "gallery" && state.init.id === image.id) setInit(null);
  const lastOnPage = $("gallery").children.length === 1 && state.page > 1;
  await loadGallery(lastOnPage ? state.page - 1 : state.page);
  $("gallery-heading").focus();
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
    dd.textContent = formatValue(v);
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
  li.querySelector(".dream").textContent = image.dream || "";
  const download = li.querySelector("[data-act=download]");
  download.href = image.url;
  download.download = `ember-${image.id}-${image.seed}.png`;
  const actions = {
    "use-all": () => useAll(image),
    "use-seed": () => {
      setSeedRandom(false);
      $("seed").value = String(image.seed);
      note(`Seed ${image.seed} of image #${image.id} will be used.`);
      $("seed").focus();
    },
    "use-init": () => {
      setGalleryInit(image.id);
      note(`Image #${image.id} is the init image.`);
      $("strength").focus();
    },
    variations: () => makeVariation(image),
    delete: () => deleteImage(image),
  };
  for (const btn of li.querySelectorAll("button[data-act]")) {
    btn.setAttribute("aria-label", `${btn.textContent}: image #${image.id}`);
    btn.addEventListener("click", actions[btn.dataset.act]);
  }
  return li;
}

async function loadGallery(page) {
  let data;
  try {
    data = await api(`/api/images?page=${page}&per_page=${PER_PAGE}`);
  } catch (e) {
    $("gallery-status").textContent = `Could not load the gallery: ${e.message}`;
    return;
  }
  state.page = data.page || page;
  state.totalImages = data.total || 0;
  const pages = Math.max(1, Math.ceil(state.totalImages / (data.per_page || PER_PAGE)));
  $("gallery").replaceChildren(...data.images.map(renderCard));
  $("gallery-total").textContent = `(${state.totalImages})`;
  $("gallery-status").textContent = state.totalImages === 0 ? "No images yet: generate one." : "";
  $("page-info").textContent = `Page ${state.page} of ${pages}`;
  $("page-prev").disabled = state.page <= 1;
  $("page-next").disabled = state.page >= pages;
}

