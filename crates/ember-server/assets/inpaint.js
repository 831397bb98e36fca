// Ember's web page, inpainting and outpainting: once an init image is chosen it is shown on a canvas where the user
// paints the mask (the area to repaint) with a brush — mouse, pen or finger through pointer events — erases, clears,
// inverts and undoes; the outcrop fields grow the canvas on any side. The mask travels with the job as a PNG
// (white = repaint on black, at the init image's pixel size) in the `init_mask` part, only when something is painted.
// Loaded after app.js, whose `$`, `state` and `ApiError` it uses; app.js and gallery.js call the functions below.
"use strict";

const OUTCROP_SIDES = ["top", "bottom", "left", "right"];
// The mask layer's tint on the canvas, and the outcrop area's.
const MASK_TINT = "rgba(255, 40, 120, 0.55)";
const NEW_AREA_TINT = "rgba(255, 40, 120, 0.3)";
// Undo snapshots are whole mask layers: at most this many, and at most this many bytes of them.
const UNDO_LEVELS = 20;
const UNDO_BYTES = 64 * 1024 * 1024;

const painter = {
  image: null, // the init image (an HTMLImageElement), once loaded
  loading: 0, // the load in flight (a counter, so a late load of a replaced image is ignored)
  mask: null, // canvas at the image's size: white where painted (alpha = coverage), transparent elsewhere
  tint: null, // scratch canvas for drawing the mask tinted
  erase: false,
  undo: [], // ImageData snapshots of `mask`, oldest first
  stroke: null, // {pointerId, x, y}: the stroke being drawn
  hover: null, // {x, y}: where the brush outline is drawn (mask coordinates)
  pending: null, // {url, invert}: a stored mask to put on the next image that loads ("Use all")
  painted: 0, // pixels of the mask at ≥ ½ coverage
  frame: 0,
};

// ---------------------------------------------------------------------------------------------- geometry

function outcropValues() {
  const out = {};
  for (const side of OUTCROP_SIDES) {
    const v = Number($(`outcrop_${side}`).value.trim() || 0);
    out[side] = Number.isFinite(v) ? v : 0;
  }
  return out;
}

// The outcrop as the API takes it, or throws naming `outcrop` (the server checks the size limits).
function readOutcrop() {
  const out = {};
  for (const side of OUTCROP_SIDES) {
    const raw = $(`outcrop_${side}`).value.trim();
    const v = raw === "" ? 0 : Number(raw);
    if (!Number.isInteger(v) || v < 0 || v % 8 !== 0 || v > 4096) {
      throw new ApiError(0, `outcrop_${side}`,
        `${side} must be a whole number of pixels from 0 to 4096 in steps of 8 (e.g. 64).`);
    }
    out[side] = v;
  }
  return out;
}

// Outcrop sides drawn on the canvas: non-negative whole pixels (a bad value draws as 0 until it is fixed).
function drawnOutcrop() {
  const o = outcropValues();
  for (const side of OUTCROP_SIDES) o[side] = Math.max(0, Math.min(4096, Math.floor(o[side]) || 0));
  return o;
}

// A pointer event's position in mask (init image) pixels.
function maskPoint(e) {
  const canvas = $("mask-canvas");
  const r = canvas.getBoundingClientRect();
  const o = drawnOutcrop();
  return {
    x: ((e.clientX - r.left) * canvas.width) / Math.max(1, r.width) - o.left,
    y: ((e.clientY - r.top) * canvas.height) / Math.max(1, r.height) - o.top,
  };
}

function brushSize() {
  return Math.max(1, Number($("brush-size").value) || 1);
}

// ---------------------------------------------------------------------------------------------- drawing

function requestRender() {
  if (painter.frame) return;
  painter.frame = requestAnimationFrame(() => {
    painter.frame = 0;
    render();
  });
}

