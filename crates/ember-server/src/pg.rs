//! The job queue and the gallery in PostgreSQL (`--queue postgres://…`), for one front-end and many workers on many
//! machines. The SQLite queue (`db.rs`) stays the default; the same `jobs` and `images` tables, plus:
//!
//! - **Claims** are one statement: the oldest queued job for a model the worker has (its loaded model first), taken
//!   with `FOR UPDATE SKIP LOCKED`, so workers never wait on each other nor take the same job.
//! - **Leases**: a claimed job carries its worker's name, its attempt number and `lease_until`, renewed by every step
//!   and by the worker's heartbeat. A job whose lease ran out (its worker was killed, lost power or network) is
//!   claimed again by another worker (attempt + 1), or fails after `max_attempts`. Every write a worker makes about
//!   a job is conditional on (worker, attempt), so a worker that lost its lease changes nothing.
//! - **Events** cross machines as `NOTIFY ember_events` (`job:ID`, `progress:ID`, `image:JOB:IMAGE`), sent in the
//!   same transaction as the change they announce, so they arrive in commit order; the front-end reads the row and
//!   publishes it to its SSE clients. `NOTIFY ember_cancel` (a job id) reaches the workers, and `ember_queue` wakes
//!   idle ones when a job is queued.
//! - **Schema** versions are applied by `ember serve` under an advisory lock (`--migrate` only migrates); a worker
//!   refuses a database whose version is not its own.

use crate::db::{NewImage, NewJob};
use crate::error::{ApiError, ApiResult};
use crate::types::{Image, Job, JobStatus, Mode, Progress};
use anyhow::Context;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::{mpsc, RwLock};
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification, Row};

/// The schema this Ember writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// Channel of `job:ID`, `progress:ID` and `image:JOB:IMAGE` notifications.
pub const EVENTS: &str = "ember_events";
/// Channel of job ids to cancel, for the workers.
pub const CANCEL: &str = "ember_cancel";
/// Channel that wakes idle workers: a job was queued (or a lease may have run out).
pub const QUEUE: &str = "ember_queue";

/// Key of the advisory lock held while migrating ("ember" in ASCII).
const MIGRATION_LOCK: i64 = 0x65_6d_62_65_72;

/// Schema versions, in order; `ember_schema.version` is the number applied.
const MIGRATIONS: &[&str] = &["
CREATE TABLE jobs (
    id               bigserial PRIMARY KEY,
    status           text NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'canceled')),
    params           text NOT NULL,
    mode             text NOT NULL,
    -- The model the job runs on, by name: workers claim only jobs for models they have.
    model            text NOT NULL,
    steps_total      bigint NOT NULL,
    steps_done       bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    error            text,
    image_id         bigint,
    init_upload      bytea,
    init_upload_name text,
    init_mask        bytea,
    init_mask_name   text,
    attempts         bigint NOT NULL DEFAULT 0,
    -- The submitting server's --max-attempts.
    max_attempts     bigint NOT NULL DEFAULT 3,
    worker           text,
    lease_until      timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    -- The last progress of a running job, for the front-ends' event relay.
    eta_s            double precision,
    preview          text,
    -- What the queue cost the last attempt besides denoising (claim, progress, storing): the figure of BENCHMARKS.md.
    overhead_ms      double precision
);
CREATE INDEX jobs_queued ON jobs (model, id) WHERE status = 'queued';
CREATE INDEX jobs_running ON jobs (lease_until) WHERE status = 'running';
CREATE INDEX jobs_by_status ON jobs (status, id);
CREATE TABLE images (
    id         bigserial PRIMARY KEY,
    -- One image per job, whatever the attempts: no duplicates in the gallery.
    job_id     bigint NOT NULL UNIQUE,
    file       text NOT NULL UNIQUE,
    seed       bigint NOT NULL,
    width      bigint NOT NULL,
    height     bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    params     text NOT NULL,
    dream      text NOT NULL,
    mask_file  text
);
CREATE TABLE workers (
    name         text PRIMARY KEY,
    host         text NOT NULL,
    pid          bigint NOT NULL,
    models       text[] NOT NULL,
    loaded_model text,
    running_job  bigint,
    lease_secs   double precision NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
"];

/// `col` as RFC 3339 UTC with milliseconds, as the SQLite queue writes times.
macro_rules! rfc3339 {
    ($col:literal) => {
        concat!(
            "to_char(",
            $col,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
        )
    };
}

const JOB_COLUMNS: &str = concat!(
    "j.id, j.status, j.params, j.mode, j.steps_total, j.steps_done, ",
    rfc3339!("j.created_at"),
    ", ",
    rfc3339!("j.started_at"),
    ", ",
    rfc3339!("j.finished_at"),
    ", j.error, j.image_id, (SELECT i.mask_file IS NOT NULL FROM images i WHERE i.id = j.image_id), j.attempts, j.worker"
);

const IMAGE_COLUMNS: &str = concat!(
    "id, job_id, seed, width, height, ",
    rfc3339!("created_at"),
    ", params, dream, mask_file IS NOT NULL"
);

/// `url` without its password, for messages.
pub fn describe_url(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(config) => {
            let host = config
                .get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(name) => name.clone(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                })
                .unwrap_or_else(|| "localhost".into());
            let port = config.get_ports().first().copied().unwrap_or(5432);
            format!("{host}:{port}/{}", config.get_dbname().unwrap_or("(default database)"))
        }
        Err(_) => "the given address".into(),
    }
}

