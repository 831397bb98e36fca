//! Reference tensors written by the Python oracles (`tools/oracle/`), shared by the parity tests.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::error::Error;

/// One reference file's tensors, by name.
pub struct Reference {
    path: String,
    /// What regenerates the file, named when a tensor is missing.
    script: &'static str,
    tensors: HashMap<String, Tensor>,
}

impl Reference {
    pub fn load(path: impl AsRef<std::path::Path>, script: &'static str) -> Result<Self, Box<dyn Error>> {
        let path = path.as_ref();
        Ok(Self {
            path: path.display().to_string(),
            script,
            tensors: candle_core::safetensors::load(path, &Device::Cpu)?,
        })
    }

    pub fn get(&self, key: &str) -> Result<&Tensor, Box<dyn Error>> {
        self.tensors
            .get(key)
            .ok_or_else(|| format!("{} lacks {key}; rerun {}", self.path, self.script).into())
    }
}
