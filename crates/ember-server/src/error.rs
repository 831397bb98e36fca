//! API errors: a status and `{"error": {"field", "message"}}`, the one error shape of docs/api.md.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// An error answer. 4xx for what the client can fix; 5xx only for faults of the server itself.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub field: Option<String>,
    pub message: String,
}

/// The JSON body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The request field at fault (`strength`, `init_image`, …), or null when it is not about one field.
    pub field: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, field: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            status,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
    pub fn bad_request(field: Option<&str>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, field, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, None, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, None, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, None, message)
    }
    /// The server cannot take work now (its storage is unusable); the client may try again later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, None, message)
    }
}

/// A short piece of client text (a name, a header, a path segment) echoed in a message, cut to 40 characters.
pub fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Longest client or engine text kept in an error message or a log line: a 100 KB prompt is not echoed whole.
pub const MAX_MESSAGE_CHARS: usize = 400;

/// `text` cut to [`MAX_MESSAGE_CHARS`] characters, marked where it was cut.
pub fn clip_message(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        None => text.to_string(),
        Some((end, _)) => format!("{}… ({} characters in all)", &text[..end], text.chars().count()),
    }
}

/// Whether a database error means the storage itself is unusable (full, read-only, gone), not a bug.
pub fn is_storage_fault(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, DiskFull | SystemIoFailure | ReadOnly | CannotOpen | DatabaseCorrupt | NotADatabase)
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = clip_message(&self.message);
        if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{message}");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                field: self.field,
                message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// Database faults are the server's, never the client's: 503 when the storage is unusable, else 500.
impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        if is_storage_fault(&e) {
            ApiError::unavailable(format!("the server's storage is unusable ({e}); try again later"))
        } else {
            ApiError::internal(format!("database error: {e}"))
        }
    }
}

impl From<ember::Error> for ApiError {
    fn from(e: ember::Error) -> Self {
        match e {
            ember::Error::InvalidRequest { field, message } => ApiError::bad_request(Some(field), message),
            other => ApiError::internal(other.to_string()),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
