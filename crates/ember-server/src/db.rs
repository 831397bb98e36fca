//! The job queue and the gallery in SQLite (`<data-dir>/ember.sqlite`, WAL mode).
//!
//! The schema is migrated forward with `PRAGMA user_version`; a database from a newer Ember is refused rather than
//! guessed at. Times are written by SQLite itself as RFC 3339 UTC with milliseconds, so they sort as text.
//! Status changes are single conditional UPDATEs (`… WHERE status = 'queued'`), which is what makes a cancel racing
//! the worker's claim safe: exactly one of them wins.

use crate::error::{ApiError, ApiResult};
use crate::types::{Image, Job, JobStatus, Mode, Params};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// SQL for "now" as RFC 3339 UTC, e.g. `2026-11-25T19:16:30.123Z`.
pub const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// What a job that was running when the server died gets as its error.
pub const INTERRUPTED: &str = "interrupted: the server stopped while this job was running; submit it again";

/// Schema versions, in order; `user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'canceled')),
    params           TEXT NOT NULL,
    mode             TEXT NOT NULL CHECK (mode IN ('txt2img', 'img2img')),
    steps_total      INTEGER NOT NULL,
    steps_done       INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    error            TEXT,
    image_id         INTEGER,
    -- An uploaded init image, kept until the job finishes so queued img2img jobs survive a restart.
    init_upload      BLOB,
    init_upload_name TEXT
);
CREATE INDEX jobs_by_status ON jobs (status, id);
CREATE TABLE images (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     INTEGER NOT NULL,
    file       TEXT NOT NULL UNIQUE,
    seed       INTEGER NOT NULL,
    width      INTEGER NOT NULL,
    height     INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    params     TEXT NOT NULL,
    dream      TEXT NOT NULL
);
",
    "
-- Inpainting: an uploaded mask, kept until the job finishes like init_upload (its name stays).
ALTER TABLE jobs ADD COLUMN init_mask BLOB;
ALTER TABLE jobs ADD COLUMN init_mask_name TEXT;
-- The mask an image was painted with: a PNG next to it in the images folder.
ALTER TABLE images ADD COLUMN mask_file TEXT;
",
];

/// Opens (creating if needed) and migrates the database.
pub fn open(path: &Path) -> anyhow::Result<Connection> {
    let mut conn =
        Connection::open(path).map_err(|e| anyhow::anyhow!("cannot open the database {}: {e}", path.display()))?;
    // The worker and the API write from different connections; waiting beats failing with SQLITE_BUSY.
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // With WAL, NORMAL is durable across application crashes (only an OS crash may lose the last commits).
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    migrate(&mut conn).map_err(|e| anyhow::anyhow!("cannot use the database {}: {e}", path.display()))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        anyhow::bail!(
            "it has schema version {version}, newer than this Ember's {}; upgrade Ember or use another --data-dir",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Startup: a job still `running` belongs to a process that died; it cannot be resumed.
pub fn fail_interrupted(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        &format!(
            "UPDATE jobs SET status = 'failed', error = ?1, finished_at = {NOW}, init_upload = NULL, init_mask = NULL
             WHERE status = 'running'"
        ),
        params![INTERRUPTED],
    )
}

/// The API's connection, used from the async handlers through `spawn_blocking`.
#[derive(Clone)]
pub struct Db(Arc<Mutex<Connection>>);

impl Db {
    pub fn new(conn: Connection) -> Self {
        Self(Arc::new(Mutex::new(conn)))
    }

    /// Runs `f` on a blocking thread: SQLite calls may wait on the worker's write lock.
    pub async fn call<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> ApiResult<T> + Send + 'static,
    {
        let conn = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| ApiError::internal("the database connection was poisoned by an earlier panic"))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| ApiError::internal(format!("database task failed: {e}")))?
    }
}

