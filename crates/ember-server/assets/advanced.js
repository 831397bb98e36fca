// The form's "Advanced" section: InvokeAI's variations (-v, -V), seamless, hires fix, threshold, Perlin noise,
// exact img2img steps, the prompt switches, and the prediction type and timestep spacing overrides. Loaded before app.js, which calls these functions (and lends them
// `$` and `ApiError` once it has loaded); they only read and write the Advanced controls.
"use strict";

// Checkboxes of the section, by API field name (= element id).
const ADVANCED_FLAGS = ["hires_fix", "seamless", "vae_tiling", "exact_steps", "truncate_prompts", "skip_normalize",
  "downweight_mask"];
// Selects whose empty value means "the model's own" (sent only when one is chosen), by API field name.
const SCHEDULE_CHOICES = ["prediction_type", "timestep_spacing"];
// The amount a gallery card's "Variations" button asks for: a close relative of the image.
const CARD_VARIATION_AMOUNT = 0.1;

// A decimal control's value in [min, max] (max may be Infinity), or throws an ApiError naming `id`.
function advancedNumber(id, min, max, what) {
  const raw = $(id).value.trim();
  const v = raw === "" ? 0 : Number(raw);
  if (!Number.isFinite(v) || v < min || v > max) throw new ApiError(0, id, what);
  return v;
}

// "seed:weight, seed:weight" (InvokeAI's -V) → [{seed, weight}], or throws naming with_variations.
function parseVariations(text) {
  const out = [];
  for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const m = /^(\d+)\s*:\s*(\d*\.?\d+(?:e-?\d+)?)$/i.exec(part);
    const seed = m ? Number(m[1]) : NaN;
    const weight = m ? Number(m[2]) : NaN;
    if (!(seed <= 4294967295) || !(weight >= 0 && weight <= 1)) {
      throw new ApiError(0, "with_variations",
        `"${part}" is not seed:weight with a seed from 0 to 4294967295 and a weight from 0 to 1 (e.g. 1234:0.1).`);
    }
    out.push({ seed, weight });
  }
  return out;
}

function formatVariations(list) {
  return (list || []).map((v) => `${v.seed}:${v.weight}`).join(", ");
}

// Adds the section's fields to `params` (the request's JSON).
function readAdvancedParams(params) {
  params.variation_amount = advancedNumber("variation_amount", 0, 1,
    "must be a number from 0 to 1 (0 = none, 0.1 = a close variation).");
  params.with_variations = parseVariations($("with_variations").value);
  params.threshold = advancedNumber("threshold", 0, Infinity, "must be 0 (off) or a positive number, e.g. 10.");
  params.perlin = advancedNumber("perlin", 0, 1, "must be a number from 0 (off) to 1, e.g. 0.1.");
  for (const id of ADVANCED_FLAGS) params[id] = $(id).checked;
  for (const id of SCHEDULE_CHOICES) {
    if ($(id).value) params[id] = $(id).value;
  }
  return params;
}

// Names the loaded model's own prediction type and spacing in the selects' "Model's own" choices.
function showModelSchedule(model) {
  for (const id of SCHEDULE_CHOICES) {
    const own = $(id).querySelector('option[value=""]');
    if (own && typeof model[id] === "string") own.textContent = `Model's own (${model[id]})`;
  }
}

// Fills the section from an image's params (its resolved variations included), for "Use all".
function fillAdvanced(p) {
  $("variation_amount").value = "0";
  $("with_variations").value = formatVariations(p.with_variations);
  $("threshold").value = String(p.threshold || 0);
  $("perlin").value = String(p.perlin || 0);
  for (const id of ADVANCED_FLAGS) $(id).checked = Boolean(p[id]);
  for (const id of SCHEDULE_CHOICES) {
    const known = [...$(id).options].some((o) => o.value === p[id]);
    $(id).value = p[id] && known ? p[id] : "";
  }
  // Settings that differ from the defaults should not hide in a closed section.
  const used = (p.with_variations || []).length > 0 || p.threshold > 0 || p.perlin > 0
    || ADVANCED_FLAGS.some((id) => p[id]) || SCHEDULE_CHOICES.some((id) => p[id]);
  if (used) $("advanced").open = true;
}

// The request that makes a variation of a gallery image: its own params, the new blend on top of its variations.
function variationParams(image) {
  const params = { ...(image.params || {}) };
  params.variation_amount = CARD_VARIATION_AMOUNT;
  if (params.init_image_id == null) delete params.init_image_id;
  // An inpainted image's mask is stored with it: the variation repaints the same area.
  if (image.mask_url && params.init_image_id != null) params.init_mask_id = image.id;
  if (params.init_mask_id == null) delete params.init_mask_id;
  return params;
}

// The schedule `--exact-steps` plans so that Python's int(strength × schedule) is `steps`; null past 1000.
function exactSchedule(strength, steps) {
  if (!(strength > 0 && strength <= 1)) return null;
  let schedule = Math.max(1, Math.ceil(steps / strength));
  while (schedule > 1 && Math.floor(strength * (schedule - 1)) >= steps) schedule -= 1;
  while (Math.floor(strength * schedule) < steps) schedule += 1;
  return schedule <= 1000 ? schedule : null;
}
