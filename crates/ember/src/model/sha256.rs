//! SHA-256 of a model file, for the model hash recorded in image metadata.
//!
//! Hashing a 2–4 GB checkpoint takes 10–20 s, so results are remembered in a small cache file
//! (`$EMBER_CACHE_DIR`, else `$XDG_CACHE_HOME/ember`, else `~/.cache/ember`), keyed by the file's canonical path,
//! size and modification time. A cache that cannot be read or written only costs the time of hashing again.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

const CACHE_FILE: &str = "model-hashes.json";

/// Lower-case hex SHA-256 of a file's contents, read in a stream (model files are gigabytes).
pub fn file_hex(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// [`file_hex`], remembered in the user's cache folder.
pub fn file_hex_cached(path: &Path) -> std::io::Result<String> {
    match default_cache_dir() {
        Some(dir) => file_hex_cached_in(path, &dir),
        None => file_hex(path),
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("EMBER_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("ember")))
        .or_else(|| env("HOME").map(|h| h.join(".cache").join("ember")))
}

/// What identifies one version of a file without reading it.
fn cache_key(path: &Path) -> std::io::Result<String> {
    let canonical = path.canonicalize()?;
    let meta = std::fs::metadata(&canonical)?;
    let modified = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(format!("{}|{}|{}", canonical.display(), meta.len(), modified))
}

fn file_hex_cached_in(path: &Path, cache_dir: &Path) -> std::io::Result<String> {
    let key = cache_key(path)?;
    let cache_path = cache_dir.join(CACHE_FILE);
    let mut cache: BTreeMap<String, String> = std::fs::read(&cache_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    if let Some(hex) = cache.get(&key) {
        return Ok(hex.clone());
    }
    let hex = file_hex(path)?;
    // Forget files that are gone, so the cache does not grow with every deleted or moved model.
    cache.retain(|k, _| k.split('|').next().is_some_and(|p| Path::new(p).exists()));
    cache.insert(key, hex.clone());
    // Best effort, written whole then renamed so a concurrent reader never sees half a file.
    let _ = std::fs::create_dir_all(cache_dir).and_then(|_| {
        let tmp = cache_dir.join(format!(".{CACHE_FILE}.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&cache).unwrap_or_default())?;
        std::fs::rename(&tmp, &cache_path)
    });
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS 180-4's published examples: SHA-256("abc") and SHA-256("").
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn matches_the_standard_example() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").expect("write");
        assert_eq!(file_hex(&path).expect("hash"), ABC);
    }

    #[test]
    fn the_cache_remembers_and_notices_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, cache) = (dir.path().join("model"), dir.path().join("cache"));
        std::fs::write(&path, b"abc").expect("write");
        assert_eq!(file_hex_cached_in(&path, &cache).expect("hash"), ABC);
        assert!(cache.join(CACHE_FILE).is_file(), "cache written");
        // A cached answer is returned without reading the file: poison the entry to see it is used.
        let key = cache_key(&path).expect("key");
        std::fs::write(
            cache.join(CACHE_FILE),
            serde_json::to_vec(&BTreeMap::from([(key, "cached".to_string())])).unwrap(),
        )
        .expect("write cache");
        assert_eq!(file_hex_cached_in(&path, &cache).expect("hash"), "cached");
        // A different size is a different file version.
        std::fs::write(&path, b"").expect("write");
        assert_eq!(file_hex_cached_in(&path, &cache).expect("hash"), EMPTY);
        // An unreadable cache only means hashing again.
        std::fs::write(cache.join(CACHE_FILE), b"not json").expect("write");
        assert_eq!(file_hex_cached_in(&path, &cache).expect("hash"), EMPTY);
    }
}