type PgConnection = tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>;

async fn connect_raw(url: &str) -> anyhow::Result<(Client, PgConnection)> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| anyhow::anyhow!("--queue: '{}' is not a PostgreSQL address: {e}", describe_url(url)))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("ember");
    let connected = tokio::time::timeout(Duration::from_secs(15), config.connect(NoTls)).await;
    match connected {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(anyhow::anyhow!(
            "cannot connect to PostgreSQL at {}: {}",
            describe_url(url),
            error_text(&e)
        )),
        Err(_) => anyhow::bail!(
            "cannot connect to PostgreSQL at {}: no answer within 15 s",
            describe_url(url)
        ),
    }
}

/// A client whose connection runs on the current runtime.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = connect_raw(url).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("a PostgreSQL connection ended: {}", error_text(&e));
        }
    });
    Ok(client)
}

/// A client LISTENing on `channels`, and its notifications (the receiver ends when the connection does).
pub async fn listen(url: &str, channels: &[&str]) -> anyhow::Result<(Client, mpsc::UnboundedReceiver<Notification>)> {
    let (client, mut connection) = connect_raw(url).await?;
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if sender.send(n).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("the PostgreSQL notification connection ended: {}", error_text(&e));
                    return;
                }
            }
        }
    });
    for channel in channels {
        client.batch_execute(&format!("LISTEN {channel}")).await?;
    }
    Ok((client, receiver))
}

/// A PostgreSQL error with the server's own message (`password authentication failed for user …`).
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                text = format!("{text}: {inner}");
                source = inner.source();
            }
            text
        }
    }
}

fn db_err(e: tokio_postgres::Error) -> ApiError {
    ApiError::unavailable(format!("the job database failed: {}", error_text(&e)))
}

/// Applies the missing schema versions, under an advisory lock so that two servers starting together do not both
/// migrate. Refuses a database of a newer Ember.
pub async fn migrate(client: &mut Client) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS ember_schema (version bigint NOT NULL)")
        .await?;
    let version = match tx.query_opt("SELECT version FROM ember_schema", &[]).await? {
        Some(row) => row.get::<_, i64>(0),
        None => {
            tx.execute("INSERT INTO ember_schema (version) VALUES (0)", &[]).await?;
            0
        }
    };
    if version > MIGRATIONS.len() as i64 {
        anyhow::bail!(
            "the database has Ember schema version {version}, newer than this Ember's {}; upgrade Ember",
            MIGRATIONS.len()
        );
    }
    for sql in MIGRATIONS.iter().skip(version as usize) {
        tx.batch_execute(sql).await?;
    }
    tx.execute("UPDATE ember_schema SET version = $1", &[&(MIGRATIONS.len() as i64)])
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A worker's check: the schema must be exactly the one it was built for.
pub async fn check_schema(client: &Client) -> anyhow::Result<()> {
    let exists: bool = client
        .query_one("SELECT to_regclass('ember_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    let version = if exists {
        client
            .query_opt("SELECT version FROM ember_schema", &[])
            .await?
            .map(|r| r.get::<_, i64>(0))
    } else {
        None
    };
    match version {
        Some(v) if v == SCHEMA_VERSION => Ok(()),
        None | Some(0) => anyhow::bail!(
            "the database has no Ember schema yet; start `ember serve --queue …` on it first (or run `ember serve \
             --queue … --migrate`)"
        ),
        Some(v) => anyhow::bail!(
            "the database has Ember schema version {v} but this worker speaks schema version {SCHEMA_VERSION}; run \
             the same Ember version on the server and the workers"
        ),
    }
}