function render() {
  const canvas = $("mask-canvas");
  const img = painter.image;
  if (!img) return;
  const o = drawnOutcrop();
  const w = img.naturalWidth;
  const h = img.naturalHeight;
  const cw = w + o.left + o.right;
  const ch = h + o.top + o.bottom;
  if (canvas.width !== cw || canvas.height !== ch) {
    canvas.width = cw;
    canvas.height = ch;
  }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, cw, ch);
  if (cw !== w || ch !== h) {
    // The new area: hatched in the mask's colour, as it is all painted.
    ctx.fillStyle = NEW_AREA_TINT;
    ctx.fillRect(0, 0, cw, ch);
    ctx.strokeStyle = "rgba(255, 255, 255, 0.35)";
    ctx.lineWidth = Math.max(1, Math.min(cw, ch) / 64);
    ctx.beginPath();
    const step = Math.max(6, Math.min(cw, ch) / 12);
    for (let d = -ch; d < cw; d += step) {
      ctx.moveTo(d, 0);
      ctx.lineTo(d + ch, ch);
    }
    ctx.stroke();
  }
  ctx.drawImage(img, o.left, o.top, w, h);
  const tint = painter.tint;
  const tctx = tint.getContext("2d");
  tctx.globalCompositeOperation = "copy";
  tctx.drawImage(painter.mask, 0, 0);
  tctx.globalCompositeOperation = "source-in";
  tctx.fillStyle = MASK_TINT;
  tctx.fillRect(0, 0, w, h);
  ctx.drawImage(tint, o.left, o.top);
  if (cw !== w || ch !== h) {
    ctx.setLineDash([Math.max(2, cw / 40), Math.max(2, cw / 60)]);
    ctx.strokeStyle = "rgba(255, 255, 255, 0.9)";
    ctx.lineWidth = Math.max(1, Math.min(cw, ch) / 100);
    ctx.strokeRect(o.left, o.top, w, h);
    ctx.setLineDash([]);
  }
  if (painter.hover) {
    ctx.beginPath();
    ctx.arc(painter.hover.x + o.left, painter.hover.y + o.top, brushSize() / 2, 0, 2 * Math.PI);
    ctx.lineWidth = Math.max(1, cw / 300);
    ctx.strokeStyle = painter.erase ? "rgba(255, 255, 255, 0.9)" : "rgba(0, 0, 0, 0.8)";
    ctx.stroke();
  }
}

// Draws a brush segment from (x0, y0) to (x1, y1) on the mask layer (a dot when they are the same point).
function brushSegment(x0, y0, x1, y1) {
  const ctx = painter.mask.getContext("2d");
  ctx.save();
  ctx.globalCompositeOperation = painter.erase ? "destination-out" : "source-over";
  ctx.strokeStyle = "#fff";
  ctx.fillStyle = "#fff";
  ctx.lineWidth = brushSize();
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  if (x0 === x1 && y0 === y1) {
    ctx.arc(x0, y0, brushSize() / 2, 0, 2 * Math.PI);
    ctx.fill();
  } else {
    ctx.moveTo(x0, y0);
    ctx.lineTo(x1, y1);
    ctx.stroke();
  }
  ctx.restore();
}

// ---------------------------------------------------------------------------------------------- mask state

function maskData() {
  const m = painter.mask;
  return m.getContext("2d").getImageData(0, 0, m.width, m.height);
}

// Pixels of the mask that the server will repaint (coverage ≥ ½). Also used by the browser test.
function paintedPixels() {
  if (!painter.mask) return 0;
  const d = maskData().data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] >= 128) n++;
  return n;
}

function pushUndo() {
  const m = painter.mask;
  const levels = Math.max(1, Math.min(UNDO_LEVELS, Math.floor(UNDO_BYTES / Math.max(1, m.width * m.height * 4))));
  painter.undo.push(maskData());
  while (painter.undo.length > levels) painter.undo.shift();
}

// After any change of the mask: the counts, the buttons and the status line.
function maskChanged() {
  painter.painted = paintedPixels();
  const total = painter.mask ? painter.mask.width * painter.mask.height : 0;
  $("mask-undo").disabled = painter.undo.length === 0;
  $("mask-clear").disabled = painter.painted === 0;
  const o = drawnOutcrop();
  const grows = OUTCROP_SIDES.filter((s) => o[s] > 0).map((s) => `${s} ${o[s]}`);
  let text;
  if (painter.painted === 0) {
    text = "Nothing painted: the whole image is reworked (img2img).";
  } else {
    const pct = Math.max(0.1, Math.round((1000 * painter.painted) / Math.max(1, total)) / 10);
    text = `${pct}% of the image is painted: only that area is repainted, the rest is kept.`;
  }
  if (grows.length > 0) text += ` The canvas grows by ${grows.join(", ")} pixels; the new area is painted.`;
  $("mask-status").textContent = text;
  $("painter").dataset.painted = String(painter.painted);
  requestRender();
}

