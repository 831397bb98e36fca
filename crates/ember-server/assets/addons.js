// Ember's web page, the LoRA and embedding pickers: the files of the chosen model's library (GET /api/loras and
// /api/embeddings), each shown with the family it was made for and its trigger words. "Add to prompt" puts
// `<lora:NAME:1>` (a LoRA) or the embedding's name into the prompt box where its cursor was (an embedding may also go
// into the negative prompt). Loaded after app.js, whose state and helpers it uses.
"use strict";

const FAMILY_NAMES = { sd1: "SD 1.x", sd2: "SD 2.x", sdxl: "SDXL" };

// The lists as last loaded, for the chosen model; `loads` counts the loads begun, so a slow answer for a model
// chosen before does not replace the lists of the one chosen since.
const addons = { lora: [], embedding: [], loads: 0 };

// The prompt text that uses a LoRA at weight 1: A1111's term, or InvokeAI's call for a name the term cannot hold.
function loraTerm(name) {
  return /[:<>]/.test(name) ? `withLora("${name}", 1)` : `<lora:${name}:1>`;
}

// Puts `text` into the text box `id` at its cursor (replacing a selection), spaced from its neighbours, and leaves
// the cursor after it, so the next one goes after it. The focus stays where it is (on the picker's button).
function insertAtCursor(id, text) {
  const box = $(id);
  const start = Number.isInteger(box.selectionStart) ? box.selectionStart : box.value.length;
  const end = Number.isInteger(box.selectionEnd) ? box.selectionEnd : start;
  const before = box.value.slice(0, start);
  const after = box.value.slice(end);
  const lead = before && !/[\s(]$/.test(before) ? " " : "";
  const trail = after && !/^[\s,)]/.test(after) ? " " : "";
  box.setRangeText(lead + text + trail, start, end, "end");
  box.dispatchEvent(new Event("input", { bubbles: true }));
}

function familyName(id) {
  return FAMILY_NAMES[id] || id;
}

function optionText(entry) {
  if (entry.error) return `${entry.name} (cannot be read)`;
  const family = entry.family ? ` · ${familyName(entry.family)}` : "";
  const words = (entry.trigger_words || []).length > 0 ? ` — ${entry.trigger_words.join(", ")}` : "";
  const text = `${entry.name}${family}${words}`;
  return text.length > 80 ? `${text.slice(0, 79)}…` : text;
}

// What the chosen entry is: its family (and whether it suits the model), vectors, trigger words, or why it is unusable.
function describeEntry(kind, entry) {
  if (entry.error) return `${entry.name} cannot be used: ${entry.error}`;
  const what = kind === "lora" ? "LoRA" : "embedding";
  const article = kind === "lora" ? "A" : "An";
  let text = entry.family ? `${familyName(entry.family)} ${what}` : `${article} ${what} of an unknown family`;
  if (kind === "embedding" && Number.isInteger(entry.vectors)) {
    text += `, ${entry.vectors} ${entry.vectors === 1 ? "vector" : "vectors"}`;
  }
  text += ".";
  const model = state.model && state.model.family && state.model.family.id;
  if (entry.family && model && entry.family !== model) {
    text += ` Made for ${familyName(entry.family)}, not for this model's ${familyName(model)}: it may not work.`;
  }
  const words = entry.trigger_words || [];
  text += words.length > 0 ? ` Trigger words: ${words.join(", ")}.` : " No trigger words recorded.";
  return text;
}

function chosen(kind) {
  const name = $(`${kind}-pick`).value;
  return addons[kind].find((e) => e.name === name) || null;
}

// Shows the chosen entry's details and enables the buttons that can use it.
function updatePicker(kind) {
  const entry = chosen(kind);
  const usable = Boolean(entry && !entry.error);
  for (const btn of document.querySelectorAll(`[data-addon="${kind}"]`)) btn.disabled = !usable;
  if (entry) $(`${kind}-info`).textContent = describeEntry(kind, entry);
}

function renderPicker(kind, entries, emptyText) {
  addons[kind] = entries;
  const picker = $(`${kind}-pick`);
  const previous = picker.value;
  if (entries.length === 0) {
    picker.replaceChildren(new Option("None on this server", ""));
    picker.disabled = true;
    $(`${kind}-info`).textContent = emptyText;
  } else {
    picker.replaceChildren(...entries.map((e) => new Option(optionText(e), e.name)));
    picker.disabled = false;
    if (entries.some((e) => e.name === previous)) picker.value = previous;
  }
  updatePicker(kind);
}

function renderAddonCount() {
  const n = (kind, one, many) => `${addons[kind].length} ${addons[kind].length === 1 ? one : many}`;
  $("addons-count").textContent = `(${n("lora", "LoRA", "LoRAs")}, ${n("embedding", "embedding", "embeddings")})`;
}

// Loads both lists for the model jobs will run on (the picker's choice with several models, else the loaded one).
async function loadAddons() {
  const model = state.models.length > 1 && $("model").value ? `?model=${encodeURIComponent($("model").value)}` : "";
  const lists = [
    ["lora", "/api/loras", "loras", "No LoRAs: start the server with --lora-dir DIR (or give the model a lora_dir)."],
    ["embedding", "/api/embeddings", "embeddings",
      "No embeddings: start the server with --embedding-dir DIR (or give the model an embedding_dir)."],
  ];
  const load = ++addons.loads;
  await Promise.all(lists.map(async ([kind, path, key, emptyText]) => {
    let entries = [];
    let text = emptyText;
    try {
      const body = await api(path + model);
      entries = ((body && body[key]) || []).filter((e) => e && typeof e.name === "string");
    } catch (e) {
      text = `Could not load the list: ${e.message}`;
    }
    if (load === addons.loads) renderPicker(kind, entries, text);
  }));
  if (load === addons.loads) renderAddonCount();
}

function addChosen(kind, target) {
  const entry = chosen(kind);
  if (!entry || entry.error) return;
  const text = kind === "lora" ? loraTerm(entry.name) : entry.name;
  insertAtCursor(target, text);
  note(`Added ${text} to the ${target === "prompt" ? "prompt" : "negative prompt"}.`);
}

// A gallery image's `loras` list as prompt terms, for "Use all" (the form has no list: the prompt carries them).
function loraTerms(loras) {
  return (loras || []).filter((l) => l && typeof l.name === "string")
    .map((l) => (/[:<>]/.test(l.name) ? `withLora("${l.name}", ${l.weight})` : `<lora:${l.name}:${l.weight}>`));
}

function bindAddons() {
  for (const kind of ["lora", "embedding"]) $(`${kind}-pick`).addEventListener("change", () => updatePicker(kind));
  $("lora-add").addEventListener("click", () => addChosen("lora", "prompt"));
  $("embedding-add").addEventListener("click", () => addChosen("embedding", "prompt"));
  $("embedding-add-negative").addEventListener("click", () => addChosen("embedding", "negative_prompt"));
  for (const btn of document.querySelectorAll("[data-addon]")) {
    btn.setAttribute("aria-label", `${btn.textContent}: ${btn.dataset.addon === "lora" ? "LoRA" : "embedding"}`);
  }
}