fn job_from_row(row: &Row) -> Result<Job, String> {
    let status: String = row.get(1);
    let params: String = row.get(2);
    let mode: String = row.get(3);
    let id: i64 = row.get(0);
    let image_id: Option<i64> = row.get(10);
    let has_mask: Option<bool> = row.get(11);
    Ok(Job {
        id,
        status: JobStatus::parse(&status).ok_or_else(|| format!("job {id} has an unknown status '{status}'"))?,
        params: serde_json::from_str(&params).map_err(|e| format!("job {id} has unreadable params: {e}"))?,
        mode: if mode == "img2img" {
            Mode::Img2img
        } else {
            Mode::Txt2img
        },
        steps_total: row.get(4),
        steps_done: row.get(5),
        created_at: row.get(6),
        started_at: row.get(7),
        finished_at: row.get(8),
        error: row.get(9),
        image_id,
        mask_url: match (image_id, has_mask) {
            (Some(image_id), Some(true)) => Some(format!("/api/images/{image_id}/mask")),
            _ => None,
        },
        attempts: row.get(12),
        worker: row.get(13),
    })
}

fn image_from_row(row: &Row) -> Result<Image, String> {
    let id: i64 = row.get(0);
    let params: String = row.get(6);
    let number = |i: usize| u32::try_from(row.get::<_, i64>(i)).map_err(|e| format!("image {id}: {e}"));
    Ok(Image {
        id,
        job_id: row.get(1),
        url: format!("/api/images/{id}/file"),
        seed: number(2)?,
        width: number(3)?,
        height: number(4)?,
        created_at: row.get(5),
        params: serde_json::from_str(&params).map_err(|e| format!("image {id} has unreadable params: {e}"))?,
        dream: row.get(7),
        mask_url: row.get::<_, bool>(8).then(|| format!("/api/images/{id}/mask")),
    })
}

/// A worker as `GET /api/workers` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct WorkerInfo {
    pub name: String,
    pub host: String,
    /// The models it may run, by name.
    pub models: Vec<String>,
    /// The model in memory now.
    pub loaded_model: Option<String>,
    pub running_job: Option<i64>,
    pub heartbeat_at: String,
    /// Whether it answered within three leases; a worker that did not is presumed dead (its jobs go to others).
    pub alive: bool,
}

/// The front-end's side: jobs, gallery and workers, on one connection (queries from concurrent requests are
/// pipelined on it), made again when it breaks.
pub struct Pg {
    url: String,
    client: RwLock<Client>,
}

impl Pg {
    /// Connects, and migrates unless `migrate` is false (then checks the schema like a worker).
    pub async fn open(url: &str, migrate_schema: bool) -> anyhow::Result<Self> {
        let mut client = connect(url).await?;
        if migrate_schema {
            migrate(&mut client)
                .await
                .with_context(|| format!("cannot set up the job database at {}", describe_url(url)))?;
        } else {
            check_schema(&client).await?;
        }
        Ok(Self {
            url: url.to_string(),
            client: RwLock::new(client),
        })
    }

