//! The generation worker: ONE dedicated OS thread that owns the engine [`Pipeline`] and runs queued jobs one at a
//! time, oldest first. It never runs on the async executor — a step can take seconds on a CPU.
//!
//! Per job: claim it (queued → running), load the job's model if another one is in memory (dropping that one first:
//! one model in memory at a time; its LoRAs and embeddings are handed to it as it loads), build the engine request,
//! generate with a [`CancelToken`] while publishing a `progress` event (with a latent preview) per step, write the PNG
//! with its metadata, record it in the gallery and mark the job done — or failed / canceled. Every status change is
//! published as a `job` event.

use crate::db::{self, NewImage, INTERRUPTED};
use crate::error::clip_message;
use crate::events::Events;
use crate::models::Models;
use crate::storage::Storage;
use crate::types::{Image, ImageEvent, Job, JobStatus, Progress};
use crate::upload;
use base64::prelude::{Engine, BASE64_STANDARD};
use ember::image::metadata::dream_command;
use ember::image::png_meta::{next_output_path, write_png};
use ember::pipeline::{CancelToken, Event, Pipeline};
use ember::request::InitImage;
use rusqlite::Connection;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
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
    running: Mutex<Option<(i64, CancelToken)>>,
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
            Some((running, token)) if *running == id => {
                token.cancel();
                true
            }
            _ => false,
        }
    }

    /// Server shutdown: the running job stops and the worker thread ends.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some((_, token)) = &*lock(&self.running) {
            token.cancel();
        }
        self.notify();
    }

    /// The id of the job running now.
    pub fn running_id(&self) -> Option<i64> {
        lock(&self.running).as_ref().map(|(id, _)| *id)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps until notified or `timeout` (the timeout also covers jobs queued by another process).
    fn wait(&self, timeout: Duration) {
        let pending = lock(&self.pending);
        let (mut pending, _) = self
            .wake
            .wait_timeout_while(pending, timeout, |p| !*p)
            .unwrap_or_else(PoisonError::into_inner);
        *pending = false;
    }

    fn set_running(&self, running: Option<(i64, CancelToken)>) {
        *lock(&self.running) = running;
    }
}

pub struct Worker {
    pub conn: Connection,
    /// The model in memory (its index in `models`) and its networks; None while none is (after a failed switch).
    pub pipeline: Option<(usize, Pipeline)>,
    pub models: Arc<Models>,
    pub queue: Arc<Queue>,
    pub events: Events,
    pub images_dir: PathBuf,
    pub storage: Arc<Storage>,
}

/// How a job ended.
enum Outcome {
    Done(Box<Image>),
    Canceled,
    Failed(String),
}