const JOB_COLUMNS: &str = "id, status, params, mode, steps_total, steps_done, created_at, started_at, finished_at, \
     error, image_id, (SELECT mask_file IS NOT NULL FROM images WHERE images.id = jobs.image_id), \
     started_at IS NOT NULL";

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let status: String = row.get(1)?;
    let params: String = row.get(2)?;
    let mode: String = row.get(3)?;
    Ok(Job {
        id: row.get(0)?,
        status: JobStatus::parse(&status).ok_or_else(|| bad_column(1, format!("unknown job status '{status}'")))?,
        params: serde_json::from_str(&params).map_err(|e| bad_column(2, e.to_string()))?,
        mode: if mode == "img2img" {
            Mode::Img2img
        } else {
            Mode::Txt2img
        },
        steps_total: row.get(4)?,
        steps_done: row.get(5)?,
        created_at: row.get(6)?,
        started_at: row.get(7)?,
        finished_at: row.get(8)?,
        error: row.get(9)?,
        image_id: row.get(10)?,
        mask_url: match (row.get::<_, Option<i64>>(10)?, row.get::<_, Option<bool>>(11)?) {
            (Some(image_id), Some(true)) => Some(format!("/api/images/{image_id}/mask")),
            _ => None,
        },
        // One in-process worker: a job starts at most once (one found running at startup is failed, not retried).
        attempts: i64::from(row.get::<_, bool>(12)?),
        worker: None,
    })
}

fn bad_column(index: usize, message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, message.into())
}

/// A new queued job, with its uploaded init image and mask if any.
pub struct NewJob {
    pub params: Params,
    pub mode: Mode,
    pub steps_total: usize,
    pub upload: Option<(String, Vec<u8>)>,
    pub mask: Option<(String, Vec<u8>)>,
}

pub fn insert_job(conn: &Connection, job: &NewJob) -> ApiResult<Job> {
    let params = serde_json::to_string(&job.params).map_err(|e| ApiError::internal(e.to_string()))?;
    let ((name, bytes), (mask_name, mask)) = (split(&job.upload), split(&job.mask));
    conn.execute(
        &format!(
            "INSERT INTO jobs (status, params, mode, steps_total, created_at, init_upload_name, init_upload,
                               init_mask_name, init_mask)
             VALUES ('queued', ?1, ?2, ?3, {NOW}, ?4, ?5, ?6, ?7)"
        ),
        params![
            params,
            job.mode.as_str(),
            job.steps_total as i64,
            name,
            bytes,
            mask_name,
            mask
        ],
    )?;
    get_job(conn, conn.last_insert_rowid())?.ok_or_else(|| ApiError::internal("the new job vanished"))
}

/// An upload's name and bytes as two columns.
fn split(upload: &Option<(String, Vec<u8>)>) -> (Option<&str>, Option<&[u8]>) {
    upload
        .as_ref()
        .map(|(name, bytes)| (name.as_str(), bytes.as_slice()))
        .unzip()
}

pub fn get_job(conn: &Connection, id: i64) -> rusqlite::Result<Option<Job>> {
    conn.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
        params![id],
        job_from_row,
    )
    .optional()
}

/// Newest first.
pub fn list_jobs(conn: &Connection, status: Option<JobStatus>, limit: i64) -> rusqlite::Result<Vec<Job>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE ?1 IS NULL OR status = ?1 ORDER BY id DESC LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![status.map(JobStatus::as_str), limit], job_from_row)?;
    rows.collect()
}

/// The oldest queued job: jobs run in submission order.
pub fn next_queued(conn: &Connection) -> rusqlite::Result<Option<Job>> {
    conn.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1"),
        [],
        job_from_row,
    )
    .optional()
}

/// queued → running; false when someone else (a cancel) changed the job first.
pub fn claim(conn: &Connection, id: i64) -> rusqlite::Result<bool> {
    let n = conn.execute(
        &format!("UPDATE jobs SET status = 'running', started_at = {NOW} WHERE id = ?1 AND status = 'queued'"),
        params![id],
    )?;
    Ok(n == 1)
}