    async fn client(&self) -> ApiResult<tokio::sync::RwLockReadGuard<'_, Client>> {
        {
            let client = self.client.read().await;
            if !client.is_closed() {
                return Ok(client);
            }
        }
        let mut client = self.client.write().await;
        if client.is_closed() {
            *client = connect(&self.url)
                .await
                .map_err(|e| ApiError::unavailable(format!("{e:#}")))?;
        }
        Ok(client.downgrade())
    }

    pub async fn insert_job(&self, job: &NewJob, model: &str, max_attempts: i64) -> ApiResult<Job> {
        let params = serde_json::to_string(&job.params).map_err(|e| ApiError::internal(e.to_string()))?;
        let (name, bytes) = split(&job.upload);
        let (mask_name, mask) = split(&job.mask);
        let client = self.client().await?;
        let row = client
            .query_one(
                "INSERT INTO jobs (status, params, mode, model, steps_total, init_upload_name, init_upload,
                                   init_mask_name, init_mask, max_attempts)
                 VALUES ('queued', $1, $2, $3, $4, $5, $6, $7, $8, $9)
                 RETURNING id, pg_notify('ember_events', 'job:' || id), pg_notify('ember_queue', $3)",
                &[
                    &params,
                    &job.mode.as_str(),
                    &model,
                    &(job.steps_total as i64),
                    &name,
                    &bytes,
                    &mask_name,
                    &mask,
                    &max_attempts,
                ],
            )
            .await
            .map_err(db_err)?;
        let id: i64 = row.get(0);
        drop(client);
        self.get_job(id)
            .await?
            .ok_or_else(|| ApiError::internal("the new job vanished"))
    }

    pub async fn get_job(&self, id: i64) -> ApiResult<Option<Job>> {
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("SELECT {JOB_COLUMNS} FROM jobs j WHERE j.id = $1"), &[&id])
            .await
            .map_err(db_err)?;
        row.map(|r| job_from_row(&r).map_err(ApiError::internal)).transpose()
    }

    /// Newest first.
    pub async fn list_jobs(&self, status: Option<JobStatus>, limit: i64) -> ApiResult<Vec<Job>> {
        let client = self.client().await?;
        let status = status.map(JobStatus::as_str);
        let rows = client
            .query(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs j WHERE $1::text IS NULL OR j.status = $1 ORDER BY j.id DESC \
                     LIMIT $2"
                ),
                &[&status, &limit],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| job_from_row(r).map_err(ApiError::internal))
            .collect()
    }

    /// The jobs running now (on any worker), oldest start first.
    pub async fn running_ids(&self) -> ApiResult<Vec<i64>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id FROM jobs WHERE status = 'running' ORDER BY started_at, id",
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Cancels job `id`: a queued job at once; a running one is asked to stop (its worker hears `ember_cancel`,
    /// or sees the flag at its next step or heartbeat). 409 when it already finished.
    pub async fn cancel(&self, id: i64) -> ApiResult<Job> {
        for _ in 0..3 {
            let client = self.client().await?;
            let canceled = client
                .execute(
                    "UPDATE jobs SET status = 'canceled', finished_at = now(), init_upload = NULL, init_mask = NULL
                     WHERE id = $1 AND status = 'queued'
                 RETURNING pg_notify('ember_events', 'job:' || id)",
                    &[&id],
                )
                .await
                .map_err(db_err)?;
            if canceled == 0 {
                let asked = client
                    .execute(
                        "UPDATE jobs SET cancel_requested = true
                         WHERE id = $1 AND status = 'running'
                 RETURNING pg_notify('ember_cancel', id::text)",
                        &[&id],
                    )
                    .await
                    .map_err(db_err)?;
                if asked == 0 {
                    drop(client);
                    let job = self
                        .get_job(id)
                        .await?
                        .ok_or_else(|| ApiError::not_found(format!("there is no job with id {id}")))?;
                    if job.status.is_finished() {
                        return Err(ApiError::conflict(format!(
                            "job {id} is already {}; only queued or running jobs can be canceled",
                            job.status.as_str()
                        )));
                    }
                    // Claimed or requeued between the two statements: try again.
                    continue;
                }
            }
            drop(client);
            return self
                .get_job(id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("there is no job with id {id}")));
        }
        Err(ApiError::conflict(format!(
            "job {id} changed state while being canceled; try again"
        )))
    }

    /// Jobs whose worker stopped answering (see [`REAP`]); the server runs it too, so that such jobs show their state
    /// when no worker is left.
    pub async fn reap(&self) -> ApiResult<u64> {
        let client = self.client().await?;
        client.execute(REAP, &[]).await.map_err(db_err)
    }

    /// The progress a worker last recorded for job `id`.
    pub async fn progress(&self, id: i64) -> ApiResult<Option<Progress>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT steps_done, steps_total, eta_s, preview FROM jobs WHERE id = $1 AND status = 'running'",
                &[&id],
            )
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| Progress {
            job_id: id,
            step: r.get::<_, i64>(0).max(0) as usize,
            total: r.get::<_, i64>(1).max(0) as usize,
            eta_s: r.get::<_, Option<f64>>(2).unwrap_or(0.0),
            preview: r.get::<_, Option<String>>(3).unwrap_or_default(),
        }))
    }

    pub async fn get_image(&self, id: i64) -> ApiResult<Option<Image>> {
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("SELECT {IMAGE_COLUMNS} FROM images WHERE id = $1"), &[&id])
            .await
            .map_err(db_err)?;
        row.map(|r| image_from_row(&r).map_err(ApiError::internal)).transpose()
    }

    pub async fn image_file(&self, id: i64) -> ApiResult<Option<String>> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT file FROM images WHERE id = $1", &[&id])
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn image_mask_file(&self, id: i64) -> ApiResult<Option<Option<String>>> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT mask_file FROM images WHERE id = $1", &[&id])
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// A page of the gallery, newest first; `search` (when not empty) keeps the images whose prompt contains it,
    /// ignoring case (as the SQLite queue's `db::list_images`).
    pub async fn list_images(&self, page: i64, per_page: i64, search: &str) -> ApiResult<(Vec<Image>, i64)> {
        // strpos, not LIKE: the words are matched as written, `%` and `_` included.
        const MATCHES: &str = "($1 = '' OR strpos(lower((params::jsonb) ->> 'prompt'), lower($1)) > 0)";
        let client = self.client().await?;
        let total: i64 = client
            .query_one(&format!("SELECT COUNT(*) FROM images WHERE {MATCHES}"), &[&search])
            .await
            .map_err(db_err)?
            .get(0);
        let offset = (page - 1).saturating_mul(per_page);
        let rows = client
            .query(
                &format!("SELECT {IMAGE_COLUMNS} FROM images WHERE {MATCHES} ORDER BY id DESC LIMIT $2 OFFSET $3"),
                &[&search, &per_page, &offset],
            )
            .await
            .map_err(db_err)?;
        let images = rows
            .iter()
            .map(|r| image_from_row(r).map_err(ApiError::internal))
            .collect::<ApiResult<_>>()?;
        Ok((images, total))
    }

    /// Removes the row (jobs that made it no longer point at it) and returns its file names.
    pub async fn delete_image(&self, id: i64) -> ApiResult<Option<(String, Option<String>)>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "WITH gone AS (DELETE FROM images WHERE id = $1 RETURNING id, file, mask_file),
                      unlinked AS (UPDATE jobs SET image_id = NULL, init_upload = NULL
                                   WHERE image_id IN (SELECT id FROM gone))
                 SELECT file, mask_file FROM gone",
                &[&id],
            )
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// The uploaded init image that image `id` was made from (as the SQLite queue's `db::image_init_upload`).
    pub async fn image_init_upload(&self, id: i64) -> ApiResult<Option<Option<crate::api::Upload>>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT jobs.init_upload_name, jobs.init_upload FROM images LEFT JOIN jobs ON jobs.id = images.job_id
                 WHERE images.id = $1",
                &[&id],
            )
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| {
            let (name, bytes): (Option<String>, Option<Vec<u8>>) = (r.get(0), r.get(1));
            bytes.map(|b| (name.unwrap_or_else(|| "upload".into()), b))
        }))
    }

    pub async fn workers(&self) -> ApiResult<Vec<WorkerInfo>> {
        let client = self.client().await?;
        let rows = client
            .query(
                concat!(
                    "SELECT name, host, models, loaded_model, running_job, ",
                    rfc3339!("heartbeat_at"),
                    ", heartbeat_at > now() - make_interval(secs => 3 * lease_secs) FROM workers ORDER BY name"
                ),
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok(rows
            .iter()
            .map(|r| WorkerInfo {
                name: r.get(0),
                host: r.get(1),
                models: r.get(2),
                loaded_model: r.get(3),
                running_job: r.get(4),
                heartbeat_at: r.get(5),
                alive: r.get(6),
            })
            .collect())
    }
}

