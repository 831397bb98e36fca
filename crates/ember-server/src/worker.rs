//! The generation worker: a dedicated OS thread that owns the engine [`Pipeline`] and runs queued jobs one at a
//! time, oldest first. It never runs on the async executor — a step can take seconds on a CPU.
//!
//! Its queue is the embedded SQLite file (one worker, inside `ember serve`) or PostgreSQL (`pg.rs`: any number of
//! workers, in `ember serve --workers N` and in `ember worker` processes on any machine, each job under a lease
//! that its steps and a heartbeat renew). Images go to the [`ImageStore`] (a folder or a bucket).
//!
//! Per job: claim it (queued → running), load the job's model if another one is in memory (dropping that one first:
//! one model in memory at a time; its LoRAs and embeddings are handed to it as it loads), build the engine request,
//! generate with a [`CancelToken`] while publishing a `progress` event (with a latent preview) per step, write the PNG
//! with its metadata, record it in the gallery and mark the job done — or failed / canceled. Every status change is
//! published as a `job` event.

use crate::db::{self, NewImage, INTERRUPTED};
use crate::error::clip_message;
use crate::events::Events;
use crate::image_store::ImageStore;
use crate::models::Models;
use crate::pg::{self, Claimed, StepAnswer};
use crate::storage::Storage;
use crate::types::{Image, ImageEvent, Job, JobStatus, Progress};
use crate::upload;
use base64::prelude::{Engine, BASE64_STANDARD};
use ember::image::metadata::dream_command;
use ember::image::png_meta::{encode_png, next_output_path};
use ember::pipeline::{CancelToken, Event, Pipeline};
use ember::request::InitImage;
use rusqlite::Connection;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the API and the worker talk besides the database: "there is new work", "cancel job N", "stop".
#[derive(Default)]
pub struct Queue {
    /// Held while a job changes status *and* its `job` event is published, so events reach clients in the order the
    /// changes happened (a job's `running` can never overtake its `queued`).
    transitions: Mutex<()>,
    pending: Mutex<bool>,
    wake: Condvar,
    /// The running job: its id, attempt and cancel token.
    running: Mutex<Option<(i64, i64, CancelToken)>>,
    stop: AtomicBool,
}

/// A poisoned lock only means another thread panicked while holding it; the data (a flag, an id) is still valid.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Queue {
    /// Runs a status change and the publication of its event as one step (see `transitions`).
    pub fn transition<T>(&self, change: impl FnOnce() -> T) -> T {
        let _order = lock(&self.transitions);
        change()
    }

    /// A job was queued.
    pub fn notify(&self) {
        *lock(&self.pending) = true;
        self.wake.notify_one();
    }

    /// Asks the running job `id` to stop after its current step; false when `id` is not the one running.
    pub fn cancel_running(&self, id: i64) -> bool {
        match &*lock(&self.running) {
            Some((running, _, token)) if *running == id => {
                token.cancel();
                true
            }
            _ => false,
        }
    }

    /// Server shutdown: the running job stops and the worker thread ends.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some((_, _, token)) = &*lock(&self.running) {
            token.cancel();
        }
        self.notify();
    }

    /// The id of the job running now.
    pub fn running_id(&self) -> Option<i64> {
        lock(&self.running).as_ref().map(|(id, _, _)| *id)
    }

    /// The running job's id and attempt.
    pub fn running_lease(&self) -> Option<(i64, i64)> {
        lock(&self.running).as_ref().map(|(id, attempt, _)| (*id, *attempt))
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps until notified or `timeout` (the timeout also covers jobs queued by another process).
    pub fn wait(&self, timeout: Duration) {
        let pending = lock(&self.pending);
        let (mut pending, _) = self
            .wake
            .wait_timeout_while(pending, timeout, |p| !*p)
            .unwrap_or_else(PoisonError::into_inner);
        *pending = false;
    }

    fn set_running(&self, running: Option<(i64, i64, CancelToken)>) {
        *lock(&self.running) = running;
    }
}

