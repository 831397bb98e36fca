// Ember's web page, the progress panel: one line per job (running, queued, and the last finished ones), each with
// its own status, bar, step, ETA and Cancel; a failed job keeps its line with the reason and a Retry button until it
// is dismissed. Jobs submitted from other tabs or clients appear too (the page learns of them from /api/events).
// Loaded after app.js, whose state and helpers it uses.
"use strict";

// Finished lines kept in view (besides failed ones, which stay until dismissed).
const FINISHED_SHOWN = 3;

const jobView = {
  lines: new Map(), // job id → its <li>
  progress: new Map(), // job id → the latest `progress` event
  dismissed: new Set(), // ids of finished lines the user closed
  secondsPerStep: null, // measured from the running job's ETA: estimates the queued jobs' ETAs
  stageJobId: null, // the job whose preview or image the stage shows
};

// Job titles show this much of the prompt.
const TITLE_PROMPT_MAX = 60;

// The jobs to show, in order: running, queued (first in line first), then finished ones, newest first.
function shownJobs() {
  const all = [...state.jobs.values()];
  const open = all.filter((j) => !FINISHED.has(j.status))
    .sort((a, b) => (a.status === "running" ? 0 : 1) - (b.status === "running" ? 0 : 1) || a.id - b.id);
  const finished = all.filter((j) => FINISHED.has(j.status) && !jobView.dismissed.has(j.id))
    .sort((a, b) => b.id - a.id);
  const failed = finished.filter((j) => j.status === "failed");
  const recent = finished.filter((j) => j.status !== "failed").slice(0, FINISHED_SHOWN);
  return [...open, ...finished.filter((j) => failed.includes(j) || recent.includes(j))];
}

function jobLine(job) {
  let li = jobView.lines.get(job.id);
  if (li) return li;
  li = $("job-line-template").content.firstElementChild.cloneNode(true);
  li.dataset.jobId = String(job.id);
  li.querySelector("progress").setAttribute("aria-label", `Progress of job #${job.id}`);
  const cancel = li.querySelector("[data-act=cancel]");
  cancel.setAttribute("aria-label", `Cancel job #${job.id}`);
  cancel.addEventListener("click", () => cancelJob(job.id));
  const retry = li.querySelector("[data-act=retry]");
  retry.setAttribute("aria-label", `Retry job #${job.id}`);
  retry.addEventListener("click", () => retryJob(job.id));
  const dismiss = li.querySelector("[data-act=dismiss]");
  dismiss.setAttribute("aria-label", `Dismiss job #${job.id}`);
  dismiss.addEventListener("click", () => {
    jobView.dismissed.add(job.id);
    renderJobs();
  });
  jobView.lines.set(job.id, li);
  return li;
}

// Place in the queue (1 = next), counting only queued jobs before it.
function queuePlace(job) {
  return [...state.jobs.values()].filter((j) => j.status === "queued" && j.id < job.id).length + 1;
}

// Seconds until a queued job is done: what the running job has left, the jobs ahead of it, then its own steps.
function queuedEta(job) {
  const sps = jobView.secondsPerStep;
  if (!(sps > 0)) return null;
  let seconds = 0;
  for (const j of state.jobs.values()) {
    if (j.status === "running") {
      const p = jobView.progress.get(j.id);
      seconds += p && typeof p.eta_s === "number" ? p.eta_s : j.steps_total * sps;
    } else if (j.status === "queued" && j.id < job.id) {
      seconds += j.steps_total * sps;
    }
  }
  return seconds + job.steps_total * sps;
}

function updateLine(li, job) {
  li.dataset.status = job.status;
  li.querySelector(".job-title").textContent = `#${job.id} ${job.mode} · ${cutText(job.params.prompt, TITLE_PROMPT_MAX)}`;
  li.querySelector(".job-title").title = job.params.prompt;
  const p = jobView.progress.get(job.id);
  let status = job.status;
  if (job.status === "queued") status = `queued (${ordinal(queuePlace(job))} in line)`;
  if (job.status === "done" && job.image_id != null) status = `done: image #${job.image_id}`;
  li.querySelector(".job-state").textContent = status;
  const bar = li.querySelector("progress");
  const step = li.querySelector(".step");
  const eta = li.querySelector(".eta");
  if (job.status === "done") {
    bar.value = 1;
  } else if (p) {
    bar.value = p.step / Math.max(1, p.total);
  }
  const stepText = p ? `step ${p.step} / ${p.total}` : `${job.steps_total} step${job.steps_total === 1 ? "" : "s"}`;
  if (step.textContent !== stepText) step.textContent = stepText;
  if (job.status === "running" && p) eta.textContent = formatEta(p.eta_s);
  else if (job.status === "queued") eta.textContent = queuedEta(job) != null ? `≈ ${formatEta(queuedEta(job))}` : "";
  else eta.textContent = "";
  const error = li.querySelector(".job-error");
  error.hidden = !(job.status === "failed" && job.error);
  error.textContent = job.error || "";
  li.querySelector("[data-act=cancel]").hidden = FINISHED.has(job.status);
  const retry = li.querySelector("[data-act=retry]");
  retry.hidden = job.status !== "failed" && job.status !== "canceled";
  li.querySelector("[data-act=dismiss]").hidden = !FINISHED.has(job.status);
}

