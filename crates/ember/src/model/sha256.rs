//! SHA-256 of a model file, for the model hash recorded in image metadata.

use sha2::{Digest, Sha256};
use std::path::Path;

/// Lower-case hex SHA-256 of a file's contents, read in a stream (model files are gigabytes).
pub fn file_hex(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS 180-4's published example: SHA-256("abc").
    #[test]
    fn matches_the_standard_example() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").expect("write");
        assert_eq!(
            file_hex(&path).expect("hash"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
