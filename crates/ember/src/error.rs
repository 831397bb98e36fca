//! The engine's error type: every message names the problem and what the user can do about it.

use std::path::PathBuf;

/// Errors from the engine. Front-ends show them with `Display`; they are written for users.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request parameter is out of range or inconsistent.
    #[error("invalid {field}: {message}")]
    InvalidRequest { field: &'static str, message: String },

    /// A model file or folder could not be used.
    #[error("cannot load model from {path}: {message}")]
    Model { path: PathBuf, message: String },

    /// A LoRA or textual-inversion embedding could not be used.
    #[error("cannot use {path}: {message}")]
    Addon { path: PathBuf, message: String },

    /// An input image could not be used.
    #[error("cannot use image {path}: {message}")]
    Image { path: PathBuf, message: String },

    /// The tokenizer files could not be read.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// Writing an output failed.
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },

    /// The run was cancelled through its cancel token.
    #[error("cancelled")]
    Cancelled,

    /// A tensor operation failed (a shape mismatch here is a bug or an unsupported model layout).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidRequest {
            field,
            message: message.into(),
        }
    }
    pub fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Model {
            path: path.into(),
            message: message.into(),
        }
    }
    pub fn addon(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Addon {
            path: path.into(),
            message: message.into(),
        }
    }
    pub fn image(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Image {
            path: path.into(),
            message: message.into(),
        }
    }
}