/// Jobs whose worker stopped answering (lease run out): back to the queue for another worker; canceled when a
/// cancel was asked; failed, with the reason, after their most attempts (the submitting server's --max-attempts).
const REAP: &str = "
WITH expired AS (
    SELECT id, cancel_requested AS canceled, attempts >= max_attempts AS exhausted FROM jobs
    WHERE status = 'running' AND lease_until < now()
    FOR UPDATE SKIP LOCKED)
UPDATE jobs SET
    status = CASE WHEN canceled THEN 'canceled' WHEN exhausted THEN 'failed' ELSE 'queued' END,
    error = CASE WHEN exhausted AND NOT canceled THEN
        format('failed after %s attempts: each time its worker stopped answering (last: %s) before the job ended; '
               'submit it again, and check that worker''s log', attempts, worker) END,
    finished_at = CASE WHEN canceled OR exhausted THEN now() END,
    init_upload = CASE WHEN canceled OR exhausted THEN NULL ELSE init_upload END,
    init_mask = CASE WHEN canceled OR exhausted THEN NULL ELSE init_mask END,
    worker = CASE WHEN canceled OR exhausted THEN worker END,
    preview = NULL, eta_s = NULL, lease_until = NULL
FROM expired WHERE jobs.id = expired.id
RETURNING pg_notify('ember_events', 'job:' || jobs.id), pg_notify('ember_queue', jobs.model)";

