//! Ember's web server: the HTTP API of `docs/api.md` and the web page, over the Ember engine.
//!
//! ```text
//! browser ──HTTP──► api.rs ──► db.rs (SQLite: jobs, images) ◄── worker.rs (one thread, owns the Pipeline)
//!         ◄──SSE─── events.rs ◄─────────────── progress, job and image events ───┘
//! ```
//!
//! A server may run several named models (`models.rs`), one in memory at a time: jobs are checked against the model
//! they name at submit time, and the worker loads that model before it runs them. Each model has its library of
//! LoRAs and embeddings (`addons.rs` lists them for the page's pickers).
//!
//! Jobs are rows in SQLite, so queued jobs survive a restart; the worker thread takes the oldest queued job, runs
//! it with a cancel token and writes the PNG into `<data-dir>/images/`. A job found `running` at startup belonged to
//! a process that died and is marked failed. Like the CLI, the server never touches tensors itself.
//!
//! Past one machine (`--queue postgres://…`, `--images s3://…`): `store.rs` puts the API on PostgreSQL (`pg.rs`)
//! instead, `image_store.rs` the PNGs in a bucket, and the workers — in this process (`--workers N`) or in `ember
//! worker` processes anywhere (`cluster.rs`) — claim jobs under leases; their events come back through PostgreSQL's
//! NOTIFY to this server's SSE clients.
//!
//! Besides Ember's own `/api`, the same router speaks AUTOMATIC1111's `/sdapi/v1` (`a1111/`) and OpenAI's Images
//! API under `/v1` (`openai.rs`): their requests block until done, but each image is an ordinary job of the same
//! queue (`blocking.rs`). `Config::apis` (`--api`) switches each API off.

mod a1111;
mod access;
mod addons;
mod api;
mod blocking;
mod cluster;
mod config;
mod db;
mod error;
mod events;
#[doc(hidden)]
pub mod fuzzing;
mod image_store;
mod models;
mod openai;
mod openapi;
mod pg;
mod static_files;
mod storage;
mod store;
mod types;
mod upload;
mod worker;

pub use cluster::{migrate_blocking, work, work_blocking};
pub use config::{Apis, Config, NamedModel, QueueLocation, DEFAULT_LEASE, DEFAULT_MAX_ATTEMPTS};
pub use image_store::ImagesLocation;
pub use openapi::ApiDoc;

use access::Access;
use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use ember::pipeline::MEGAPIXEL;
use events::Events;
use image_store::ImageStore;
use models::Models;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use storage::Storage;
use store::JobStore;
use tokio::sync::oneshot;
use tokio::sync::Semaphore;
use worker::{Backend, Queue, Worker};

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    /// The jobs and the gallery's records: SQLite or PostgreSQL.
    db: JobStore,
    events: Events,
    /// The gallery's PNGs: a folder or a bucket.
    images: Arc<ImageStore>,
    /// The models jobs may name, each with its defaults and the engine's admission checks (with this server's work
    /// limits), and which one is loaded.
    models: Arc<Models>,
    storage: Arc<Storage>,
    /// Megapixels of uploads being decoded at once (see `api::MAX_DECODING_MEGAPIXELS`).
    decodes: Arc<Semaphore>,
    /// What the models' LoRA and embedding files say about themselves (`GET /api/loras`, `/api/embeddings`).
    addon_infos: Arc<addons::AddonInfos>,
    /// The blocking requests of the A1111 and OpenAI APIs in flight, with their jobs.
    requests: Arc<blocking::Requests>,
    /// The A1111 API's settings (`POST /sdapi/v1/options`).
    a1111: Arc<a1111::Settings>,
}

/// Room for the two 20 MB uploads (init image and mask) plus the params part and multipart framing.
const MAX_JOB_BODY: usize = 2 * upload::MAX_UPLOAD_BYTES + 1024 * 1024;

/// Room for a JSON body with two base64 uploads (init image and mask: 4/3 of their bytes) and the rest.
const MAX_BASE64_BODY: usize = MAX_JOB_BODY / 3 * 4 + 1024 * 1024;