/// The queue a worker takes its jobs from.
pub enum Backend {
    /// The embedded SQLite file: this worker is the only one.
    Sqlite(Connection),
    /// PostgreSQL: one of many workers; `only_loaded` keeps it to jobs for the model it has in memory.
    Postgres { queue: pg::WorkerQueue, only_loaded: bool },
}

pub struct Worker {
    pub backend: Backend,
    /// The model in memory (its index in `models`) and its networks; None while none is (after a failed switch).
    pub pipeline: Option<(usize, Pipeline)>,
    pub models: Arc<Models>,
    pub queue: Arc<Queue>,
    pub events: Events,
    pub images: Arc<ImageStore>,
    pub storage: Arc<Storage>,
    /// Runs the image store's and PostgreSQL's async calls from this thread.
    pub runtime: tokio::runtime::Handle,
}

/// How a job ended.
enum Outcome {
    Done(Box<Image>),
    Canceled,
    Failed(String),
    /// The job's lease went to another worker (this one was too slow to renew it, or the job was failed meanwhile):
    /// nothing more is written about it.
    Lost,
}

/// What the queue costs a job besides its denoising: claim, progress writes, storing. Measured per attempt and
/// recorded with the job (PostgreSQL), the figure of BENCHMARKS.md.
#[derive(Default)]
struct Overhead(Duration);

impl Overhead {
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        self.0 += started.elapsed();
        out
    }
}

