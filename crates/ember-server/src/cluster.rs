//! Ember past one machine: the pieces of the PostgreSQL queue that run beside the HTTP server or without it —
//! starting a PostgreSQL worker (in `ember serve --workers N` or in `ember worker`), relaying the queue's NOTIFY
//! events to this server's SSE clients, and `ember serve --migrate`. The queue's SQL is in `pg.rs`, the worker loop
//! in `worker.rs`.

use crate::config::{Config, QueueLocation};
use crate::events::Events;
use crate::image_store::ImageStore;
use crate::storage::Storage;
use crate::worker::{self, Backend, Queue, Worker};
use crate::{log_models, models, pg, stop_signal, types, SHUTDOWN_GRACE};
use anyhow::Context;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Connects and registers a PostgreSQL worker with its loaded model, starts its heartbeat and its thread.
pub(crate) async fn start_pg_worker(
    config: &Config,
    url: &str,
    worker_queue: pg::WorkerQueue,
    (pipeline, models): (ember::pipeline::Pipeline, Arc<models::Models>),
    (events, images, storage): (Events, Arc<ImageStore>, Arc<Storage>),
) -> anyhow::Result<(Arc<Queue>, JoinHandle<()>)> {
    let name = worker_queue.name.clone();
    worker_queue
        .register(&models.all_names(), models.loaded_name().as_deref())
        .await?;
    let queue = Arc::new(Queue::default());
    tokio::spawn(worker::heartbeat(
        url.to_string(),
        name.to_string(),
        config.lease,
        queue.clone(),
        models.clone(),
    ));
    let worker = Worker {
        backend: Backend::Postgres {
            queue: worker_queue,
            only_loaded: config.only_loaded,
        },
        pipeline: Some((models.current(), pipeline)),
        models,
        queue: queue.clone(),
        events,
        images,
        storage,
        runtime: tokio::runtime::Handle::current(),
    };
    let thread = worker.spawn(&name).context("cannot start the worker thread")?;
    Ok((queue, thread))
}

/// The front-end's side of PostgreSQL's events: LISTENs on `ember_events`, reads what each notification names and
/// publishes it to this server's SSE clients, so that the page shows live steps of a job on any worker. Also fails
/// the jobs whose workers died (when no worker is left to do it). Reconnects when the connection breaks.
pub(crate) async fn relay_events(url: String, events: Events) {
    let pg = loop {
        match pg::Pg::open(&url, false).await {
            Ok(pg) => break pg,
            Err(e) => {
                tracing::warn!("the event relay cannot reach PostgreSQL: {e:#}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    let mut closing = events.closing();
    loop {
        let (_client, mut notifications) = match pg::listen(&url, &[pg::EVENTS]).await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("the event relay cannot reach PostgreSQL: {e:#}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut reap = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            tokio::select! {
                notification = notifications.recv() => match notification {
                    Some(n) => relay(&pg, &events, n.payload()).await,
                    None => break,
                },
                _ = reap.tick() => {
                    if let Err(e) = pg.reap().await {
                        tracing::warn!("cannot check the workers' leases: {}", e.message);
                    }
                }
                _ = closing.changed() => return,
            }
        }
    }
}

/// Publishes what one `ember_events` notification names, as the database has it now.
async fn relay(pg: &pg::Pg, events: &Events, payload: &str) {
    let number = |s: &str| s.parse::<i64>().ok();
    let published = match payload.split(':').collect::<Vec<_>>().as_slice() {
        ["job", id] => match number(id) {
            Some(id) => pg.get_job(id).await.map(|job| job.map(|job| events.job(&job))),
            None => Ok(None),
        },
        ["progress", id] => match number(id) {
            Some(id) => pg.progress(id).await.map(|p| p.map(|p| events.progress(&p))),
            None => Ok(None),
        },
        ["image", job_id, image_id] => match (number(job_id), number(image_id)) {
            (Some(job_id), Some(image_id)) => pg
                .get_image(image_id)
                .await
                .map(|image| image.map(|image| events.image(&types::ImageEvent { job_id, image }))),
            _ => Ok(None),
        },
        _ => Ok(None),
    };
    if let Err(e) = published {
        tracing::warn!("cannot relay the event {payload}: {}", e.message);
    }
}

/// `ember worker`: a process with no HTTP server that runs the jobs of a PostgreSQL queue, writing images to the
/// image store, until Ctrl-C or SIGTERM (then its running job goes back to the queue).
pub async fn work(config: Config) -> anyhow::Result<()> {
    let url = match config.queue_location() {
        QueueLocation::Postgres(url) => url,
        QueueLocation::Sqlite(_) => anyhow::bail!(
            "ember worker needs --queue postgres://…: the SQLite queue is run by `ember serve`'s own worker"
        ),
    };
    let images = Arc::new(ImageStore::open(&config.images_location()).await?);
    let name = config
        .worker_name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", pg::hostname(), std::process::id()));
    // The database first (fast to refuse), then the model (slow to load).
    let worker_queue = pg::WorkerQueue::connect(&url, &name, config.lease).await?;
    let (pipeline, models, left_out) = models::open_off_thread(&config, true).await?;
    for line in &left_out {
        tracing::warn!("{line}");
    }
    log_models(&models);
    let pipeline = pipeline.context("the worker's model did not load")?;
    let storage = Arc::new(Storage::shared(images.folder()));
    let (queue, thread) = start_pg_worker(
        &config,
        &url,
        worker_queue,
        (pipeline, Arc::new(models)),
        (Events::default(), images, storage),
    )
    .await?;
    eprintln!(
        "worker {name} ready: queue {}, images {}",
        pg::describe_url(&url),
        config.images_location()
    );
    stop_signal().await?;
    eprintln!("worker {name} stopping: its running job (if any) goes back to the queue");
    queue.stop();
    let joined = tokio::task::spawn_blocking(move || thread.join());
    match tokio::time::timeout(SHUTDOWN_GRACE, joined).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(_) => anyhow::bail!("the worker thread panicked"),
        Err(_) => {
            eprintln!(
                "the running job did not stop within {}s; exiting anyway",
                SHUTDOWN_GRACE.as_secs()
            );
            Ok(())
        }
    }
}

/// [`work`] on its own runtime (the `ember` binary).
pub fn work_blocking(config: Config) -> anyhow::Result<()> {
    crate::on_own_runtime(work(config))
}

/// `ember serve --migrate`: applies the PostgreSQL schema and returns.
pub fn migrate_blocking(config: &Config) -> anyhow::Result<String> {
    let QueueLocation::Postgres(url) = config.queue_location() else {
        anyhow::bail!("--migrate is for --queue postgres://… (the SQLite queue migrates itself at start)");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        pg::Pg::open(&url, true).await?;
        Ok(format!(
            "the job database at {} has Ember schema version {}",
            pg::describe_url(&url),
            pg::SCHEMA_VERSION
        ))
    })
}