fn router(state: AppState, access: Arc<Access>, apis: Apis) -> Router {
    let mut api = Router::new();
    if apis.ember {
        api = api
            .route(
                "/jobs",
                post(api::create_job)
                    .get(api::list_jobs)
                    .layer(DefaultBodyLimit::max(MAX_JOB_BODY)),
            )
            .route("/jobs/{id}", get(api::get_job))
            .route("/jobs/{id}/cancel", post(api::cancel_job))
            .route("/events", get(api::events))
            .route("/images", get(api::list_images))
            .route("/images/{id}", get(api::get_image).delete(api::delete_image))
            .route("/images/{id}/mask", get(api::image_mask))
            .route("/images/{id}/init", get(api::image_init))
            .route("/samplers", get(api::samplers))
            .route("/models", get(api::models))
            .route("/workers", get(api::workers))
            .route("/loras", get(addons::loras))
            .route("/embeddings", get(addons::embeddings))
            .route("/session", post(access::session).with_state(access.clone()));
    }
    if apis.ember || apis.openai {
        // OpenAI's `url` answers point here.
        api = api.route("/images/{id}/file", get(api::image_file));
    }
    let api = api
        .route("/health", get(api::health))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(api::not_found);
    let mut app = Router::new();
    if apis.ember {
        app = app
            .route("/", get(static_files::index))
            .route("/assets/{file}", get(static_files::file));
    }
    app = app.nest("/api", api);
    if apis.a1111 {
        let sdapi = Router::new()
            .route("/txt2img", post(a1111::txt2img))
            .route("/img2img", post(a1111::img2img))
            .route("/progress", get(a1111::progress))
            .route("/interrupt", post(a1111::interrupt))
            .route("/skip", post(a1111::skip))
            .route("/options", get(a1111::get_options).post(a1111::set_options))
            .route("/sd-models", get(a1111::sd_models))
            .route("/samplers", get(a1111::samplers))
            .route("/schedulers", get(a1111::schedulers))
            .route("/loras", get(a1111::loras))
            .route("/embeddings", get(a1111::embeddings))
            .route("/png-info", post(a1111::png_info))
            .route("/scripts", get(a1111::scripts))
            .route("/cmd-flags", get(a1111::cmd_flags))
            .route("/sd-vae", get(a1111::empty_list))
            .route("/upscalers", get(a1111::empty_list))
            .route("/latent-upscale-modes", get(a1111::empty_list))
            .route("/hypernetworks", get(a1111::empty_list))
            .route("/face-restorers", get(a1111::empty_list))
            .route("/prompt-styles", get(a1111::empty_list))
            .route("/refresh-checkpoints", post(a1111::no_op))
            .route("/refresh-loras", post(a1111::no_op))
            .route("/refresh-vae", post(a1111::no_op))
            .fallback(a1111::not_found)
            .layer(DefaultBodyLimit::max(MAX_BASE64_BODY));
        app = app.nest("/sdapi/v1", sdapi);
    }
    if apis.openai {
        let v1 = Router::new()
            .route("/images/generations", post(openai::generations))
            .route(
                "/images/edits",
                post(openai::edits).layer(DefaultBodyLimit::max(MAX_JOB_BODY)),
            )
            .route("/models", get(openai::models))
            .route("/models/{id}", get(openai::get_model))
            .fallback(openai::not_found);
        app = app.nest("/v1", v1);
    }
    app.fallback(api::not_found)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(access, access::guard))
}

/// A server started by [`start`]: its address, and the means to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The name of the model loaded at start, as `GET /api/models` reports it.
    pub model_name: String,
    /// Its family's name (`SD 1.x`, `SD 2.x`, `SDXL`).
    pub model_family: String,
    /// Every model jobs may name, the loaded one included.
    pub models: Vec<String>,
    /// A line per model of `Config::models` that is left out (it could not be described).
    pub left_out: Vec<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Stops accepting requests, ends open event streams, stops the running job and waits for the worker.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await.context("the server task failed")?
    }
}

/// What the in-process workers of a server take their jobs from: the SQLite worker's own connection and the queue it
/// shares with the API, or the PostgreSQL address (each worker connects).
enum WorkerSide {
    Sqlite(rusqlite::Connection, Arc<Queue>),
    Postgres(String),
}

/// The in-process workers of a server, and how to stop them.
struct Workers {
    queues: Vec<Arc<Queue>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    fn stop(&self) {
        for queue in &self.queues {
            queue.stop();
        }
    }

    /// Waits for the threads (blocking).
    fn join(self) -> anyhow::Result<()> {
        for thread in self.threads {
            thread.join().map_err(|_| anyhow::anyhow!("a worker thread panicked"))?;
        }
        Ok(())
    }
}