impl Worker {
    pub fn spawn(self, name: &str) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || self.run())
    }

    fn run(mut self) {
        while !self.queue.stopping() {
            // Results written into a removed data folder would be lost: wait for a restart instead. (A write fault
            // does not stop it: its next write is what finds the storage working again.)
            if let Some(message) = self.storage.removed() {
                self.storage.failed("the worker is waiting", &message);
                self.queue.wait(Duration::from_secs(1));
                continue;
            }
            let mut overhead = Overhead::default();
            let next = overhead.time(|| self.next_job());
            match next {
                Ok(Some((claimed, token))) => self.run_job(claimed, token, overhead),
                // Nothing to do, or a job canceled between the read and the claim (then look again at once).
                Ok(None) => {}
                Err(e) => {
                    self.storage.failed("cannot read the job queue", &e);
                    self.queue.wait(Duration::from_secs(1));
                }
            }
        }
        if let Backend::Postgres { queue, .. } = &self.backend {
            if let Err(e) = self.runtime.block_on(queue.deregister()) {
                tracing::warn!("cannot deregister the worker {}: {e}", queue.name);
            }
        }
    }

    /// Claims the next job, with its cancel token registered (before the claim where a cancel may race it).
    /// Ok(None) after waiting when there is none.
    fn next_job(&mut self) -> Result<Option<(Claimed, CancelToken)>, String> {
        let token = CancelToken::new();
        match &mut self.backend {
            Backend::Sqlite(conn) => {
                let Some(job) = db::next_queued(conn).map_err(|e| e.to_string())? else {
                    self.queue.wait(Duration::from_secs(1));
                    return Ok(None);
                };
                // Registered before the claim, so a cancel that sees the job running always finds its token.
                self.queue.set_running(Some((job.id, 1, token.clone())));
                let claimed = self.queue.transition(|| {
                    let claimed = db::claim(conn, job.id);
                    if let Ok(true) = claimed {
                        publish_job(conn, &self.events, job.id);
                    }
                    claimed
                });
                match claimed {
                    Ok(true) => Ok(Some((
                        Claimed {
                            job,
                            attempt: 1,
                            uploads: None,
                        },
                        token,
                    ))),
                    Ok(false) => {
                        self.queue.set_running(None);
                        Ok(None)
                    }
                    Err(e) => {
                        self.queue.set_running(None);
                        Err(format!("cannot start job {}: {e}", job.id))
                    }
                }
            }
            Backend::Postgres { queue, only_loaded } => {
                let names = self.models.all_names();
                let loaded = self.models.loaded_name();
                let claimed = self
                    .runtime
                    .block_on(queue.claim(&names, loaded.as_deref(), *only_loaded))
                    .map_err(|e| format!("cannot claim a job: {}", pg::error_text(&e)))?;
                let Some(claimed) = claimed else {
                    self.queue.wait(Duration::from_secs(1));
                    return Ok(None);
                };
                // A cancel asked meanwhile is in the job's row: the first step or heartbeat sees it.
                self.queue
                    .set_running(Some((claimed.job.id, claimed.attempt, token.clone())));
                if claimed.attempt > 1 {
                    tracing::info!(
                        "job {}: attempt {} (an earlier worker stopped answering)",
                        claimed.job.id,
                        claimed.attempt
                    );
                    self.remove_earlier_attempts(&claimed);
                }
                Ok(Some((claimed, token)))
            }
        }
    }

    /// Files an earlier attempt may have stored before its worker died (after the upload, before the commit): the
    /// gallery never points at them, so they go, and the bucket holds each job's image once.
    fn remove_earlier_attempts(&self, claimed: &Claimed) {
        for attempt in 1..claimed.attempt {
            let name = object_name(claimed.job.id, attempt, claimed.job.params.seed);
            for file in [mask_name(&name), name] {
                if let Err(e) = self.runtime.block_on(self.images.delete(&file)) {
                    tracing::warn!("cannot remove {}: {e}", self.images.describe(&file));
                }
            }
        }
    }

    fn run_job(&mut self, claimed: Claimed, token: CancelToken, mut overhead: Overhead) {
        let id = claimed.job.id;
        // A panic in the engine fails this job, not the server.
        let outcome =
            catch_unwind(AssertUnwindSafe(|| self.generate(&claimed, &token, &mut overhead))).unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown panic");
                Outcome::Failed(format!("internal error in the engine ({what}); please report it"))
            });
        let outcome = match outcome {
            // Clients see job errors: no absolute server paths in them (a LoRA's file is named in its errors).
            Outcome::Failed(message) => {
                Outcome::Failed(clip_message(&self.storage.redact(&self.models.redact(&message))))
            }
            other => other,
        };
        match &outcome {
            Outcome::Failed(message) => tracing::warn!("job {id} failed: {message}"),
            Outcome::Lost => tracing::warn!("job {id}: its lease went to another worker; this run's result is dropped"),
            _ => {}
        }
        self.record_end(&claimed, &outcome);
        // Registered until its end is recorded, so a cancel meanwhile finds the job instead of a conflict.
        self.queue.set_running(None);
        // PostgreSQL announced each change itself (NOTIFY, in the same transaction).
        if let Backend::Sqlite(conn) = &self.backend {
            if let Outcome::Done(image) = &outcome {
                self.events.image(&ImageEvent {
                    job_id: id,
                    image: (**image).clone(),
                });
            }
            publish_job(conn, &self.events, id);
        }
    }

    /// Records how the job ended. A storage fault (a full disk) does not strand the job as `running`: the write is
    /// retried every second until it succeeds or the worker stops (then the next start marks it interrupted, or
    /// its lease runs out).
    fn record_end(&mut self, claimed: &Claimed, outcome: &Outcome) {
        let (id, attempt) = (claimed.job.id, claimed.attempt);
        let stopping = self.queue.stopping();
        loop {
            let recorded = match (&self.backend, outcome) {
                // Recorded with its image, in the same transaction; a lost job is not ours to record.
                (_, Outcome::Done(_) | Outcome::Lost) => Ok(()),
                // A shutdown cancels the running job too; it was interrupted, not canceled by anyone.
                (Backend::Sqlite(conn), Outcome::Canceled) if stopping => {
                    db::finish(conn, id, JobStatus::Failed, Some(INTERRUPTED)).map_err(|e| e.to_string())
                }
                (Backend::Sqlite(conn), Outcome::Canceled) => {
                    db::finish(conn, id, JobStatus::Canceled, None).map_err(|e| e.to_string())
                }
                (Backend::Sqlite(conn), Outcome::Failed(message)) => {
                    db::finish(conn, id, JobStatus::Failed, Some(message)).map_err(|e| e.to_string())
                }
                // A worker stopping hands its job back to the queue, its attempt not counted: another runs it.
                (Backend::Postgres { queue, .. }, Outcome::Canceled) if stopping => self
                    .runtime
                    .block_on(queue.release(id, attempt))
                    .map_err(|e| pg::error_text(&e)),
                (Backend::Postgres { queue, .. }, Outcome::Canceled) => self
                    .runtime
                    .block_on(queue.finish(id, attempt, JobStatus::Canceled, None))
                    .map_err(|e| pg::error_text(&e)),
                (Backend::Postgres { queue, .. }, Outcome::Failed(message)) => self
                    .runtime
                    .block_on(queue.finish(id, attempt, JobStatus::Failed, Some(message)))
                    .map_err(|e| pg::error_text(&e)),
            };
            match recorded {
                Ok(()) => return self.storage.recovered(),
                Err(e) => {
                    self.storage.failed(&format!("cannot record the end of job {id}"), &e);
                }
            }
            if self.queue.stopping() {
                return;
            }
            self.queue.wait(Duration::from_secs(1));
        }
    }

    /// Makes the job's model the one in memory: the job's `model`, or (a job stored before jobs named one) the
    /// current one. A switch drops the loaded model before the next one loads.
    fn switch_model(&mut self, job: &Job) -> Result<(), String> {
        let index = match job.params.model.as_deref() {
            None | Some("") => self.models.current(),
            Some(name) => self.models.find(name).ok_or_else(|| {
                format!(
                    "the job was queued for the model '{name}', which this server does not run now (its models are \
                     {}); submit it again",
                    self.models.names()
                )
            })?,
        };
        if matches!(&self.pipeline, Some((loaded, _)) if *loaded == index) {
            return Ok(());
        }
        let served = self.models.get(index);
        self.pipeline = None;
        self.models.set_unloaded();
        tracing::info!("job {}: loading the model {}", job.id, served.name());
        let started = Instant::now();
        let (pipeline, warnings) = served
            .load()
            .map_err(|e| served.redact(&format!("cannot load the model '{}': {e:#}", served.name())))?;
        tracing::info!(
            "model {} loaded in {:.1} s",
            served.name(),
            started.elapsed().as_secs_f64()
        );
        for warning in warnings {
            tracing::warn!("model {}: {warning}", served.name());
        }
        self.pipeline = Some((index, pipeline));
        self.models.set_loaded(index);
        Ok(())
    }

    fn generate(&mut self, claimed: &Claimed, token: &CancelToken, overhead: &mut Overhead) -> Outcome {
        let job = &claimed.job;
        if let Err(message) = self.switch_model(job) {
            return Outcome::Failed(message);
        }
        // Canceled (or the server stopping) while the model loaded.
        if token.is_cancelled() {
            return Outcome::Canceled;
        }
        let init = match overhead.time(|| self.init_image(claimed)) {
            Ok(init) => init,
            Err(message) => return Outcome::Failed(message),
        };
        let mask = match overhead.time(|| self.init_mask(claimed)) {
            Ok(mask) => mask,
            Err(message) => return Outcome::Failed(message),
        };
        let request = match job.params.to_request(init, mask) {
            Ok(request) => request,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let mut lost = false;
        let generated = {
            let (backend, events, queue, runtime, id) =
                (&self.backend, &self.events, &self.queue, &self.runtime, job.id);
            let Some((_, pipeline)) = &self.pipeline else {
                return Outcome::Failed("no model is loaded".into());
            };
            let mut started = Instant::now();
            let mut on_event = |event: Event<'_>| match event {
                Event::Warning(w) => tracing::warn!("job {id}: {}", clip_message(&w)),
                Event::Started { total_steps, .. } => {
                    started = Instant::now();
                    // The engine's count is the truth (a job stored by an older version counted one hires pass).
                    if total_steps as i64 != job.steps_total {
                        overhead.time(|| match backend {
                            Backend::Sqlite(conn) => {
                                queue.transition(|| match db::set_steps_total(conn, id, total_steps) {
                                    Ok(()) => publish_job(conn, events, id),
                                    Err(e) => tracing::warn!("cannot record the step count of job {id}: {e}"),
                                })
                            }
                            Backend::Postgres { queue, .. } => {
                                if let Err(e) = runtime.block_on(queue.set_steps_total(claimed, total_steps)) {
                                    tracing::warn!("cannot record the step count of job {id}: {}", pg::error_text(&e));
                                }
                            }
                        });
                    }
                }
                Event::Step {
                    step,
                    total_steps,
                    latents,
                } => {
                    let per_step = started.elapsed().as_secs_f64() / step.max(1) as f64;
                    let preview = pipeline
                        .preview(latents)
                        .map_err(|e| e.to_string())
                        .and_then(|rgb| png_data_url(&rgb))
                        .unwrap_or_else(|e| {
                            tracing::warn!("no preview for job {id}: {e}");
                            String::new()
                        });
                    let progress = Progress {
                        job_id: id,
                        step,
                        total: total_steps,
                        eta_s: per_step * total_steps.saturating_sub(step) as f64,
                        preview,
                    };
                    overhead.time(|| match backend {
                        Backend::Sqlite(conn) => {
                            if let Err(e) = db::set_steps_done(conn, id, step) {
                                tracing::warn!("cannot record progress of job {id}: {e}");
                            }
                            events.progress(&progress);
                        }
                        // Published by the front-ends' event relay, wherever this worker runs.
                        Backend::Postgres { queue, .. } => match runtime.block_on(queue.step(claimed, &progress)) {
                            Ok(StepAnswer::Go) => {}
                            Ok(StepAnswer::Cancel) => token.cancel(),
                            Ok(StepAnswer::Lost) => {
                                lost = true;
                                token.cancel();
                            }
                            Err(e) => tracing::warn!("cannot record progress of job {id}: {}", pg::error_text(&e)),
                        },
                    });
                }
            };
            pipeline.generate(&request, token, &mut on_event)
        };
        if lost {
            return Outcome::Lost;
        }
        let mut generated = match generated {
            Ok(generated) if !token.is_cancelled() => generated,
            Ok(_) | Err(ember::Error::Cancelled) => return Outcome::Canceled,
            Err(e) => return Outcome::Failed(e.to_string()),
        };

        // The SQLite queue numbers its files as the CLI does (`000012.42.png`); workers of a shared queue name them
        // by job and attempt (`000012-1.42.png`), so that no two workers ever pick the same name.
        let file = match (&self.backend, self.images.folder()) {
            (Backend::Sqlite(_), Some(folder)) => match next_output_path(folder, request.seed) {
                Ok(path) => file_name(&path),
                Err(e) => {
                    self.storage.failed("cannot write an image", &e);
                    return Outcome::Failed(format!("cannot save the image: {e}"));
                }
            },
            _ => object_name(job.id, claimed.attempt, request.seed),
        };
        // An inpainted image's mask goes next to it (`000012.42.mask.png`, as the CLI names it), and its metadata
        // names that file, so that the recorded options replay the run.
        let mask_file = generated.mask.as_ref().map(|_| mask_name(&file));
        generated.record.init_mask_name = mask_file.clone();
        let stored = overhead.time(|| self.store_files(&file, mask_file.as_deref(), &generated));
        if let Err(e) = stored {
            self.storage.failed("cannot write an image", &e);
            // Redacted with every other failure in `run_job`.
            return Outcome::Failed(format!("cannot save the image: {e}"));
        }
        let dream = dream_command(&generated.record);
        let new_image = NewImage {
            job_id: job.id,
            file: &file,
            seed: request.seed,
            width: generated.image.width(),
            height: generated.image.height(),
            params: &job.params,
            dream: &dream,
            mask_file: mask_file.as_deref(),
        };
        let recorded = match &mut self.backend {
            Backend::Sqlite(conn) => db::insert_image_and_finish(conn, &new_image)
                .and_then(|image_id| db::get_image(conn, image_id))
                .map_err(|e| e.to_string()),
            Backend::Postgres { queue, .. } => {
                let started = Instant::now();
                let spent = (overhead.0 + started.elapsed()).as_secs_f64() * 1000.0;
                self.runtime
                    .block_on(queue.store_image(claimed, &new_image, spent))
                    .map_err(|e| pg::error_text(&e))
            }
        };
        let remove_files = |this: &Self| {
            for written in std::iter::once(&file).chain(&mask_file) {
                let _ = this.runtime.block_on(this.images.delete(written));
            }
        };
        match recorded {
            Ok(Some(image)) => Outcome::Done(Box::new(image)),
            Ok(None) if matches!(self.backend, Backend::Postgres { .. }) => {
                remove_files(self);
                Outcome::Lost
            }
            Ok(None) => Outcome::Failed("the image was recorded but cannot be read back".into()),
            Err(e) => {
                // No row points at the files: remove them rather than leave orphans in the gallery's store.
                remove_files(self);
                self.storage.failed("cannot record an image", &e);
                Outcome::Failed(format!("cannot record the image in the gallery: {e}"))
            }
        }
    }

    /// Writes the image (with its metadata) and its mask to the store; on failure neither stays.
    fn store_files(
        &self,
        file: &str,
        mask_file: Option<&str>,
        generated: &ember::pipeline::Generated,
    ) -> Result<(), String> {
        let png = encode_png(&generated.image, &generated.record).map_err(|e| e.to_string())?;
        let mask_png = match &generated.mask {
            Some(mask) => {
                let mut bytes = Vec::new();
                mask.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
                    .map_err(|e| e.to_string())?;
                Some(bytes)
            }
            None => None,
        };
        let written = self.runtime.block_on(async {
            if let (Some(name), Some(bytes)) = (mask_file, mask_png) {
                self.images
                    .put(name, bytes)
                    .await
                    .map_err(|e| format!("{}: {e}", self.images.describe(name)))?;
            }
            self.images
                .put(file, png)
                .await
                .map_err(|e| format!("{}: {e}", self.images.describe(file)))
        });
        if written.is_err() {
            for name in std::iter::once(file).chain(mask_file) {
                let _ = self.runtime.block_on(self.images.delete(name));
            }
        }
        written
    }

    /// An upload stored with the job (init image or mask): read with the claim (PostgreSQL), or now (SQLite).
    fn job_bytes(&self, claimed: &Claimed, mask: bool) -> Result<Option<(String, Vec<u8>)>, String> {
        if let Some(uploads) = &claimed.uploads {
            return Ok(if mask { &uploads.mask } else { &uploads.init_image }.clone());
        }
        match &self.backend {
            Backend::Sqlite(conn) if mask => db::job_mask(conn, claimed.job.id).map_err(|e| e.to_string()),
            Backend::Sqlite(conn) => db::job_upload(conn, claimed.job.id).map_err(|e| e.to_string()),
            Backend::Postgres { .. } => Err("internal error: a job was claimed without its uploads".into()),
        }
    }

    /// A gallery image's file (or its mask's): None when the image or its mask is gone.
    fn gallery_file(&self, image_id: i64, mask: bool) -> Result<Option<String>, String> {
        match &self.backend {
            Backend::Sqlite(conn) if mask => db::image_mask_file(conn, image_id)
                .map(Option::flatten)
                .map_err(|e| e.to_string()),
            Backend::Sqlite(conn) => db::image_file(conn, image_id).map_err(|e| e.to_string()),
            Backend::Postgres { queue, .. } if mask => self
                .runtime
                .block_on(queue.image_mask_file(image_id))
                .map(Option::flatten)
                .map_err(|e| pg::error_text(&e)),
            Backend::Postgres { queue, .. } => self
                .runtime
                .block_on(queue.image_file(image_id))
                .map_err(|e| pg::error_text(&e)),
        }
    }

    /// The job's init image (`mask` false) or mask: its upload, or a gallery image's file (or mask) named by
    /// `init_image_id` (`init_mask_id`), or none.
    fn job_image(&self, claimed: &Claimed, mask: bool) -> Result<Option<(String, Vec<u8>)>, String> {
        let job = &claimed.job;
        if let Some(upload) = self.job_bytes(claimed, mask)? {
            return Ok(Some(upload));
        }
        let (image_id, field) = if mask {
            (job.params.init_mask_id, "init_mask_id")
        } else {
            (job.params.init_image_id, "init_image_id")
        };
        let Some(image_id) = image_id else {
            return Ok(None);
        };
        let missing = || format!("gallery image {image_id} ({field}) was deleted before the job ran");
        let file = self.gallery_file(image_id, mask)?.ok_or_else(missing)?;
        let bytes = self.runtime.block_on(self.images.get(&file)).map_err(|_| missing())?;
        Ok(Some((file, bytes)))
    }

    /// The job's init image: its upload, or a gallery image named by `init_image_id`, or none (txt2img).
    fn init_image(&self, claimed: &Claimed) -> Result<Option<InitImage>, String> {
        let Some((name, bytes)) = self.job_image(claimed, false)? else {
            return Ok(None);
        };
        let image = upload::decode(&bytes).map_err(|e| format!("cannot use the init image {name}: {}", e.message))?;
        Ok(Some(InitImage::Memory { name, image }))
    }

    /// The job's inpainting mask: its upload, or the mask of the gallery image `init_mask_id`, or none.
    fn init_mask(&self, claimed: &Claimed) -> Result<Option<InitImage>, String> {
        let Some((name, bytes)) = self.job_image(claimed, true)? else {
            return Ok(None);
        };
        let image =
            upload::decode_as(&bytes, "init_mask").map_err(|e| format!("cannot use the mask {name}: {}", e.message))?;
        Ok(Some(InitImage::Memory { name, image }))
    }
}

