//! Restricted reader for PyTorch `.ckpt` / `.pt` checkpoints (zip + pickle).
//!
//! The pickle is interpreted by a small stack machine that only knows the opcodes and globals a
//! tensor state dict needs; everything else is rejected. Nothing in the file is ever executed.
//!
//! ```no_run
//! let ckpt = ember_pickle::Checkpoint::open("model.ckpt")?;
//! for (name, info) in ckpt.tensors() {
//!     let bytes = ckpt.tensor_bytes(info)?; // row-major, little-endian
//!     println!("{name}: {:?} {:?} ({} bytes)", info.dtype, info.shape, bytes.len());
//! }
//! # Ok::<(), ember_pickle::Error>(())
//! ```

mod error;
mod value;
mod vm;

pub use error::{Error, Result};
pub use value::{StorageDtype, TensorInfo};
pub use vm::parse_state_dict;

use error::malformed;
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Mutex;

/// Largest `data.pkl` accepted. A Stable Diffusion state dict's pickle is well under 1 MiB.
pub const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Largest single storage accepted (the biggest SD tensors are ~100 MiB).
pub const MAX_STORAGE_BYTES: u64 = 16 << 30;

/// An opened checkpoint: the parsed tensor list, and the zip to read storages from on demand.
pub struct Checkpoint<R: Read + Seek = std::fs::File> {
    archive: Mutex<zip::ZipArchive<R>>,
    /// The folder inside the zip holding `data.pkl` (torch names it after the file), with a trailing '/'.
    prefix: String,
    tensors: Vec<(String, TensorInfo)>,
}

impl Checkpoint<std::fs::File> {
    /// Opens a file written by `torch.save` (zip format, torch ≥ 1.6).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let mut file = std::fs::File::open(path)?;
        let mut magic = [0u8; 4];
        let n = read_up_to(&mut file, &mut magic)?;
        if n < 4 || &magic != b"PK\x03\x04" {
            return Err(if n >= 2 && magic[0] == 0x80 {
                Error::Unsupported(
                    "this is the legacy (pre-1.6) torch format; re-save it with a recent torch or convert it to \
                     .safetensors"
                        .into(),
                )
            } else {
                malformed("not a zip archive (a .ckpt must be written by torch.save)")
            });
        }
        file.rewind()?;
        Self::new(file)
    }
}

impl<R: Read + Seek> Checkpoint<R> {
    /// Reads the archive's pickle from any seekable source.
    pub fn new(reader: R) -> Result<Self> {
        let mut archive = zip::ZipArchive::new(reader).map_err(zip_err)?;
        let pkl = archive
            .file_names()
            .filter_map(|n| n.ok())
            .filter(|n| n == "data.pkl" || (n.ends_with("/data.pkl") && n.matches('/').count() == 1))
            .map(|n| n.into_owned())
            .min()
            .ok_or_else(|| malformed("no data.pkl in the archive (is it a torch.save file?)"))?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        if let Ok(mut f) = archive.by_name(&format!("{prefix}byteorder")) {
            let mut order = String::new();
            (&mut f)
                .take(16)
                .read_to_string(&mut order)
                .map_err(|_| malformed("bad byteorder entry"))?;
            if order.trim() != "little" {
                return Err(Error::Unsupported(format!("{} byte order", order.trim())));
            }
        }
        let pickle = read_entry(&mut archive, &pkl, MAX_PICKLE_BYTES)?;
        let tensors = parse_state_dict(&pickle)?;
        Ok(Self {
            archive: Mutex::new(archive),
            prefix,
            tensors,
        })
    }

    /// The state dict's tensors in file order (under `state_dict` when the checkpoint nests it there).
    pub fn tensors(&self) -> &[(String, TensorInfo)] {
        &self.tensors
    }

    /// The raw bytes of a storage (`<archive>/data/<key>`), checked against the size the pickle declares.
    pub fn storage_bytes(&self, key: &str, dtype: StorageDtype, numel: usize) -> Result<Vec<u8>> {
        let want = numel
            .checked_mul(dtype.size_in_bytes())
            .filter(|&n| n as u64 <= MAX_STORAGE_BYTES)
            .ok_or_else(|| Error::Limit(format!("storage {key} is larger than {MAX_STORAGE_BYTES} bytes")))?;
        let mut archive = self
            .archive
            .lock()
            .map_err(|_| Error::Malformed("a previous read of this checkpoint failed midway".into()))?;
        let bytes = read_entry(&mut archive, &format!("{}data/{key}", self.prefix), want as u64)?;
        if bytes.len() < want {
            return Err(malformed(format!(
                "storage {key} holds {} bytes, the pickle says {want} (truncated file?)",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// One tensor's elements, row-major and little-endian (strided views are gathered).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        let storage = self.storage_bytes(&info.storage_key, info.dtype, info.storage_numel)?;
        Ok(gather(&storage, info))
    }
}

/// Copies a (possibly strided) view out of its storage. The view was checked to lie inside the storage.
fn gather(storage: &[u8], info: &TensorInfo) -> Vec<u8> {
    let es = info.dtype.size_in_bytes();
    let numel = info.numel();
    if info.is_contiguous() {
        let start = info.storage_offset * es;
        return storage[start..start + numel * es].to_vec();
    }
    let mut out = Vec::with_capacity(numel * es);
    let mut index = vec![0usize; info.shape.len()];
    for _ in 0..numel {
        let elem = info.storage_offset + index.iter().zip(&info.strides).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[elem * es..(elem + 1) * es]);
        // Odometer increment over the shape, last dimension fastest.
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < info.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

/// Reads a whole zip entry, refusing more than `limit` bytes whatever the zip header claims.
fn read_entry<R: Read + Seek>(archive: &mut zip::ZipArchive<R>, name: &str, limit: u64) -> Result<Vec<u8>> {
    let entry = archive.by_name(name).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => malformed(format!("the archive has no entry {name}")),
        e => zip_err(e),
    })?;
    if entry.size() > limit {
        return Err(Error::Limit(format!("{name} is larger than {limit} bytes")));
    }
    let mut out = Vec::with_capacity(entry.size() as usize);
    entry
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| malformed(format!("cannot read {name}: {e} (truncated file?)")))?;
    if out.len() as u64 > limit {
        return Err(Error::Limit(format!("{name} is larger than {limit} bytes")));
    }
    Ok(out)
}

fn zip_err(e: zip::result::ZipError) -> Error {
    match e {
        zip::result::ZipError::Io(e) => Error::Io(e),
        e => malformed(format!("bad zip archive: {e} (truncated or corrupt file?)")),
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
