//! Requests that block until their images are done (AUTOMATIC1111's `txt2img`/`img2img`, OpenAI's `images/*`), run
//! through Ember's own queue: each image is an ordinary job (checked as `POST /api/jobs` checks it, stored in the
//! database, run by the one worker), so it shows in the page's progress and gallery and can be canceled there.
//!
//! The request submits its jobs, then waits on the event broadcast (a `job` event wakes it to re-read its jobs'
//! rows; a timer does too, so a missed event only delays it). A client that goes away before its images are done
//! cancels its unfinished jobs (the handler's future is dropped: [`Batch`]'s drop does it); a server shutdown ends the
//! wait with a 503.

use crate::api::{self, Upload};
use crate::error::{ApiError, ApiResult};
use crate::models::Served;
use crate::types::{Image, Job, JobStatus, Params};
use crate::AppState;
use ember::image::png_meta::read_png_text_from;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Which compatibility API a blocking request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    A1111,
    OpenAi,
}

/// The blocking requests in flight: their jobs, by request, so that A1111's `interrupt` can stop the rest of the
/// request whose job is running.
#[derive(Default)]
pub struct Requests {
    next: AtomicU64,
    open: Mutex<HashMap<u64, (Source, Vec<i64>)>>,
}

impl Requests {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Source, Vec<i64>)>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The jobs of the `source` request that job `id` belongs to (`id` included); empty when it is none's.
    pub fn siblings(&self, source: Source, id: i64) -> Vec<i64> {
        self.lock()
            .values()
            .find(|(s, ids)| *s == source && ids.contains(&id))
            .map(|(_, ids)| ids.clone())
            .unwrap_or_default()
    }
}

/// One job to submit: its model, its resolved parameters and its uploads (init image, mask).
pub struct Submission<'a> {
    pub model: &'a Served,
    pub params: Params,
    pub uploads: (Option<Upload>, Option<Upload>),
}

/// A job of the request, as it ended.
pub struct Finished {
    pub job: Job,
    /// Its image, when it is done.
    pub image: Option<Done>,
}

/// A done job's image: the gallery row, the PNG's bytes (with Ember's metadata) and its A1111 `parameters` text.
pub struct Done {
    pub image: Image,
    pub png: Vec<u8>,
    pub parameters: String,
}

/// The request's jobs while it waits: registered in [`Requests`], and canceled if the request is dropped before they
/// finish (the client went away).
struct Batch {
    state: AppState,
    key: u64,
    ids: Vec<i64>,
    armed: bool,
}

impl Batch {
    fn new(state: &AppState, source: Source) -> Self {
        let key = state.requests.next.fetch_add(1, Ordering::Relaxed);
        state.requests.lock().insert(key, (source, Vec::new()));
        Self {
            state: state.clone(),
            key,
            ids: Vec::new(),
            armed: true,
        }
    }

    fn push(&mut self, id: i64) {
        self.ids.push(id);
        if let Some((_, ids)) = self.state.requests.lock().get_mut(&self.key) {
            ids.push(id);
        }
    }