/// queued → canceled; false when the job was no longer queued.
pub fn cancel_queued(conn: &Connection, id: i64) -> rusqlite::Result<bool> {
    let n = conn.execute(
        &format!(
            "UPDATE jobs SET status = 'canceled', finished_at = {NOW}, init_upload = NULL, init_mask = NULL
             WHERE id = ?1 AND status = 'queued'"
        ),
        params![id],
    )?;
    Ok(n == 1)
}

pub fn set_steps_done(conn: &Connection, id: i64, steps: usize) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE jobs SET steps_done = ?2 WHERE id = ?1",
        params![id, steps as i64],
    )?;
    Ok(())
}

/// The engine's count of the steps a job runs, once it started (a hires-fix run has two passes).
pub fn set_steps_total(conn: &Connection, id: i64, steps: usize) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE jobs SET steps_total = ?2 WHERE id = ?1",
        params![id, steps as i64],
    )?;
    Ok(())
}

/// running → failed or canceled.
pub fn finish(conn: &Connection, id: i64, status: JobStatus, error: Option<&str>) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "UPDATE jobs SET status = ?2, error = ?3, finished_at = {NOW}, init_upload = NULL, init_mask = NULL
             WHERE id = ?1 AND status = 'running'"
        ),
        params![id, status.as_str(), error],
    )?;
    Ok(())
}

/// The uploaded init image of a job: (name, bytes).
pub fn job_upload(conn: &Connection, id: i64) -> rusqlite::Result<Option<(String, Vec<u8>)>> {
    let row: Option<(Option<String>, Option<Vec<u8>>)> = conn
        .query_row(
            "SELECT init_upload_name, init_upload FROM jobs WHERE id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((name, Some(bytes))) => Some((name.unwrap_or_else(|| "upload".into()), bytes)),
        _ => None,
    })
}

/// The uploaded inpainting mask of a job: (name, bytes).
pub fn job_mask(conn: &Connection, id: i64) -> rusqlite::Result<Option<(String, Vec<u8>)>> {
    let row: Option<(Option<String>, Option<Vec<u8>>)> = conn
        .query_row(
            "SELECT init_mask_name, init_mask FROM jobs WHERE id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((name, Some(bytes))) => Some((name.unwrap_or_else(|| "mask".into()), bytes)),
        _ => None,
    })
}

/// A written image file, to be recorded in the gallery.
pub struct NewImage<'a> {
    pub job_id: i64,
    pub file: &'a str,
    pub seed: u32,
    pub width: u32,
    pub height: u32,
    pub params: &'a Params,
    pub dream: &'a str,
    /// The mask file written next to it (inpainting).
    pub mask_file: Option<&'a str>,
}

/// Records the image and marks its job done, in one transaction.
pub fn insert_image_and_finish(conn: &mut Connection, image: &NewImage<'_>) -> rusqlite::Result<i64> {
    let params = serde_json::to_string(image.params).map_err(|e| bad_column(7, e.to_string()))?;
    let tx = conn.transaction()?;
    tx.execute(
        &format!(
            "INSERT INTO images (job_id, file, seed, width, height, created_at, params, dream, mask_file)
             VALUES (?1, ?2, ?3, ?4, ?5, {NOW}, ?6, ?7, ?8)"
        ),
        params![
            image.job_id,
            image.file,
            image.seed,
            image.width,
            image.height,
            params,
            image.dream,
            image.mask_file
        ],
    )?;
    let image_id = tx.last_insert_rowid();
    tx.execute(
        &format!(
            // The uploaded init image stays with the done job (`GET /api/images/{id}/init`: "use all" and
            // "Variations" reproduce an img2img image); the mask is the image's own file by now.
            "UPDATE jobs SET status = 'done', image_id = ?2, finished_at = {NOW}, init_mask = NULL
             WHERE id = ?1"
        ),
        params![image.job_id, image_id],
    )?;
    tx.commit()?;
    Ok(image_id)
}

const IMAGE_COLUMNS: &str = "id, job_id, seed, width, height, created_at, params, dream, mask_file IS NOT NULL";