function clearMask(record = true) {
  if (!painter.mask) return;
  if (record) pushUndo();
  painter.mask.getContext("2d").clearRect(0, 0, painter.mask.width, painter.mask.height);
  maskChanged();
}

function invertMask() {
  if (!painter.mask) return;
  pushUndo();
  const data = maskData();
  const d = data.data;
  for (let i = 0; i < d.length; i += 4) {
    d[i] = d[i + 1] = d[i + 2] = 255;
    d[i + 3] = 255 - d[i + 3];
  }
  painter.mask.getContext("2d").putImageData(data, 0, 0);
  maskChanged();
}

function undoMask() {
  const last = painter.undo.pop();
  if (!last || !painter.mask) return;
  painter.mask.getContext("2d").putImageData(last, 0, 0);
  maskChanged();
}

function setErase(erase) {
  painter.erase = erase;
  $("mask-paint").setAttribute("aria-pressed", String(!erase));
  $("mask-erase").setAttribute("aria-pressed", String(erase));
  requestRender();
}

// The mask as the API takes it: a PNG at the init image's size, white (repaint) on black; null when nothing is
// painted (then the job is plain img2img, or outpainting alone).
function maskBlob() {
  if (!painter.mask || paintedPixels() === 0) return Promise.resolve(null);
  const data = maskData();
  const d = data.data;
  for (let i = 0; i < d.length; i += 4) {
    const v = d[i + 3] >= 128 ? 255 : 0;
    d[i] = d[i + 1] = d[i + 2] = v;
    d[i + 3] = 255;
  }
  const out = document.createElement("canvas");
  out.width = data.width;
  out.height = data.height;
  out.getContext("2d").putImageData(data, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

// Puts a stored mask (white = repaint) on the mask layer, scaled to the image; `invert` inverts it.
async function applyMask(url, invert) {
  const img = new Image();
  img.src = url;
  await img.decode();
  const m = painter.mask;
  const scratch = document.createElement("canvas");
  scratch.width = m.width;
  scratch.height = m.height;
  const sctx = scratch.getContext("2d");
  sctx.drawImage(img, 0, 0, m.width, m.height);
  const data = sctx.getImageData(0, 0, m.width, m.height);
  const d = data.data;
  for (let i = 0; i < d.length; i += 4) {
    const white = (d[i] + d[i + 1] + d[i + 2]) / 3 >= 128;
    d[i] = d[i + 1] = d[i + 2] = 255;
    d[i + 3] = white !== Boolean(invert) ? 255 : 0;
  }
  m.getContext("2d").putImageData(data, 0, 0);
}

// ---------------------------------------------------------------------------------------------- the init image

// Shows the painter for the init image at `url` (null hides it); the mask starts empty, or as the pending one.
async function painterSetImage(url) {
  const ticket = ++painter.loading;
  painter.image = null;
  painter.undo = [];
  painter.stroke = null;
  painter.hover = null;
  $("painter").hidden = !url;
  $("painter").dataset.ready = "false";
  if (!url) {
    painter.mask = null;
    maskChanged();
    return;
  }
  const img = new Image();
  img.src = url;
  try {
    await img.decode();
  } catch (e) {
    if (ticket === painter.loading) $("mask-status").textContent = "The init image cannot be shown for painting.";
    return;
  }
  if (ticket !== painter.loading) return; // another image was chosen meanwhile
  painter.image = img;
  const w = img.naturalWidth;
  const h = img.naturalHeight;
  painter.mask = document.createElement("canvas");
  painter.mask.width = w;
  painter.mask.height = h;
  painter.tint = document.createElement("canvas");
  painter.tint.width = w;
  painter.tint.height = h;
  // A brush about a sixth of the smaller side to start with.
  const range = $("brush-size");
  range.max = String(Math.max(16, Math.min(512, Math.ceil(Math.max(w, h) / 2))));
  if (!state.touched.has("brush-size")) range.value = String(Math.max(2, Math.min(64, Math.round(Math.min(w, h) / 6))));
  $("brush-size-value").textContent = range.value;
  $("mask-canvas").setAttribute("aria-label",
    `Init image, ${w}×${h} pixels, with the inpainting mask: paint on it to mark the area to repaint`);
  const pending = painter.pending;
  painter.pending = null;
  if (pending) {
    try {
      await applyMask(pending.url, pending.invert);
      note("The image's mask is on the init image again.");
    } catch (e) {
      note(`Could not load the image's mask (${e.message || e}); paint it again.`);
    }
  }
  if (ticket !== painter.loading) return;
  $("painter").dataset.ready = "true";
  maskChanged();
  render();
}

// "Use all": put the stored mask `url` on the next init image that loads (inverted when `invert`); null forgets it.
function painterRestore(url, invert) {
  painter.pending = url ? { url, invert: Boolean(invert) } : null;
}

// The outcrop, mask blur and paste-back controls from an image's params ("Use all").
function fillInpaint(p) {
  const o = p.outcrop || {};
  for (const side of OUTCROP_SIDES) $(`outcrop_${side}`).value = String(o[side] || 0);
  $("mask_blur").value = String(p.mask_blur || 0);
  $("paste_back").checked = p.paste_back !== false;
  maskChanged();
}

// Adds the inpainting fields to `params` when there is an init image.
function readInpaintParams(params) {
  if (!state.init) return params;
  const outcrop = readOutcrop();
  if (OUTCROP_SIDES.some((s) => outcrop[s] > 0)) params.outcrop = outcrop;
  const blur = $("mask_blur").value.trim();
  const b = blur === "" ? 0 : Number(blur);
  if (!Number.isInteger(b) || b < 0 || b > 256) {
    throw new ApiError(0, "mask_blur", "must be a whole number of pixels from 0 (sharp) to 256, e.g. 4.");
  }
  if (b > 0) params.mask_blur = b;
  params.paste_back = $("paste_back").checked;
  return params;
}

// ---------------------------------------------------------------------------------------------- events

function bindPainter() {
  const canvas = $("mask-canvas");
  const end = (e) => {
    if (!painter.stroke || painter.stroke.pointerId !== e.pointerId) return;
    painter.stroke = null;
    if (canvas.hasPointerCapture(e.pointerId)) canvas.releasePointerCapture(e.pointerId);
    maskChanged();
  };
  canvas.addEventListener("pointerdown", (e) => {
    if (!painter.mask || painter.stroke || (e.pointerType === "mouse" && e.button !== 0)) return;
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    pushUndo();
    const p = maskPoint(e);
    painter.stroke = { pointerId: e.pointerId, x: p.x, y: p.y };
    painter.hover = e.pointerType === "mouse" ? p : null;
    brushSegment(p.x, p.y, p.x, p.y);
    requestRender();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!painter.mask) return;
    const s = painter.stroke;
    if (s && s.pointerId === e.pointerId) {
      const events = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [];
      for (const ev of events.length > 0 ? events : [e]) {
        const p = maskPoint(ev);
        brushSegment(s.x, s.y, p.x, p.y);
        s.x = p.x;
        s.y = p.y;
      }
    }
    painter.hover = e.pointerType === "mouse" ? maskPoint(e) : null;
    requestRender();
  });
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("pointerleave", () => {
    painter.hover = null;
    requestRender();
  });
  $("brush-size").addEventListener("input", () => {
    $("brush-size-value").textContent = $("brush-size").value;
    requestRender();
  });
  $("mask-paint").addEventListener("click", () => setErase(false));
  $("mask-erase").addEventListener("click", () => setErase(true));
  $("mask-undo").addEventListener("click", undoMask);
  $("mask-clear").addEventListener("click", () => clearMask());
  $("mask-invert").addEventListener("click", invertMask);
  for (const side of OUTCROP_SIDES) $(`outcrop_${side}`).addEventListener("input", maskChanged);
  for (const btn of document.querySelectorAll("button[data-outcrop]")) {
    btn.addEventListener("click", () => {
      const input = $(`outcrop_${btn.dataset.outcrop}`);
      const v = Math.max(0, Math.floor((Number(input.value) || 0) / 8) * 8);
      input.value = String(Math.min(4096, v + 64));
      state.touched.add(input.id);
      maskChanged();
    });
  }
  // Ctrl+Z undoes a stroke while the painter has the focus.
  $("painter").addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z" && e.target.tagName !== "INPUT") {
      e.preventDefault();
      undoMask();
    }
  });
}