impl Worker {
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("ember-worker".into())
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
            match db::next_queued(&self.conn) {
                Ok(Some(job)) => self.run_job(job),
                Ok(None) => self.queue.wait(Duration::from_secs(1)),
                Err(e) => {
                    self.storage.failed("cannot read the job queue", &e);
                    self.queue.wait(Duration::from_secs(1));
                }
            }
        }
    }

    fn run_job(&mut self, job: Job) {
        let token = CancelToken::new();
        // Registered before the claim, so a cancel that sees the job running always finds its token.
        self.queue.set_running(Some((job.id, token.clone())));
        let claimed = self.queue.transition(|| {
            let claimed = db::claim(&self.conn, job.id);
            if let Ok(true) = claimed {
                self.publish_job(job.id);
            }
            claimed
        });
        match claimed {
            Ok(true) => {}
            // Canceled between the read and the claim.
            Ok(false) => return self.queue.set_running(None),
            Err(e) => {
                self.storage.failed(&format!("cannot start job {}", job.id), &e);
                self.queue.set_running(None);
                return self.queue.wait(Duration::from_secs(1));
            }
        }

        // A panic in the engine fails this job, not the server.
        let outcome = catch_unwind(AssertUnwindSafe(|| self.generate(&job, &token))).unwrap_or_else(|panic| {
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
        if let Outcome::Failed(message) = &outcome {
            tracing::warn!("job {} failed: {message}", job.id);
        }
        self.record_end(job.id, &outcome);
        // Registered until its end is recorded, so a cancel meanwhile finds the job instead of a conflict.
        self.queue.set_running(None);
        if let Outcome::Done(image) = &outcome {
            self.events.image(&ImageEvent {
                job_id: job.id,
                image: (**image).clone(),
            });
        }
        self.publish_job(job.id);
    }

    /// Records how job `id` ended. A storage fault (a full disk) does not strand the job as `running`: the write is
    /// retried every second until it succeeds or the server stops (then the next start marks it interrupted).
    fn record_end(&mut self, id: i64, outcome: &Outcome) {
        loop {
            let recorded = match outcome {
                // Recorded with its image, in the same transaction.
                Outcome::Done(_) => Ok(()),
                // A shutdown cancels the running job too; it was interrupted, not canceled by anyone.
                Outcome::Canceled if self.queue.stopping() => {
                    db::finish(&self.conn, id, JobStatus::Failed, Some(INTERRUPTED))
                }
                Outcome::Canceled => db::finish(&self.conn, id, JobStatus::Canceled, None),
                Outcome::Failed(message) => db::finish(&self.conn, id, JobStatus::Failed, Some(message)),
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

    fn publish_job(&self, id: i64) {
        publish_job(&self.conn, &self.events, id);
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

    fn generate(&mut self, job: &Job, token: &CancelToken) -> Outcome {
        if let Err(message) = self.switch_model(job) {
            return Outcome::Failed(message);
        }
        // Canceled (or the server stopping) while the model loaded.
        if token.is_cancelled() {
            return Outcome::Canceled;
        }
        let init = match self.init_image(job) {
            Ok(init) => init,
            Err(message) => return Outcome::Failed(message),
        };
        let mask = match self.init_mask(job) {
            Ok(mask) => mask,
            Err(message) => return Outcome::Failed(message),
        };
        let request = match job.params.to_request(init, mask) {
            Ok(request) => request,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let generated = {
            let (conn, events, queue, id) = (&self.conn, &self.events, &self.queue, job.id);
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
                        queue.transition(|| match db::set_steps_total(conn, id, total_steps) {
                            Ok(()) => publish_job(conn, events, id),
                            Err(e) => tracing::warn!("cannot record the step count of job {id}: {e}"),
                        });
                    }
                }
                Event::Step {
                    step,
                    total_steps,
                    latents,
                } => {
                    if let Err(e) = db::set_steps_done(conn, id, step) {
                        tracing::warn!("cannot record progress of job {id}: {e}");
                    }
                    let per_step = started.elapsed().as_secs_f64() / step.max(1) as f64;
                    let preview = pipeline
                        .preview(latents)
                        .map_err(|e| e.to_string())
                        .and_then(|rgb| png_data_url(&rgb))
                        .unwrap_or_else(|e| {
                            tracing::warn!("no preview for job {id}: {e}");
                            String::new()
                        });
                    events.progress(&Progress {
                        job_id: id,
                        step,
                        total: total_steps,
                        eta_s: per_step * total_steps.saturating_sub(step) as f64,
                        preview,
                    });
                }
            };
            pipeline.generate(&request, token, &mut on_event)
        };
        let mut generated = match generated {
            Ok(generated) if !token.is_cancelled() => generated,
            Ok(_) | Err(ember::Error::Cancelled) => return Outcome::Canceled,
            Err(e) => return Outcome::Failed(e.to_string()),
        };

        let path = match next_output_path(&self.images_dir, request.seed) {
            Ok(path) => path,
            Err(e) => {
                self.storage.failed("cannot write an image", &e);
                return Outcome::Failed(format!("cannot save the image: {e}"));
            }
        };
        // An inpainted image's mask goes next to it (`000012.42.mask.png`, as the CLI names it), and its metadata
        // names that file, so that the recorded options replay the run.
        let mask_path = generated.mask.as_ref().map(|_| path.with_extension("mask.png"));
        generated.record.init_mask_name = mask_path.as_ref().map(|p| file_name(p));
        let written = match (&generated.mask, &mask_path) {
            (Some(mask), Some(mask_path)) => mask
                .save_with_format(mask_path, image::ImageFormat::Png)
                .map_err(|e| format!("{}: {e}", mask_path.display())),
            _ => Ok(()),
        }
        .and_then(|()| write_png(&path, &generated.image, &generated.record).map_err(|e| e.to_string()));
        if let Err(e) = written {
            for written in std::iter::once(&path).chain(&mask_path) {
                let _ = std::fs::remove_file(written);
            }
            self.storage.failed("cannot write an image", &e);
            // Redacted with every other failure in `run_job`.
            return Outcome::Failed(format!("cannot save the image: {e}"));
        }
        let file = file_name(&path);
        let mask_file = mask_path.as_ref().map(|p| file_name(p));
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
        let recorded = db::insert_image_and_finish(&mut self.conn, &new_image)
            .and_then(|image_id| db::get_image(&self.conn, image_id));
        match recorded {
            Ok(Some(image)) => Outcome::Done(Box::new(image)),
            Ok(None) => Outcome::Failed("the image was recorded but cannot be read back".into()),
            Err(e) => {
                // No row points at the files: remove them rather than leave orphans in the gallery folder.
                for written in std::iter::once(&path).chain(&mask_path) {
                    let _ = std::fs::remove_file(written);
                }
                self.storage.failed("cannot record an image", &e);
                Outcome::Failed(format!("cannot record the image in the gallery: {e}"))
            }
        }
    }

    /// The job's init image: its upload, or a gallery image named by `init_image_id`, or none (txt2img).
    fn init_image(&self, job: &Job) -> Result<Option<InitImage>, String> {
        let (name, bytes) = if let Some(upload) = db::job_upload(&self.conn, job.id).map_err(|e| e.to_string())? {
            upload
        } else if let Some(image_id) = job.params.init_image_id {
            let missing = || format!("gallery image {image_id} (init_image_id) was deleted before the job ran");
            let file = db::image_file(&self.conn, image_id)
                .map_err(|e| e.to_string())?
                .ok_or_else(missing)?;
            let bytes = std::fs::read(self.images_dir.join(&file)).map_err(|_| missing())?;
            (file, bytes)
        } else {
            return Ok(None);
        };
        let image = upload::decode(&bytes).map_err(|e| format!("cannot use the init image {name}: {}", e.message))?;
        Ok(Some(InitImage::Memory { name, image }))
    }

    /// The job's inpainting mask: its upload, or the mask of the gallery image `init_mask_id`, or none.
    fn init_mask(&self, job: &Job) -> Result<Option<InitImage>, String> {
        let (name, bytes) = if let Some(upload) = db::job_mask(&self.conn, job.id).map_err(|e| e.to_string())? {
            upload
        } else if let Some(image_id) = job.params.init_mask_id {
            let missing = || format!("gallery image {image_id} (init_mask_id) was deleted before the job ran");
            let file = db::image_mask_file(&self.conn, image_id)
                .map_err(|e| e.to_string())?
                .flatten()
                .ok_or_else(missing)?;
            let bytes = std::fs::read(self.images_dir.join(&file)).map_err(|_| missing())?;
            (file, bytes)
        } else {
            return Ok(None);
        };
        let image =
            upload::decode_as(&bytes, "init_mask").map_err(|e| format!("cannot use the mask {name}: {}", e.message))?;
        Ok(Some(InitImage::Memory { name, image }))
    }
}

/// A path's file name, as the database records it.
fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Publishes job `id` as the database has it now.
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
