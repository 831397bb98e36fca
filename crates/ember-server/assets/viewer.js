// Ember's web page, the full-size viewer (lightbox) of a gallery image: the image at full size with all its settings,
// previous/next through the gallery (buttons, ← →, across pages), copy the prompt, "use all settings", use the seed or
// the image as init image, variations, download, delete. Esc closes it (the dialog's own behaviour). Loaded after
// gallery.js, whose functions it calls.
"use strict";

const viewer = { index: -1 };

function viewedImage() {
  return state.images[viewer.index] || null;
}

function openViewer(imageId) {
  const i = state.images.findIndex((im) => im.id === imageId);
  if (i < 0) return;
  viewer.index = i;
  renderViewer();
  const dialog = $("viewer");
  if (!dialog.open) dialog.showModal();
  $("viewer-next").focus();
}

function renderViewer() {
  const image = viewedImage();
  if (!image) return;
  const p = image.params || {};
  const dialog = $("viewer");
  dialog.dataset.imageId = String(image.id);
  const img = $("viewer-img");
  img.src = image.url;
  img.alt = `Image #${image.id}: ${p.prompt || "(no prompt)"}`;
  img.width = image.width;
  img.height = image.height;
  const when = image.created_at ? new Date(image.created_at).toLocaleString() : "";
  $("viewer-title").textContent = `Image #${image.id} · seed ${image.seed} · ${image.width}×${image.height}`
    + (when ? ` · ${when}` : "");
  $("viewer-prompt").textContent = p.prompt || "";
  const dl = $("viewer-params");
  dl.replaceChildren();
  for (const [k, v] of paramEntries(p)) {
    if (k === "prompt") continue;
    const dt = document.createElement("dt");
    dt.textContent = k.replace(/_/g, " ");
    const dd = document.createElement("dd");
    dd.dataset.key = k;
    dd.textContent = formatValue(v);
    dl.append(dt, dd);
  }
  $("viewer-dream").textContent = image.dream || "";
  $("viewer-note").textContent = "";
  const download = $("viewer-download");
  download.href = image.url;
  download.setAttribute("download", "");
  const pages = Math.max(1, Math.ceil(state.totalImages / PER_PAGE));
  $("viewer-prev").disabled = viewer.index === 0 && state.page <= 1;
  $("viewer-next").disabled = viewer.index === state.images.length - 1 && state.page >= pages;
  $("viewer-prev").hidden = $("viewer-prev").disabled;
  $("viewer-next").hidden = $("viewer-next").disabled;
}

// Steps by `delta` (±1) through the gallery, loading the previous/next page at either end.
async function stepViewer(delta) {
  const next = viewer.index + delta;
  if (next >= 0 && next < state.images.length) {
    viewer.index = next;
  } else {
    const pages = Math.max(1, Math.ceil(state.totalImages / PER_PAGE));
    const page = state.page + delta;
    if (page < 1 || page > pages) return;
    await loadGallery(page);
    viewer.index = delta > 0 ? 0 : state.images.length - 1;
  }
  renderViewer();
}

// The Clipboard API needs a secure context (https or localhost): a server reached over the LAN by its address is
// neither, so a selected hidden text area and execCommand("copy") are the fallback.
async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch (e) {} // refused: try the old way
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "visually-hidden";
  $("viewer").append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch (e) {}
  area.remove();
  return ok;
}

function bindViewer() {
  const dialog = $("viewer");
  $("viewer-prev").addEventListener("click", () => stepViewer(-1));
  $("viewer-next").addEventListener("click", () => stepViewer(1));
  $("viewer-close").addEventListener("click", () => dialog.close());
  // A click on the backdrop (outside the body) closes it.
  dialog.addEventListener("click", (e) => {
    if (e.target === dialog) dialog.close();
  });
  dialog.addEventListener("keydown", (e) => {
    const typing = e.target.matches("input, textarea, select");
    if (typing || e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.key === "ArrowLeft") {
      e.preventDefault();
      stepViewer(-1);
    } else if (e.key === "ArrowRight") {
      e.preventDefault();
      stepViewer(1);
    }
  });
  const actions = {
    copy: async (image) => {
      const ok = await copyText((image.params || {}).prompt || "");
      $("viewer-note").textContent = ok ? "Prompt copied." : "Could not copy: select the prompt above and copy it.";
    },
    "use-all": (image) => {
      dialog.close();
      useAll(image);
    },
    "use-seed": (image) => {
      dialog.close();
      useSeed(image);
    },
    "use-init": (image) => {
      dialog.close();
      useAsInit(image);
    },
    variations: async (image) => {
      dialog.close();
      await makeVariation(image);
    },
    delete: async (image) => {
      const at = viewer.index;
      if (!(await deleteImage(image))) return;
      if (state.images.length === 0) {
        dialog.close();
        return;
      }
      viewer.index = Math.min(at, state.images.length - 1);
      renderViewer();
    },
  };
  for (const btn of dialog.querySelectorAll("button[data-view]")) {
    btn.addEventListener("click", () => {
      const image = viewedImage();
      if (image) actions[btn.dataset.view](image);
    });
  }
}
