//! Which model an A1111 request runs on: `override_settings.sd_model_checkpoint`, else the one `POST options` chose,
//! else the server's current one; names may be Ember's or A1111 titles (`name.safetensors [hash]`).

use super::{A1111Error, Result};
use crate::error::{clip, ApiError};
use crate::models::Served;
use crate::AppState;
use std::sync::{Mutex, PoisonError};

/// The A1111 API's own settings: the model `POST /sdapi/v1/options` chose for its later requests.
#[derive(Default)]
pub struct Settings {
    model: Mutex<Option<String>>,
}

impl Settings {
    fn model(&self) -> Option<String> {
        self.model.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
    pub(super) fn set_model(&self, name: String) {
        *self.model.lock().unwrap_or_else(PoisonError::into_inner) = Some(name);
    }
}

/// The model a request runs on: `override_settings.sd_model_checkpoint`, else the one `POST options` chose, else the
/// server's current one. Names may be Ember's or A1111 titles (`name.safetensors [hash]`).
pub(super) fn request_model<'a>(state: &'a AppState, wanted: Option<&str>) -> Result<&'a Served> {
    let chosen = wanted.map(str::to_string).or_else(|| state.a1111.model());
    match chosen {
        None => Ok(state.models.get(state.models.current())),
        Some(name) => find_model(state, &name).ok_or_else(|| {
            A1111Error(ApiError::bad_request(
                Some("override_settings.sd_model_checkpoint"),
                format!(
                    "there is no model '{}' on this server; its models are {} (GET /sdapi/v1/sd-models)",
                    clip(&name),
                    state.models.names()
                ),
            ))
        }),
    }
}

/// A model by its name, ignoring case, an A1111 ` [hash]` suffix and a file extension.
pub(super) fn find_model<'a>(state: &'a AppState, name: &str) -> Option<&'a Served> {
    if let Some(i) = state.models.find(name) {
        return Some(state.models.get(i));
    }
    let simplify = |s: &str| {
        let s = s.trim();
        let s = match s.rsplit_once(" [") {
            Some((head, tail)) if tail.ends_with(']') => head,
            _ => s,
        };
        let lower = s.to_ascii_lowercase();
        [".safetensors", ".ckpt", ".pt", ".bin"]
            .iter()
            .find_map(|ext| lower.strip_suffix(ext).map(str::to_string))
            .unwrap_or(lower)
    };
    let wanted = simplify(name);
    state
        .models
        .infos()
        .iter()
        .position(|m| simplify(&m.name) == wanted)
        .map(|i| state.models.get(i))
}

/// The name `GET options` reports: the model `POST options` chose, while the server still has it, else the current one.
pub(super) fn current_model_name(state: &AppState) -> String {
    state
        .a1111
        .model()
        .filter(|m| state.models.find(m).is_some())
        .unwrap_or_else(|| state.models.get(state.models.current()).name().to_string())
}