/// A shared queue's image name: by job and attempt, so a retried job never meets its earlier attempt's file.
pub fn object_name(job_id: i64, attempt: i64, seed: u32) -> String {
    format!("{job_id:06}-{attempt}.{seed}.png")
}

/// The mask stored next to image `file` (`000012.42.png` → `000012.42.mask.png`).
fn mask_name(file: &str) -> String {
    format!("{}.mask.png", file.strip_suffix(".png").unwrap_or(file))
}

/// A path's file name, as the database records it.
fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Publishes job `id` as the SQLite database has it now.
fn publish_job(conn: &Connection, events: &Events, id: i64) {
    match db::get_job(conn, id) {
        Ok(Some(job)) => events.job(&job),
        Ok(None) => tracing::error!("job {id} vanished from the database"),
        Err(e) => tracing::error!("cannot read job {id}: {e}"),
    }
}

/// A PNG as a `data:` URL, for progress previews.
fn png_data_url(rgb: &image::RgbImage) -> Result<String, String> {
    let mut png = Vec::new();
    rgb.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(format!("data:image/png;base64,{}", BASE64_STANDARD.encode(png)))
}

/// A PostgreSQL worker's second connection, as a task: renews its registration and its job's lease, hears
/// cancels (`ember_cancel`) and new jobs (`ember_queue`), and stops the running job when a cancel was asked or the
/// lease was lost. Reconnects when the connection breaks; ends when the worker stops.
pub async fn heartbeat(url: String, name: String, lease: Duration, queue: Arc<Queue>, models: Arc<Models>) {
    let tick = (lease / 3).clamp(Duration::from_millis(200), Duration::from_secs(1));
    while !queue.stopping() {
        let (client, mut notifications) = match pg::listen(&url, &[pg::CANCEL, pg::QUEUE]).await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("worker {name}: the heartbeat cannot reach PostgreSQL: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // A job may have been queued while this connection was down.
        queue.notify();
        while !queue.stopping() {
            tokio::select! {
                notification = notifications.recv() => match notification {
                    Some(n) if n.channel() == pg::CANCEL => {
                        if let Ok(id) = n.payload().parse::<i64>() {
                            queue.cancel_running(id);
                        }
                    }
                    Some(_) => queue.notify(),
                    None => break,
                },
                _ = tokio::time::sleep(tick) => {
                    let loaded = models.loaded_name();
                    let running = queue.running_lease();
                    match pg::heartbeat(&client, &name, lease, loaded.as_deref(), running).await {
                        Ok(Some(StepAnswer::Cancel | StepAnswer::Lost)) => {
                            if let Some((id, _)) = running {
                                queue.cancel_running(id);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!("worker {name}: heartbeat failed: {}", pg::error_text(&e));
                            break;
                        }
                    }
                }
            }
        }
    }
}