/// Opens the queue (recovering from a crash, or migrating PostgreSQL's schema), the image store and the models (the
/// start model loaded when a worker runs here), binds the listener and starts the workers and the HTTP server in
/// the background. Refused configurations (an unreachable database, a missing bucket) fail before anything
/// listens. `config.port` 0 picks a free port: see [`RunningServer::addr`].
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    let sqlite = matches!(config.queue_location(), QueueLocation::Sqlite(_));
    if sqlite && config.workers > 1 {
        anyhow::bail!(
            "--workers {}: the SQLite queue has one worker; use --queue postgres://… for several",
            config.workers
        );
    }
    if config.max_attempts < 1 {
        anyhow::bail!("--max-attempts must be at least 1");
    }
    let images = Arc::new(ImageStore::open(&config.images_location()).await?);
    let (db, worker_side, storage) = match config.queue_location() {
        QueueLocation::Postgres(url) => {
            let pg = Arc::new(pg::Pg::open(&url, true).await?);
            let storage = Arc::new(Storage::shared(images.folder()));
            (
                JobStore::Postgres {
                    pg,
                    max_attempts: config.max_attempts,
                },
                WorkerSide::Postgres(url),
                storage,
            )
        }
        QueueLocation::Sqlite(db_path) => {
            if let Some(parent) = db_path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create the data folder {}", parent.display()))?;
            }
            let api_conn = db::open(&db_path)?;
            let interrupted = db::fail_interrupted(&api_conn).context("cannot recover the job queue")?;
            if interrupted > 0 {
                tracing::warn!(
                    "{interrupted} job(s) were running when the server last stopped; they are marked failed"
                );
            }
            let worker_conn = db::open(&db_path)?;
            let data_dir = db_path.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
            let watched_images = images.folder().map_or(data_dir.clone(), std::path::Path::to_path_buf);
            let storage = Arc::new(Storage::new(&data_dir, &db_path, &watched_images));
            let queue = Arc::new(Queue::default());
            (
                JobStore::Sqlite {
                    db: db::Db::new(api_conn),
                    queue: queue.clone(),
                },
                WorkerSide::Sqlite(worker_conn, queue),
                storage,
            )
        }
    };
    if sqlite && config.workers == 0 {
        tracing::warn!("--workers 0 with the SQLite queue: jobs are queued but nothing here runs them");
    }

    let (pipeline, models, left_out) = models::open_off_thread(&config, config.workers > 0).await?;
    for line in &left_out {
        tracing::warn!("{line}");
    }
    log_models(&models);
    let start = models.get(models.current());
    let model_name = start.name().to_string();
    let model_family = start.info.family.name.clone();
    let model_names = models.infos().into_iter().map(|m| m.name).collect();
    let models = Arc::new(models);
    let access = Arc::new(Access::new(config.token.clone(), &config.allowed_hosts));

    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; is another server using the port? (try --port)"))?;
    let local_addr = listener.local_addr()?;

    let state = AppState {
        db,
        events: Events::default(),
        images: images.clone(),
        models: models.clone(),
        storage: storage.clone(),
        decodes: Arc::new(Semaphore::new(api::MAX_DECODING_MEGAPIXELS)),
        addon_infos: Arc::default(),
        requests: Arc::default(),
        a1111: Arc::default(),
    };
    let runtime = tokio::runtime::Handle::current();
    let mut workers = Workers {
        queues: Vec::new(),
        threads: Vec::new(),
    };
    match worker_side {
        WorkerSide::Sqlite(conn, queue) => {
            if let Some(pipeline) = pipeline {
                let worker = Worker {
                    backend: Backend::Sqlite(conn),
                    pipeline: Some((models.current(), pipeline)),
                    models,
                    queue: queue.clone(),
                    events: state.events.clone(),
                    images,
                    storage,
                    runtime,
                };
                workers
                    .threads
                    .push(worker.spawn("ember-worker").context("cannot start the worker thread")?);
            }
            workers.queues.push(queue);
        }
        WorkerSide::Postgres(url) => {
            tokio::spawn(cluster::relay_events(url.clone(), state.events.clone()));
            let mut first = pipeline.map(|p| (p, models));
            for i in 0..config.workers {
                let name = match &config.worker_name {
                    Some(name) if config.workers == 1 => name.clone(),
                    Some(name) => format!("{name}-{}", i + 1),
                    None => format!("{}-{}-serve-{}", pg::hostname(), std::process::id(), i + 1),
                };
                let (pipeline, worker_models) = match first.take() {
                    Some(pair) => pair,
                    None => {
                        let (pipeline, models, _) = models::open_off_thread(&config, true).await?;
                        (pipeline.context("the worker's model did not load")?, Arc::new(models))
                    }
                };
                let worker_queue = pg::WorkerQueue::connect(&url, &name, config.lease).await?;
                let (queue, thread) = cluster::start_pg_worker(
                    &config,
                    &url,
                    worker_queue,
                    (pipeline, worker_models),
                    (state.events.clone(), images.clone(), storage.clone()),
                )
                .await?;
                workers.queues.push(queue);
                workers.threads.push(thread);
            }
        }
    }

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let events = state.events.clone();
    let app = router(state, access, config.apis);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown_rx.await;
                // Event streams never end on their own; graceful shutdown would wait for them forever.
                events.close();
            })
            .await;
        workers.stop();
        tokio::task::spawn_blocking(move || workers.join())
            .await
            .context("cannot wait for the workers")??;
        served.context("the HTTP server failed")
    });
    Ok(RunningServer {
        addr: local_addr,
        model_name,
        model_family,
        models: model_names,
        left_out,
        shutdown: Some(shutdown_tx),
        task,
    })
}