fn image_from_row(row: &Row<'_>) -> rusqlite::Result<Image> {
    let id: i64 = row.get(0)?;
    let params: String = row.get(6)?;
    Ok(Image {
        id,
        job_id: row.get(1)?,
        url: format!("/api/images/{id}/file"),
        seed: row.get(2)?,
        width: row.get(3)?,
        height: row.get(4)?,
        created_at: row.get(5)?,
        params: serde_json::from_str(&params).map_err(|e| bad_column(6, e.to_string()))?,
        dream: row.get(7)?,
        mask_url: row.get::<_, bool>(8)?.then(|| format!("/api/images/{id}/mask")),
    })
}

pub fn get_image(conn: &Connection, id: i64) -> rusqlite::Result<Option<Image>> {
    conn.query_row(
        &format!("SELECT {IMAGE_COLUMNS} FROM images WHERE id = ?1"),
        params![id],
        image_from_row,
    )
    .optional()
}

/// The file name (inside the images folder) of an image.
pub fn image_file(conn: &Connection, id: i64) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT file FROM images WHERE id = ?1", params![id], |r| r.get(0))
        .optional()
}

/// The mask file (inside the images folder) of an image: None when there is no such image, Some(None) when it has
/// no mask.
pub fn image_mask_file(conn: &Connection, id: i64) -> rusqlite::Result<Option<Option<String>>> {
    conn.query_row("SELECT mask_file FROM images WHERE id = ?1", params![id], |r| r.get(0))
        .optional()
}

/// One page, newest first, and the total count.
/// A page of the gallery, newest first; `search` (when not empty) keeps the images whose prompt contains it,
/// ignoring ASCII case. Returns the page and the number of images that match.
pub fn list_images(conn: &Connection, page: i64, per_page: i64, search: &str) -> rusqlite::Result<(Vec<Image>, i64)> {
    // instr, not LIKE: the words are matched as written, `%` and `_` included.
    const MATCHES: &str = "(?1 = '' OR instr(lower(json_extract(params, '$.prompt')), lower(?1)) > 0)";
    let total = conn.query_row(
        &format!("SELECT COUNT(*) FROM images WHERE {MATCHES}"),
        params![search],
        |r| r.get(0),
    )?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {IMAGE_COLUMNS} FROM images WHERE {MATCHES} ORDER BY id DESC LIMIT ?2 OFFSET ?3"
    ))?;
    let offset = (page - 1).saturating_mul(per_page);
    let images = stmt
        .query_map(params![search, per_page, offset], image_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok((images, total))
}

/// Removes the row and returns its file names (the image's, and its mask's if any); jobs that made it no longer
/// point at it.
pub fn delete_image(conn: &mut Connection, id: i64) -> rusqlite::Result<Option<(String, Option<String>)>> {
    let tx = conn.transaction()?;
    let file: Option<(String, Option<String>)> = tx
        .query_row("SELECT file, mask_file FROM images WHERE id = ?1", params![id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if file.is_some() {
        tx.execute("DELETE FROM images WHERE id = ?1", params![id])?;
        tx.execute(
            "UPDATE jobs SET image_id = NULL, init_upload = NULL WHERE image_id = ?1",
            params![id],
        )?;
    }
    tx.commit()?;
    Ok(file)
}

/// The uploaded init image that image `id` was made from: None when there is no such image, Some(None) when it
/// had none (txt2img, a gallery init image, or made before Ember kept uploads with done jobs).
pub fn image_init_upload(conn: &Connection, id: i64) -> rusqlite::Result<Option<Option<crate::api::Upload>>> {
    conn.query_row(
        "SELECT jobs.init_upload_name, jobs.init_upload FROM images LEFT JOIN jobs ON jobs.id = images.job_id
         WHERE images.id = ?1",
        params![id],
        |r| {
            let (name, bytes): (Option<String>, Option<Vec<u8>>) = (r.get(0)?, r.get(1)?);
            Ok(bytes.map(|b| (name.unwrap_or_else(|| "upload".into()), b)))
        },
    )
    .optional()
}
