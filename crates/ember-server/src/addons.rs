//! `GET /api/loras` and `GET /api/embeddings`: the LoRAs and embeddings of a model's library (see `models.rs`), each
//! with what its file says about itself — the family it was made for, its trigger words, an embedding's vector count
//! ([`ember::addons::AddonInfo`]). A file that cannot be read is listed with the reason instead of failing the list.
//!
//! What a file says is kept until the file changes (its size or modification time), so a folder of hundreds of LoRAs
//! is read once, not on every page load.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::models::Served;
use crate::types::{AddonEntry, EmbeddingList, LoraList};
use crate::AppState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use ember::addons::{AddonInfo, AddonKind, AddonLibrary};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;
use utoipa::IntoParams;

/// What add-on files said, by kind and path, with the size and modification time they had then.
#[derive(Default)]
pub struct AddonInfos {
    cache: Mutex<HashMap<(bool, PathBuf), Seen>>,
}

/// A file's entry, and the size and modification time it had when it was read.
#[derive(Clone)]
struct Seen {
    stamp: (u64, Option<SystemTime>),
    entry: AddonEntry,
}

impl AddonInfos {
    /// Every entry of `library` of `kind`, by name (blocking: reads the files not seen yet or changed since).
    fn list(&self, kind: AddonKind, library: &AddonLibrary) -> Vec<AddonEntry> {
        let files = match kind {
            AddonKind::Lora => library.loras(),
            AddonKind::Embedding => library.embeddings(),
        };
        files.iter().map(|(name, path)| self.entry(kind, name, path)).collect()
    }

    fn entry(&self, kind: AddonKind, name: &str, path: &Path) -> AddonEntry {
        let stamp = std::fs::metadata(path)
            .map(|m| (m.len(), m.modified().ok()))
            .unwrap_or((0, None));
        let key = (kind == AddonKind::Lora, path.to_path_buf());
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned();
        // A file whose modification time is unknown is read every time.
        if let Some(seen) = cached.filter(|seen| seen.stamp == stamp && stamp.1.is_some()) {
            return seen.entry;
        }
        let entry = read(kind, name, path);
        let seen = Seen {
            stamp,
            entry: entry.clone(),
        };
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, seen);
        entry
    }
}

/// `path`'s entry, known as `name`; the reason when it cannot be read (without the file's path: the entry's name
/// says which file it is).
fn read(kind: AddonKind, name: &str, path: &Path) -> AddonEntry {
    match AddonInfo::read(kind, path) {
        Ok(info) => AddonEntry {
            name: name.to_string(),
            family: info.family.map(str::to_string),
            trigger_words: info.trigger_words,
            vectors: info.vectors,
            error: None,
        },
        Err(e) => AddonEntry {
            name: name.to_string(),
            family: None,
            trigger_words: Vec::new(),
            vectors: None,
            error: Some(match e {
                ember::Error::Addon { message, .. } => message,
                other => other.to_string(),
            }),
        },
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AddonQuery {
    /// A `name` from `GET /api/models`; absent or "": the model jobs without `model` run on (the loaded one).
    model: Option<String>,
}

/// The entries of `kind` of the model the query names, paths redacted from the reasons.
async fn list(
    state: &AppState,
    query: Result<Query<AddonQuery>, QueryRejection>,
    kind: AddonKind,
) -> ApiResult<Vec<AddonEntry>> {
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(None, format!("bad query string: {}", e.body_text())))?;
    let served: &Served = state.models.for_job(query.model.as_deref())?;
    entries(state, served, kind).await
}

/// The entries of `kind` of `served`'s library, paths redacted from the reasons.
pub(crate) async fn entries(state: &AppState, served: &Served, kind: AddonKind) -> ApiResult<Vec<AddonEntry>> {
    let (infos, library) = (state.addon_infos.clone(), served.addons.clone());
    let mut entries = tokio::task::spawn_blocking(move || infos.list(kind, &library))
        .await
        .map_err(|e| ApiError::internal(format!("cannot list the add-ons: {e}")))?;
    for entry in &mut entries {
        if let Some(error) = &mut entry.error {
            *error = state.storage.redact(&state.models.redact(error));
        }
    }
    Ok(entries)
}

#[utoipa::path(get, path = "/api/loras", tag = "other", params(AddonQuery),
    responses(
        (status = 200, description = "The LoRAs jobs on the model may use (`loras`, `<lora:NAME:WEIGHT>` in the \
                                      prompt), by name, each with the family it was made for and its trigger words; \
                                      a file that cannot be read has an `error`", body = LoraList),
        (status = 400, description = "An unknown model", body = ErrorBody),
    ))]
pub async fn loras(
    State(state): State<AppState>,
    query: Result<Query<AddonQuery>, QueryRejection>,
) -> ApiResult<Json<LoraList>> {
    let loras = list(&state, query, AddonKind::Lora).await?;
    Ok(Json(LoraList { loras }))
}

#[utoipa::path(get, path = "/api/embeddings", tag = "other", params(AddonQuery),
    responses(
        (status = 200, description = "The textual-inversion embeddings prompts on the model may use (by their \
                                      names), by name, each with the family it was made for, its trigger words and \
                                      its vector count; a file that cannot be read has an `error`",
         body = EmbeddingList),
        (status = 400, description = "An unknown model", body = ErrorBody),
    ))]
pub async fn embeddings(
    State(state): State<AppState>,
    query: Result<Query<AddonQuery>, QueryRejection>,
) -> ApiResult<Json<EmbeddingList>> {
    let embeddings = list(&state, query, AddonKind::Embedding).await?;
    Ok(Json(EmbeddingList { embeddings }))
}