pub(crate) fn log_models(models: &models::Models) {
    for info in models.infos() {
        let name = &info.name;
        tracing::info!(
            "model {name}{}: {}, {}, {} spacing",
            if info.loaded { " (loaded)" } else { "" },
            info.family.name,
            info.prediction_type,
            info.timestep_spacing
        );
        for note in &info.notes {
            tracing::info!("model {name}: {note}");
        }
    }
    let start = models.get(models.current());
    if let Some(limits) = start.checker.limits() {
        tracing::info!(
            "work limits: {:.2} megapixels per image, {:.1} megapixel-steps per job",
            limits.max_pixels as f64 / MEGAPIXEL as f64,
            limits.max_pixel_steps as f64 / MEGAPIXEL as f64
        );
    }
}

/// How long Ctrl-C waits for the running job to stop before the process exits anyway.
pub(crate) const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the server until Ctrl-C (or SIGTERM), printing its address on stdout. A job that does not stop within
/// [`SHUTDOWN_GRACE`] (or a second Ctrl-C) does not keep the process alive: it is marked interrupted at the next start.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let exposed = !is_loopback(&config.host);
    let protected = config.token.is_some();
    let server = start(config).await?;
    let others = if server.models.len() > 1 {
        format!("; jobs may name {}", server.models.join(", "))
    } else {
        String::new()
    };
    println!(
        "Ember is listening on http://{}/ (model: {}, {}{others})",
        server.addr, server.model_name, server.model_family
    );
    if exposed && !protected {
        eprintln!(
            "warning: --host {} exposes the API to the network without an access token: anyone who can reach port \
             {} can queue jobs and delete images. Set --token (or EMBER_TOKEN).",
            server.addr.ip(),
            server.addr.port()
        );
    }
    stop_signal().await?;
    eprintln!("stopping: the running job (if any) is marked failed; queued jobs run after the next start");
    let shutdown = server.shutdown();
    tokio::select! {
        stopped = shutdown => stopped,
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            eprintln!("the running job did not stop within {}s; exiting anyway", SHUTDOWN_GRACE.as_secs());
            Ok(())
        }
        _ = stop_signal() => {
            eprintln!("second interrupt: exiting without waiting for the running job");
            Ok(())
        }
    }
}

/// Ctrl-C, or SIGTERM where there are signals (what `kill` and service managers send).
pub(crate) async fn stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot wait for SIGTERM")?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted.context("cannot wait for Ctrl-C"),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.context("cannot wait for Ctrl-C")
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// [`serve`] on its own multi-threaded tokio runtime, for callers without one (the `ember` binary).
pub fn serve_blocking(config: Config) -> anyhow::Result<()> {
    on_own_runtime(serve(config))
}

/// Runs `task` on a new multi-threaded tokio runtime and returns its result.
pub(crate) fn on_own_runtime(task: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(task);
    // Dropping a runtime waits for its blocking tasks, which include waiting for a job that would not stop.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn only_loopback_hosts_count_as_this_machine_only() {
        for local in ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"] {
            assert!(is_loopback(local), "{local}");
        }
        for exposed in ["0.0.0.0", "::", "192.168.1.5", "example.org"] {
            assert!(!is_loopback(exposed), "{exposed}: the server warns without a token");
        }
    }
}