    /// Cancels the jobs that have not finished, in the background.
    fn cancel_rest(&mut self) {
        let (state, ids) = (self.state.clone(), std::mem::take(&mut self.ids));
        if ids.is_empty() {
            return;
        }
        let cancel = async move {
            for id in ids {
                // A finished job answers 409: nothing to do.
                let _ = api::cancel(&state, id).await;
            }
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(cancel);
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.state.requests.lock().remove(&self.key);
        if self.armed {
            self.cancel_rest();
        }
    }
}

/// Submits `jobs` (in order; the first refused one cancels those already queued and is the answer), then waits for
/// all of them to end. Returns them in order, with the images of the done ones.
pub async fn run(state: &AppState, source: Source, jobs: Vec<Submission<'_>>) -> ApiResult<Vec<Finished>> {
    // Subscribed before the first job is queued: no event of ours can be missed.
    let mut events = state.events.subscribe();
    let mut closing = state.events.closing();
    let mut batch = Batch::new(state, source);
    for submission in jobs {
        let job = api::submit(state, submission.model, submission.params, submission.uploads).await?;
        batch.push(job.id);
    }
    let ids = batch.ids.clone();
    let jobs = loop {
        let jobs = state.db.get_jobs(ids.clone()).await?;
        if jobs.iter().all(|j| j.status.is_finished()) {
            break jobs;
        }
        if *closing.borrow() {
            return Err(ApiError::unavailable(
                "the server is stopping; queued images run after the next start and appear in its gallery",
            ));
        }
        tokio::select! {
            _ = next_job_event(&mut events) => {}
            _ = closing.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    };
    batch.armed = false;
    let mut finished = Vec::with_capacity(jobs.len());
    for job in jobs {
        let image = match (job.status, job.image_id) {
            (JobStatus::Done, Some(id)) => Some(read_done(state, id).await?),
            _ => None,
        };
        finished.push(Finished { job, image });
    }
    Ok(finished)
}

/// Waits for the next `job` event (any job's); returns at once when events were skipped, and never when the channel
/// is closed (the caller's timer and shutdown watch end the wait then).
async fn next_job_event(events: &mut tokio::sync::broadcast::Receiver<crate::events::ServerEvent>) {
    loop {
        match events.recv().await {
            Ok(event) if event.name == "job" => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// Gallery image `id`: its row, its PNG and the PNG's `parameters` text.
async fn read_done(state: &AppState, id: i64) -> ApiResult<Done> {
    let image = state.db.get_image(id).await?.ok_or_else(|| {
        ApiError::conflict(format!(
            "image {id} was deleted from the gallery before it could be sent"
        ))
    })?;
    let file = state
        .db
        .image_file(id)
        .await?
        .ok_or_else(|| ApiError::conflict(format!("image {id} was deleted before it could be sent")))?;
    if file.contains(['/', '\\']) || file.starts_with('.') {
        return Err(ApiError::internal(format!(
            "image {id} has an unsafe file name in the database"
        )));
    }
    let png = state
        .images
        .get(&file)
        .await
        .map_err(|e| ApiError::conflict(format!("cannot read the file of image {id}: {e}")))?;
    let parameters = png_parameters(&png).unwrap_or_default();
    Ok(Done { image, png, parameters })
}

/// The text chunks of a PNG, as (keyword, text); None when it is not a readable PNG.
pub fn png_text(png: &[u8]) -> Option<Vec<(String, String)>> {
    read_png_text_from(std::io::Cursor::new(png), std::path::Path::new("image")).ok()
}

/// A PNG's A1111 `parameters` text.
pub fn png_parameters(png: &[u8]) -> Option<String> {
    png_text(png)?
        .into_iter()
        .find(|(k, _)| k == "parameters")
        .map(|(_, v)| v)
}

/// Decodes base64 (standard or URL-safe alphabet, padded or not, whitespace ignored), after an optional
/// `data:…;base64,` prefix. `field` names the value in the error.
pub fn decode_base64(text: &str, field: &str) -> ApiResult<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use base64::Engine;
    let body = match text.strip_prefix("data:") {
        Some(rest) => rest
            .split_once(',')
            .map(|(_, b)| b)
            .ok_or_else(|| ApiError::bad_request(Some(field), "a data: URL without a ',' before its base64 data"))?,
        None => text,
    };
    let clean: String = body
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect::<String>()
        .trim_end_matches('=')
        .to_string();
    if clean.is_empty() {
        return Err(ApiError::bad_request(
            Some(field),
            "is empty: send a base64-encoded PNG, JPEG, WebP or BMP",
        ));
    }
    // Checked before decoding: a 30 MB string is not decoded only to be refused.
    if clean.len() / 4 * 3 > crate::upload::MAX_UPLOAD_BYTES {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            Some(field),
            format!("the image is larger than {} bytes", crate::upload::MAX_UPLOAD_BYTES),
        ));
    }
    STANDARD_NO_PAD
        .decode(&clean)
        .or_else(|_| URL_SAFE_NO_PAD.decode(&clean))
        .map_err(|e| ApiError::bad_request(Some(field), format!("not an image: the text is not valid base64 ({e})")))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::decode_base64;

    #[test]
    fn base64_with_or_without_a_data_url_prefix() {
        assert_eq!(decode_base64("aGVsbG8=", "f").expect("plain"), b"hello");
        assert_eq!(
            decode_base64("data:image/png;base64,aGVsbG8", "f").expect("prefixed"),
            b"hello"
        );
        assert_eq!(decode_base64("aGVs\nbG8=", "f").expect("wrapped"), b"hello");
        let e = decode_base64("not base64!!", "init_images[0]").expect_err("bad");
        assert_eq!(e.field.as_deref(), Some("init_images[0]"));
        assert!(e.message.contains("not an image"), "{}", e.message);
        assert!(decode_base64("", "f").is_err());
    }
}
