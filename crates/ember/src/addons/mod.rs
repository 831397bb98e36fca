//! The files people add to a model: LoRAs (and LyCORIS) that change its weights, textual-inversion embeddings that
//! add words to its vocabulary. [`AddonLibrary`] knows them by name (the file stem), from folders and single files;
//! the pipeline reads them when a prompt uses them.
//!
//! - `files.rs`: reading `.safetensors` / restricted-pickle `.pt` files, A1111's short hashes.
//! - `lora.rs`: LoRA formats → modules and their `ΔW`; `targets.rs`: which weight of the model each changes.
//! - `embedding.rs`: embedding formats → vectors per text encoder; `info.rs`: what a picker shows of a file.

mod embedding;
mod files;
mod info;
pub mod lora;
mod targets;

pub use embedding::Embedding;
pub use info::AddonInfo;
pub use lora::{Component, LoraFile};
pub use targets::TargetIndex;

use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File extensions read as LoRAs and embeddings.
const EXTENSIONS: [&str; 5] = ["safetensors", "pt", "ckpt", "bin", "pth"];
/// How deep folders are searched (A1111 users sort their LoRAs into subfolders).
const MAX_DEPTH: usize = 4;

/// The LoRAs and embeddings a front-end offers, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AddonLibrary {
    loras: BTreeMap<String, PathBuf>,
    embeddings: BTreeMap<String, PathBuf>,
}

/// What kind of add-on a file or folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddonKind {
    Lora,
    Embedding,
}

impl AddonKind {
    fn what(self) -> &'static str {
        match self {
            AddonKind::Lora => "LoRA",
            AddonKind::Embedding => "embedding",
        }
    }
}

impl AddonLibrary {
    /// Adds every LoRA or embedding file under `dir` (subfolders included); returns warnings (names found twice:
    /// the first found is kept).
    pub fn add_dir(&mut self, kind: AddonKind, dir: &Path) -> Result<Vec<String>> {
        if !dir.is_dir() {
            return Err(Error::addon(
                dir,
                format!("not a folder; give the folder that holds your {} files", kind.what()),
            ));
        }
        let mut files = Vec::new();
        collect_files(dir, 0, &mut files).map_err(|e| Error::addon(dir, format!("cannot list it: {e}")))?;
        files.sort();
        let mut warnings = Vec::new();
        for file in files {
            let name = stem(&file);
            let map = self.map_mut(kind);
            match map.get(&name) {
                Some(existing) if *existing != file => warnings.push(format!(
                    "two {}s are named `{name}`: {} is used, {} is not (rename one to use both)",
                    kind.what(),
                    existing.display(),
                    file.display()
                )),
                _ => {
                    map.insert(name, file);
                }
            }
        }
        Ok(warnings)
    }

    /// Adds one file; it is known by its stem (a later file of the same name replaces an earlier one). Returns the
    /// name.
    pub fn add_file(&mut self, kind: AddonKind, path: &Path) -> Result<String> {
        if !path.is_file() {
            return Err(Error::addon(
                path,
                format!("no such {} file (check the path)", kind.what()),
            ));
        }
        let name = stem(path);
        self.map_mut(kind).insert(name.clone(), path.to_path_buf());
        Ok(name)
    }

    fn map_mut(&mut self, kind: AddonKind) -> &mut BTreeMap<String, PathBuf> {
        match kind {
            AddonKind::Lora => &mut self.loras,
            AddonKind::Embedding => &mut self.embeddings,
        }
    }

    /// LoRA names and files, by name.
    pub fn loras(&self) -> &BTreeMap<String, PathBuf> {
        &self.loras
    }

    /// Embedding names and files, by name.
    pub fn embeddings(&self) -> &BTreeMap<String, PathBuf> {
        &self.embeddings
    }

    /// The file of the LoRA `name`: by name (exact, then ignoring case), or by the path it was added with.
    pub fn lora(&self, name: &str) -> Option<&Path> {
        self.loras
            .get(name)
            .or_else(|| {
                self.loras
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, p)| p)
            })
            .or_else(|| self.loras.values().find(|p| p.as_path() == Path::new(name)))
            .map(PathBuf::as_path)
    }

    /// An error for a LoRA name the library does not have, listing what it has.
    pub fn unknown_lora(&self, name: &str, field: &'static str) -> Error {
        let known: Vec<&str> = self.loras.keys().map(String::as_str).take(20).collect();
        let known = match known.is_empty() {
            true => "no LoRAs are known: add LoRA files or a folder of them".to_string(),
            false => format!(
                "known: {}{}",
                known.join(", "),
                if self.loras.len() > 20 { ", …" } else { "" }
            ),
        };
        Error::invalid(field, format!("unknown LoRA `{name}` ({known})"))
    }
}

fn collect_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if depth < MAX_DEPTH {
                collect_files(&path, depth + 1, out)?;
            }
        } else if path
            .extension()
            .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// What prompts call a file: its name without the extension.
pub(crate) fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The short hash A1111 writes for a LoRA (`Lora hashes:`; the AddNet hash of a `.safetensors`) or an embedding
/// (`TI hashes:`; the whole file's): 12 hex digits of SHA-256.
pub fn short_hash(kind: AddonKind, path: &Path) -> Result<String> {
    files::short_hash(path, kind == AddonKind::Lora)
}
