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

mod access;
mod addons;
mod api;
mod config;
mod db;
mod error;
mod events;
#[doc(hidden)]
pub mod fuzzing;
mod models;
mod openapi;
mod static_files;
mod storage;
mod types;
mod upload;
mod worker;

pub use config::{Config, NamedModel};
pub use openapi::ApiDoc;

use access::Access;
use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use ember::pipeline::MEGAPIXEL;
use events::Events;
use models::Models;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use storage::Storage;
use tokio::sync::oneshot;
use tokio::sync::Semaphore;
use worker::{Queue, Worker};

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    db: db::Db,
    events: Events,
    queue: Arc<Queue>,
    images_dir: Arc<PathBuf>,
    /// The models jobs may name, each with its defaults and the engine's admission checks (with this server's work
    /// limits), and which one is loaded.
    models: Arc<Models>,
    storage: Arc<Storage>,
    /// Megapixels of uploads being decoded at once (see `api::MAX_DECODING_MEGAPIXELS`).
    decodes: Arc<Semaphore>,
    /// What the models' LoRA and embedding files say about themselves (`GET /api/loras`, `/api/embeddings`).
    addon_infos: Arc<addons::AddonInfos>,
}

/// Room for the two 20 MB uploads (init image and mask) plus the params part and multipart framing.
const MAX_JOB_BODY: usize = 2 * upload::MAX_UPLOAD_BYTES + 1024 * 1024;

fn router(state: AppState, access: Arc<Access>) -> Router {
    let api = Router::new()
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
        .route("/images/{id}/file", get(api::image_file))
        .route("/images/{id}/mask", get(api::image_mask))
        .route("/samplers", get(api::samplers))
        .route("/models", get(api::models))
        .route("/loras", get(addons::loras))
        .route("/embeddings", get(addons::embeddings))
        .route("/health", get(api::health))
        .route("/session", post(access::session).with_state(access.clone()))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(api::not_found);
    Router::new()
        .route("/", get(static_files::index))
        .route("/assets/{file}", get(static_files::file))
        .nest("/api", api)
        .fallback(api::not_found)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(access, access::guard))
}

/// A server started by [`start`]: its address, and the means to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The name of the model loaded at start, as `GET /api/models` reports it.
    pub model_name: String,
    /// Its family's name (`SD 1.x`, `SD 2.x`, `SDXL`).
    pub model_family: &'static str,
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

/// Loads the model, opens the database (recovering from a crash), binds the listener and starts the worker and the
/// HTTP server in the background. `config.port` 0 picks a free port: see [`RunningServer::addr`].
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    let images_dir = config.images_dir();
    std::fs::create_dir_all(&images_dir)
        .with_context(|| format!("cannot create the data folder {}", images_dir.display()))?;
    let api_conn = db::open(&config.db_path())?;
    let interrupted = db::fail_interrupted(&api_conn).context("cannot recover the job queue")?;
    if interrupted > 0 {
        tracing::warn!("{interrupted} job(s) were running when the server last stopped; they are marked failed");
    }
    let worker_conn = db::open(&config.db_path())?;
    let storage = Arc::new(Storage::new(&config.data_dir, &config.db_path(), &images_dir));

    let models_config = config.clone();
    let (pipeline, models, left_out) = tokio::task::spawn_blocking(move || models::open(&models_config))
        .await
        .context("the model loading task failed")??;
    for line in &left_out {
        tracing::warn!("{line}");
    }
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
    let model_name = start.name().to_string();
    let model_family = pipeline.spec().family.name();
    let model_names = models.infos().into_iter().map(|m| m.name).collect();
    if let Some(limits) = start.checker.limits() {
        tracing::info!(
            "work limits: {:.2} megapixels per image, {:.1} megapixel-steps per job",
            limits.max_pixels as f64 / MEGAPIXEL as f64,
            limits.max_pixel_steps as f64 / MEGAPIXEL as f64
        );
    }
    let models = Arc::new(models);
    let access = Arc::new(Access::new(config.token.clone(), &config.allowed_hosts));

    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; is another server using the port? (try --port)"))?;
    let local_addr = listener.local_addr()?;

    let state = AppState {
        db: db::Db::new(api_conn),
        events: Events::default(),
        queue: Arc::new(Queue::default()),
        images_dir: Arc::new(images_dir.clone()),
        models: models.clone(),
        storage: storage.clone(),
        decodes: Arc::new(Semaphore::new(api::MAX_DECODING_MEGAPIXELS)),
        addon_infos: Arc::default(),
    };
    let worker = Worker {
        conn: worker_conn,
        pipeline: Some((models.current(), pipeline)),
        models,
        queue: state.queue.clone(),
        events: state.events.clone(),
        images_dir,
        storage,
    }
    .spawn()
    .context("cannot start the worker thread")?;

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let (events, queue) = (state.events.clone(), state.queue.clone());
    let app = router(state, access);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown_rx.await;
                // Event streams never end on their own; graceful shutdown would wait for them forever.
                events.close();
            })
            .await;
        queue.stop();
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .context("cannot wait for the worker")?
            .map_err(|_| anyhow::anyhow!("the worker thread panicked"))?;
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

/// How long Ctrl-C waits for the running job to stop before the process exits anyway.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

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
async fn stop_signal() -> anyhow::Result<()> {
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(serve(config));
    // Dropping a runtime waits for its blocking tasks, which include waiting for a job that would not stop.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served
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
