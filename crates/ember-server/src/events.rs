//! Server-Sent Events: the worker publishes on a tokio broadcast channel, each `GET /api/events` client gets its own
//! receiver turned into an SSE stream. A client too slow to keep up skips what it missed (the job and gallery
//! endpoints always have the current state) instead of holding the worker back.

use crate::types::{ImageEvent, Job, Progress};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::Stream;
use serde::Serialize;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Events kept for slow clients before they start skipping: enough for several jobs' worth of steps.
const CAPACITY: usize = 1024;

/// One event: its SSE name (`job`, `progress`, `image`) and JSON data.
#[derive(Debug, Clone)]
pub struct ServerEvent {
    pub name: &'static str,
    pub data: String,
}

/// The sending side; cheap to clone, usable from the worker thread (sending never blocks).
#[derive(Clone)]
pub struct Events {
    sender: broadcast::Sender<ServerEvent>,
    /// Set to true at shutdown: open streams end, so a graceful shutdown does not wait on them forever.
    closing: watch::Sender<bool>,
    /// The last `progress` event, for A1111's `GET /sdapi/v1/progress` (its preview and ETA).
    latest: Arc<Mutex<Option<Progress>>>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
            closing: watch::channel(false).0,
            latest: Arc::default(),
        }
    }
}

impl Events {
    fn publish(&self, name: &'static str, data: &impl Serialize) {
        match serde_json::to_string(data) {
            // An error only means nobody is listening right now.
            Ok(data) => {
                let _ = self.sender.send(ServerEvent { name, data });
            }
            Err(e) => tracing::error!("cannot serialize a {name} event: {e}"),
        }
    }
    pub fn job(&self, job: &Job) {
        self.publish("job", job)
    }
    pub fn progress(&self, progress: &Progress) {
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(progress.clone());
        self.publish("progress", progress)
    }

    /// The last `progress` event published, if any (of whichever job).
    pub fn latest_progress(&self) -> Option<Progress> {
        self.latest.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A receiver of every event published from now on (the blocking APIs wait on it for their jobs' ends).
    pub fn subscribe(&self) -> broadcast::Receiver<ServerEvent> {
        self.sender.subscribe()
    }
    pub fn image(&self, image: &ImageEvent) {
        self.publish("image", image)
    }

    /// Whether (and when) the server stops: true once [`Events::close`] was called.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ends every open event stream (server shutdown).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// The SSE response for one client. It subscribes before returning, so every event published after the
    /// response headers reach the client is delivered.
    pub fn sse(&self) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        let receiver = self.sender.subscribe();
        let closing = self.closing.subscribe();
        let stream = futures_util::stream::unfold((receiver, closing), |(mut receiver, mut closing)| async move {
            loop {
                if *closing.borrow() {
                    return None;
                }
                let received = tokio::select! {
                    received = receiver.recv() => received,
                    // Either the flag changed or the server is gone: both end the stream.
                    _ = closing.changed() => return None,
                };
                match received {
                    Ok(event) => {
                        let sse = Event::default().event(event.name).data(event.data);
                        return Some((Ok(sse), (receiver, closing)));
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("an event stream client fell behind and skipped {n} events");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        // Comments every 15 s keep proxies from closing an idle stream.
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
    }
}