/// An upload's name and bytes as two columns.
fn split(upload: &Option<(String, Vec<u8>)>) -> (Option<&str>, Option<&[u8]>) {
    upload
        .as_ref()
        .map(|(name, bytes)| (name.as_str(), bytes.as_slice()))
        .unzip()
}

/// A job a worker claimed: which attempt this is decides its image's name and guards every write about it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job: Job,
    pub attempt: i64,
    /// The job's uploaded init image and mask (name, bytes), read with the claim; None where the queue reads them
    /// when needed (SQLite).
    pub uploads: Option<Uploads>,
}

/// A job's uploads.
#[derive(Debug, Clone, Default)]
pub struct Uploads {
    pub init_image: Option<(String, Vec<u8>)>,
    pub mask: Option<(String, Vec<u8>)>,
}

/// How often a worker looks for jobs whose workers died before it claims (the front-ends look too).
const REAP_EVERY: Duration = Duration::from_secs(1);

/// What a worker's step write learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepAnswer {
    Go,
    /// A cancel was asked for the job.
    Cancel,
    /// The lease is gone (the job ran out of time and went to another worker, or was failed): stop, write nothing.
    Lost,
}

/// One worker's queue connection (the worker thread's own; its heartbeat has another).
pub struct WorkerQueue {
    client: Client,
    pub name: String,
    pub lease: Duration,
    last_reap: Option<std::time::Instant>,
}

impl WorkerQueue {
    pub async fn connect(url: &str, name: &str, lease: Duration) -> anyhow::Result<Self> {
        let client = connect(url).await?;
        check_schema(&client).await?;
        Ok(Self {
            client,
            name: name.to_string(),
            lease,
            last_reap: None,
        })
    }

    /// Registers the worker; refuses a name another live worker uses. Jobs a dead worker of this name left
    /// running lose their lease now rather than when it runs out (that process is gone).
    pub async fn register(&self, models: &[String], loaded: Option<&str>) -> anyhow::Result<()> {
        let host = hostname();
        let live = self
            .client
            .query_opt(
                "SELECT host, pid FROM workers WHERE name = $1
                   AND heartbeat_at > now() - make_interval(secs => 2 * lease_secs)",
                &[&self.name],
            )
            .await?;
        // On this machine, a registration whose process is gone is stale (a worker killed and started again).
        let gone = |other_host: &str, pid: i64| {
            other_host == host && cfg!(target_os = "linux") && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        };
        if let Some(row) = live.filter(|row| !gone(row.get(0), row.get(1))) {
            let (other_host, pid): (String, i64) = (row.get(0), row.get(1));
            anyhow::bail!(
                "a worker named '{}' is already running (on {other_host}, process {pid}); give this one another \
                 --name, or stop that one first",
                self.name
            );
        }
        self.client
            .execute(
                "INSERT INTO workers (name, host, pid, models, loaded_model, lease_secs)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (name) DO UPDATE SET host = $2, pid = $3, models = $4, loaded_model = $5,
                     lease_secs = $6, running_job = NULL, started_at = now(), heartbeat_at = now()",
                &[
                    &self.name,
                    &host,
                    &i64::from(std::process::id()),
                    &models,
                    &loaded,
                    &self.lease.as_secs_f64(),
                ],
            )
            .await?;
        self.client
            .execute(
                "UPDATE jobs SET lease_until = now() WHERE worker = $1 AND status = 'running'
                 RETURNING pg_notify('ember_queue', '')",
                &[&self.name],
            )
            .await?;
        Ok(())
    }

    /// A stopping worker's registration goes (so the name is free at once).
    pub async fn deregister(&self) -> anyhow::Result<()> {
        self.client
            .execute("DELETE FROM workers WHERE name = $1", &[&self.name])
            .await?;
        Ok(())
    }

