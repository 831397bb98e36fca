//! How `ember serve` is set up: where it listens, where it keeps its data and which model it runs.

use std::path::PathBuf;

/// Server settings. [`Config::default`] matches the CLI's defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind; loopback by default so the API is not exposed to the network by accident.
    pub host: String,
    /// TCP port; 0 picks a free one (tests).
    pub port: u16,
    /// Holds `ember.sqlite` and `images/`.
    pub data_dir: PathBuf,
    /// Model path or Hugging Face repo id, as `ember generate --model`.
    pub model: String,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// `auto`, `f32`, `f16` or `bf16` (as `ember generate --dtype`).
    pub dtype: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 9090,
            data_dir: PathBuf::from("ember-data"),
            model: ember::model::DEFAULT_REPO_ID.into(),
            device: "auto".into(),
            dtype: "auto".into(),
        }
    }
}

impl Config {
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("ember.sqlite")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.data_dir.join("images")
    }
}
