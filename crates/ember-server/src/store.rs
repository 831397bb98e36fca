//! The job queue and gallery as the HTTP handlers see them, whichever database holds them: the embedded SQLite
//! file (`db.rs`, with its in-process worker) or PostgreSQL (`pg.rs`, with workers anywhere).

use crate::db::{self, NewJob};
use crate::error::{ApiError, ApiResult};
use crate::events::Events;
use crate::pg::{Pg, WorkerInfo};
use crate::types::{Image, Job, JobStatus};
use crate::worker::Queue;
use std::sync::Arc;

#[derive(Clone)]
pub enum JobStore {
    /// SQLite: status changes and their events are ordered by `Queue::transition`; the API publishes its own
    /// changes, the in-process worker its.
    Sqlite { db: db::Db, queue: Arc<Queue> },
    /// PostgreSQL: every change is announced by NOTIFY in its own transaction and published by the event relay.
    Postgres { pg: Arc<Pg>, max_attempts: i64 },
}

impl JobStore {
    /// Queues a job for `model` (its name) and wakes the workers.
    pub async fn insert_job(&self, new_job: NewJob, model: &str, events: &Events) -> ApiResult<Job> {
        match self {
            Self::Sqlite { db, queue } => {
                let (queue_for_call, events) = (queue.clone(), events.clone());
                let job = db
                    .call(move |conn| {
                        queue_for_call.transition(|| {
                            let job = db::insert_job(conn, &new_job)?;
                            events.job(&job);
                            Ok(job)
                        })
                    })
                    .await?;
                queue.notify();
                Ok(job)
            }
            Self::Postgres { pg, max_attempts } => pg.insert_job(&new_job, model, *max_attempts).await,
        }
    }

    pub async fn get_job(&self, id: i64) -> ApiResult<Option<Job>> {
        match self {
            Self::Sqlite { db, .. } => db.call(move |conn| Ok(db::get_job(conn, id)?)).await,
            Self::Postgres { pg, .. } => pg.get_job(id).await,
        }
    }

    /// Jobs `ids`, in order; an error when one is gone.
    pub async fn get_jobs(&self, ids: Vec<i64>) -> ApiResult<Vec<Job>> {
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            let job = self.get_job(id).await?;
            jobs.push(job.ok_or_else(|| ApiError::internal(format!("job {id} vanished from the database")))?);
        }
        Ok(jobs)
    }

    pub async fn list_jobs(&self, status: Option<JobStatus>, limit: i64) -> ApiResult<Vec<Job>> {
        match self {
            Self::Sqlite { db, .. } => db.call(move |conn| Ok(db::list_jobs(conn, status, limit)?)).await,
            Self::Postgres { pg, .. } => pg.list_jobs(status, limit).await,
        }
    }

    /// The job running now: the in-process worker's, or the longest-running one of all workers.
    pub async fn running_id(&self) -> Option<i64> {
        match self {
            Self::Sqlite { queue, .. } => queue.running_id(),
            Self::Postgres { pg, .. } => pg.running_ids().await.ok().and_then(|ids| ids.first().copied()),
        }
    }

    /// Cancels job `id`: a queued job at once, a running one within a step; 409 when it already finished.
    pub async fn cancel(&self, id: i64, events: &Events) -> ApiResult<Job> {
        match self {
            Self::Sqlite { db, queue } => {
                let (queue, events) = (queue.clone(), events.clone());
                db.call(move |conn| cancel_sqlite(conn, &queue, &events, id)).await
            }
            Self::Postgres { pg, .. } => pg.cancel(id).await,
        }
    }

    pub async fn get_image(&self, id: i64) -> ApiResult<Option<Image>> {
        match self {
            Self::Sqlite { db, .. } => db.call(move |conn| Ok(db::get_image(conn, id)?)).await,
            Self::Postgres { pg, .. } => pg.get_image(id).await,
        }
    }

    /// The file name (in the image store) of an image.
    pub async fn image_file(&self, id: i64) -> ApiResult<Option<String>> {
        match self {
            Self::Sqlite { db, .. } => db.call(move |conn| Ok(db::image_file(conn, id)?)).await,
            Self::Postgres { pg, .. } => pg.image_file(id).await,
        }
    }

    /// The mask file of an image: None when there is no such image, Some(None) when it has no mask.
    pub async fn image_mask_file(&self, id: i64) -> ApiResult<Option<Option<String>>> {
        match self {
            Self::Sqlite { db, .. } => db.call(move |conn| Ok(db::image_mask_file(conn, id)?)).await,
            Self::Postgres { pg, .. } => pg.image_mask_file(id).await,
        }
    }

    /// The uploaded init image image `id` was made from: None without such an image, Some(None) when it had none.
    pub async fn image_init_upload(&self, id: i64) -> ApiResult<Option<Option<crate::api::Upload>>> {
        match self {
            Self::Sqlite { db, .. } => db.call(move |conn| Ok(db::image_init_upload(conn, id)?)).await,
            Self::Postgres { pg, .. } => pg.image_init_upload(id).await,
        }
    }

    /// A page of the gallery; `search` keeps the images whose prompt contains it ("" = all).
    pub async fn list_images(&self, page: i64, per_page: i64, search: String) -> ApiResult<(Vec<Image>, i64)> {
        match self {
            Self::Sqlite { db, .. } => {
                db.call(move |conn| Ok(db::list_images(conn, page, per_page, &search)?))
                    .await
            }
            Self::Postgres { pg, .. } => pg.list_images(page, per_page, &search).await,
        }
    }

    /// Removes the row and returns its file names (the image's, and its mask's if any).
    pub async fn delete_image(&self, id: i64) -> ApiResult<Option<(String, Option<String>)>> {
        match self {
            Self::Sqlite { db, .. } => db.call(move |conn| Ok(db::delete_image(conn, id)?)).await,
            Self::Postgres { pg, .. } => pg.delete_image(id).await,
        }
    }

    /// The registered workers (PostgreSQL); the SQLite queue has its one in-process worker and lists none.
    pub async fn workers(&self) -> ApiResult<Vec<WorkerInfo>> {
        match self {
            Self::Sqlite { .. } => Ok(Vec::new()),
            Self::Postgres { pg, .. } => pg.workers().await,
        }
    }
}

/// The SQLite cancel: the worker may claim or finish the job meanwhile; each branch rechecks under the new status.
fn cancel_sqlite(conn: &mut rusqlite::Connection, queue: &Queue, events: &Events, id: i64) -> ApiResult<Job> {
    for _ in 0..3 {
        let job = db::get_job(conn, id)?.ok_or_else(|| ApiError::not_found(format!("there is no job with id {id}")))?;
        match job.status {
            JobStatus::Queued => {
                let canceled = queue.transition(|| -> ApiResult<Option<Job>> {
                    if !db::cancel_queued(conn, id)? {
                        return Ok(None);
                    }
                    let job = db::get_job(conn, id)?.unwrap_or(job);
                    events.job(&job);
                    Ok(Some(job))
                })?;
                match canceled {
                    Some(job) => return Ok(job),
                    // The worker claimed it first: cancel it as a running job.
                    None => continue,
                }
            }
            JobStatus::Running if queue.cancel_running(id) => return Ok(job),
            status if status.is_finished() => {
                return Err(ApiError::conflict(format!(
                    "job {id} is already {}; only queued or running jobs can be canceled",
                    status.as_str()
                )))
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    Err(ApiError::conflict(format!(
        "job {id} changed state while being canceled; try again"
    )))
}