function ordinal(n) {
  const s = n % 100 >= 11 && n % 100 <= 13 ? "th" : { 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th";
  return `${n}${s}`;
}

function renderJobs() {
  const list = $("jobs");
  const jobs = shownJobs();
  const keep = new Set(jobs.map((j) => j.id));
  for (const [id, li] of jobView.lines) {
    if (!keep.has(id)) {
      li.remove();
      jobView.lines.delete(id);
    }
  }
  jobs.forEach((job, i) => {
    const li = jobLine(job);
    updateLine(li, job);
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
  });
  $("jobs-empty").hidden = jobs.length > 0;
  const open = jobs.filter((j) => !FINISHED.has(j.status)).length;
  $("jobs-count").textContent = open > 0 ? `(${open} open)` : "";
}

// Resubmits a failed or canceled job's params (its seed included, so the same image comes out); an img2img job whose
// init image was an upload needs the file, kept by this tab when it submitted the job.
async function retryJob(id) {
  const job = state.jobs.get(id);
  if (!job) return;
  const params = { ...job.params };
  for (const k of ["init_image_id", "init_mask_id", "model"]) if (params[k] == null) delete params[k];
  const kept = state.uploads.get(id);
  if (job.mode === "img2img" && params.init_image_id == null && !kept) {
    note(`Job #${id} had an uploaded init image that this tab does not have: choose the file, then "Generate".`);
    return;
  }
  clearFieldErrors();
  await submitJob(params, kept ? kept.file : null, kept ? kept.mask : null);
}

// Shows job `id`'s preview or image on the stage; a newer job takes the stage over from an older one.
function stageFollows(id) {
  if (jobView.stageJobId !== null && id < jobView.stageJobId) return false;
  jobView.stageJobId = id;
  return true;
}

function showResult(imageId, url, caption) {
  const result = $("result");
  result.src = url;
  result.dataset.imageId = String(imageId);
  result.hidden = false;
  $("preview").hidden = true;
  $("stage-caption").textContent = caption || `Image #${imageId}`;
}

function onJob(report) {
  const known = state.jobs.get(report.id);
  // Events and the POST reply can arrive in either order: never let an older status overwrite a newer one.
  const job = known && STATUS_RANK[report.status] < STATUS_RANK[known.status] ? known : report;
  state.jobs.set(job.id, job);
  if (job.status === "done" && job.image_id != null && stageFollows(job.id) && $("result").dataset.imageId
    !== String(job.image_id)) {
    showResult(job.image_id, `/api/images/${job.image_id}/file`);
  }
  renderJobs();
  // A finished job may have made the server switch models.
  if (FINISHED.has(job.status) && (!known || known.status !== job.status) && state.models.length > 1) refreshModels();
}

function onProgress(p) {
  const job = state.jobs.get(p.job_id);
  if (job && FINISHED.has(job.status)) return;
  const line = jobView.lines.get(p.job_id);
  const seen = line ? line.querySelector(".step").dataset.stepsSeen : "";
  jobView.progress.set(p.job_id, p);
  if (typeof p.eta_s === "number" && p.total > p.step) jobView.secondsPerStep = p.eta_s / (p.total - p.step);
  if (!job) {
    // A job this page has not heard of yet (another tab's, or events sent before it loaded).
    api(`/api/jobs/${p.job_id}`).then(onJob, () => {});
    return;
  }
  if (job.status === "queued") state.jobs.set(job.id, { ...job, status: "running" });
  renderJobs();
  const step = jobView.lines.get(p.job_id).querySelector(".step");
  step.dataset.stepsSeen = seen ? `${seen},${p.step}` : String(p.step);
  if (typeof p.preview === "string" && p.preview.startsWith("data:image/") && stageFollows(p.job_id)) {
    $("preview").src = p.preview;
    $("preview").hidden = false;
    $("result").hidden = true;
    $("stage-caption").textContent = `Job #${p.job_id}: preview after step ${p.step}`;
  }
}

function onImage(ev) {
  const image = ev.image;
  if (stageFollows(ev.job_id)) {
    showResult(image.id, image.url, `Image #${image.id}: seed ${image.seed}, ${image.width}×${image.height}`);
  }
  if (state.page === 1) loadGallery(1);
  else $("gallery-status").textContent = "New images are on page 1.";
}

// Esc: cancels the running job, else the newest queued one.
function cancelFromKeyboard() {
  const open = [...state.jobs.values()].filter((j) => !FINISHED.has(j.status));
  const target = open.find((j) => j.status === "running") || open.sort((a, b) => b.id - a.id)[0];
  if (target) {
    note(`Canceling job #${target.id} (Esc).`);
    cancelJob(target.id);
  }
}

async function loadJobs() {
  try {
    const { jobs } = await api("/api/jobs?limit=50");
    if (jobs.length > 0) {
      state.lastSeed = jobs[0].params.seed;
      $("seed_reuse").disabled = false;
    }
    // Finished jobs of earlier visits are history, not news: only failed ones are shown, and only the newest few.
    const failedShown = jobs.filter((j) => j.status === "failed").slice(0, FINISHED_SHOWN).map((j) => j.id);
    for (const job of [...jobs].reverse()) {
      if (FINISHED.has(job.status) && !failedShown.includes(job.id)) jobView.dismissed.add(job.id);
      onJob(job);
    }
  } catch (e) {
    note(`Could not load the job list: ${e.message}`);
  }
}