    /// Puts back (or fails, or cancels) the jobs whose workers died, then claims the next job for one of `models`: the oldest
    /// for `loaded` first, unless `only_loaded` says to take jobs for the loaded model only.
    ///
    /// One round trip: the claimed row comes back with its uploads.
    pub async fn claim(
        &mut self,
        models: &[String],
        loaded: Option<&str>,
        only_loaded: bool,
    ) -> Result<Option<Claimed>, tokio_postgres::Error> {
        if self.last_reap.is_none_or(|at| at.elapsed() >= REAP_EVERY) {
            self.client.execute(REAP, &[]).await?;
            self.last_reap = Some(std::time::Instant::now());
        }
        let row = self
            .client
            .query_opt(
                &format!(
                    "WITH next AS (
                         SELECT id FROM jobs
                         WHERE model = ANY($1) AND status = 'queued' AND (NOT $3 OR model = $2)
                         ORDER BY coalesce(model = $2, false) DESC, id
                         LIMIT 1
                         FOR UPDATE SKIP LOCKED)
                     UPDATE jobs AS j SET status = 'running', attempts = j.attempts + 1, worker = $4,
                         started_at = now(), lease_until = now() + make_interval(secs => $5), steps_done = 0,
                         eta_s = NULL, preview = NULL
                     FROM next WHERE j.id = next.id
                     RETURNING {JOB_COLUMNS}, j.init_upload_name, j.init_upload, j.init_mask_name, j.init_mask,
                         pg_notify('ember_events', 'job:' || j.id)"
                ),
                &[&models, &loaded, &only_loaded, &self.name, &self.lease.as_secs_f64()],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let (id, attempt): (i64, i64) = (row.get(0), row.get(12));
        let upload = |name: usize, default: &str| {
            let bytes: Option<Vec<u8>> = row.get(name + 1);
            bytes.map(|b| (row.get::<_, Option<String>>(name).unwrap_or_else(|| default.into()), b))
        };
        let uploads = Uploads {
            init_image: upload(14, "upload"),
            mask: upload(16, "mask"),
        };
        match job_from_row(&row) {
            Ok(job) => Ok(Some(Claimed {
                job,
                attempt,
                uploads: Some(uploads),
            })),
            Err(message) => {
                // A row this Ember cannot read: fail it rather than claim it forever.
                self.finish(id, attempt, JobStatus::Failed, Some(&message)).await?;
                Ok(None)
            }
        }
    }

    /// Records a step (and renews the lease); the answer says whether to go on.
    pub async fn step(&self, claimed: &Claimed, progress: &Progress) -> Result<StepAnswer, tokio_postgres::Error> {
        let row = self
            .client
            .query_opt(
                "UPDATE jobs SET steps_done = $4, steps_total = $5, eta_s = $6, preview = $7,
                     lease_until = now() + make_interval(secs => $8)
                 WHERE id = $1 AND worker = $2 AND attempts = $3 AND status = 'running'
                 RETURNING cancel_requested, pg_notify('ember_events', 'progress:' || id)",
                &[
                    &claimed.job.id,
                    &self.name,
                    &claimed.attempt,
                    &(progress.step as i64),
                    &(progress.total as i64),
                    &progress.eta_s,
                    &progress.preview,
                    &self.lease.as_secs_f64(),
                ],
            )
            .await?;
        Ok(match row {
            None => StepAnswer::Lost,
            Some(row) if row.get::<_, bool>(0) => StepAnswer::Cancel,
            Some(_) => StepAnswer::Go,
        })
    }

    /// The engine's count of steps, once the job started.
    pub async fn set_steps_total(&self, claimed: &Claimed, total: usize) -> Result<(), tokio_postgres::Error> {
        self.client
            .execute(
                "UPDATE jobs SET steps_total = $4
                 WHERE id = $1 AND worker = $2 AND attempts = $3 AND status = 'running'
                 RETURNING pg_notify('ember_events', 'job:' || id)",
                &[&claimed.job.id, &self.name, &claimed.attempt, &(total as i64)],
            )
            .await?;
        Ok(())
    }

    /// running → failed or canceled, if this worker still holds the job.
    pub async fn finish(
        &self,
        id: i64,
        attempt: i64,
        status: JobStatus,
        error: Option<&str>,
    ) -> Result<(), tokio_postgres::Error> {
        self.client
            .execute(
                "UPDATE jobs SET status = $4, error = $5, finished_at = now(), init_upload = NULL, init_mask = NULL,
                     preview = NULL, lease_until = NULL
                 WHERE id = $1 AND worker = $2 AND attempts = $3 AND status = 'running'
                 RETURNING pg_notify('ember_events', 'job:' || id)",
                &[&id, &self.name, &attempt, &status.as_str(), &error],
            )
            .await?;
        Ok(())
    }

    /// A stopping worker hands its job back: queued again, this attempt not counted (it did not fail).
    pub async fn release(&self, id: i64, attempt: i64) -> Result<(), tokio_postgres::Error> {
        self.client
            .execute(
                "UPDATE jobs SET status = 'queued', attempts = attempts - 1, worker = NULL, lease_until = NULL,
                     started_at = NULL, steps_done = 0, preview = NULL, eta_s = NULL
                 WHERE id = $1 AND worker = $2 AND attempts = $3 AND status = 'running'
                 RETURNING pg_notify('ember_events', 'job:' || id), pg_notify('ember_queue', model)",
                &[&id, &self.name, &attempt],
            )
            .await?;
        Ok(())
    }

    /// Records the image and marks the job done in one transaction, if this worker still holds the job; None
    /// when it does not (the caller removes the files it wrote).
    pub async fn store_image(
        &self,
        claimed: &Claimed,
        image: &NewImage<'_>,
        overhead_ms: f64,
    ) -> Result<Option<Image>, tokio_postgres::Error> {
        let params = serde_json::to_string(image.params).unwrap_or_else(|_| "{}".into());
        // One statement, so one round trip: the job's row is locked (held by this worker and attempt, or nothing
        // happens), the image inserted, the job marked done and both announced.
        let row = self
            .client
            .query_opt(
                &format!(
                    "WITH held AS (
                         SELECT id FROM jobs WHERE id = $1 AND worker = $2 AND attempts = $3 AND status = 'running'
                         FOR UPDATE),
                     image AS (
                         INSERT INTO images (job_id, file, seed, width, height, params, dream, mask_file)
                         SELECT id, $4, $5, $6, $7, $8, $9, $10 FROM held
                         RETURNING {IMAGE_COLUMNS}),
                     done AS (
                         UPDATE jobs SET status = 'done', image_id = image.id, finished_at = now(),
                             init_mask = NULL, preview = NULL, lease_until = NULL, overhead_ms = $11
                         FROM image WHERE jobs.id = image.job_id
                         RETURNING pg_notify('ember_events', 'job:' || jobs.id),
                             pg_notify('ember_events', 'image:' || jobs.id || ':' || image.id))
                     SELECT * FROM image"
                ),
                &[
                    &claimed.job.id,
                    &self.name,
                    &claimed.attempt,
                    &image.file,
                    &i64::from(image.seed),
                    &i64::from(image.width),
                    &i64::from(image.height),
                    &params,
                    &image.dream,
                    &image.mask_file,
                    &overhead_ms,
                ],
            )
            .await?;
        Ok(row.and_then(|row| image_from_row(&row).ok()))
    }

    pub async fn image_file(&self, id: i64) -> Result<Option<String>, tokio_postgres::Error> {
        let row = self
            .client
            .query_opt("SELECT file FROM images WHERE id = $1", &[&id])
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn image_mask_file(&self, id: i64) -> Result<Option<Option<String>>, tokio_postgres::Error> {
        let row = self
            .client
            .query_opt("SELECT mask_file FROM images WHERE id = $1", &[&id])
            .await?;
        Ok(row.map(|r| r.get(0)))
    }
}

/// The heartbeat's statements, on its own connection: renews the worker's registration and the running job's
/// lease. Returns what it learned about the job (None without one).
pub async fn heartbeat(
    client: &Client,
    name: &str,
    lease: Duration,
    loaded: Option<&str>,
    running: Option<(i64, i64)>,
) -> Result<Option<StepAnswer>, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE workers SET heartbeat_at = now(), loaded_model = $2, running_job = $3 WHERE name = $1",
            &[&name, &loaded, &running.map(|(id, _)| id)],
        )
        .await?;
    let Some((id, attempt)) = running else {
        return Ok(None);
    };
    let row = client
        .query_opt(
            "UPDATE jobs SET lease_until = now() + make_interval(secs => $4)
             WHERE id = $1 AND worker = $2 AND attempts = $3 AND status = 'running'
             RETURNING cancel_requested",
            &[&id, &name, &attempt, &lease.as_secs_f64()],
        )
        .await?;
    Ok(Some(match row {
        None => StepAnswer::Lost,
        Some(row) if row.get::<_, bool>(0) => StepAnswer::Cancel,
        Some(_) => StepAnswer::Go,
    }))
}

/// This machine's name, for the workers table.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
