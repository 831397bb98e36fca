//! Output PNGs: naming (`000042.1592514025.png`, as InvokeAI), writing with generation metadata
//! (see [`super::metadata`] for the `Dream`, `sd-metadata` and `parameters` formats), and reading text
//! chunks back (for `!fetch`-style reuse of an earlier image's settings).
//!
//! ASCII values are written as tEXt (what InvokeAI wrote); others as iTXt, whose text is UTF-8 — tEXt
//! is Latin-1 and would mangle most non-English prompts.

use super::metadata::text_chunks;
pub use super::metadata::ImageRecord;
use crate::{Error, Result};
use image::RgbImage;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Seek};
use std::path::{Path, PathBuf};

/// Writes `rgb` with its generation metadata to `path`, which must not exist yet (see [`write_png_with_text`]).
pub fn write_png(path: &Path, rgb: &RgbImage, record: &ImageRecord) -> Result<()> {
    write_png_with_text(path, rgb, &text_chunks(record))
}

/// Writes `rgb` with the given text chunks to `path`, which must not exist yet. The image is written to a
/// hidden temporary file in the same folder and linked into place, so a reader never sees half a file and an
/// existing file is never replaced.
pub fn write_png_with_text(path: &Path, rgb: &RgbImage, chunks: &[(&str, String)]) -> Result<()> {
    let write_err = |source: std::io::Error| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        return Err(write_err(already_exists()));
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| write_err(ErrorKind::InvalidInput.into()))?;
    let tmp = path.with_file_name(format!(".{}.{}.tmp", file_name.to_string_lossy(), std::process::id()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(write_err)?;
    let written = encode(file, rgb, chunks).and_then(|()| publish(&tmp, path));
    // The temporary name is gone after a successful link/rename; after a failure it must not linger.
    let _ = std::fs::remove_file(&tmp);
    written.map_err(write_err)
}

/// `rgb` with its generation metadata as PNG bytes, for storage that is not a file (an object store).
pub fn encode_png(rgb: &RgbImage, record: &ImageRecord) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    encode_to(&mut bytes, rgb, &text_chunks(record))?;
    Ok(bytes)
}

fn encode(file: File, rgb: &RgbImage, chunks: &[(&str, String)]) -> std::io::Result<()> {
    encode_to(BufWriter::new(&file), rgb, chunks)?;
    file.sync_all()
}

fn encode_to(out: impl std::io::Write, rgb: &RgbImage, chunks: &[(&str, String)]) -> std::io::Result<()> {
    let mut encoder = png::Encoder::new(out, rgb.width(), rgb.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    for (keyword, text) in chunks {
        let keyword = keyword.to_string();
        let added = if text.is_ascii() {
            encoder.add_text_chunk(keyword, text.clone())
        } else {
            encoder.add_itxt_chunk(keyword, text.clone())
        };
        added.map_err(std::io::Error::other)?;
    }
    let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
    writer.write_image_data(rgb.as_raw()).map_err(std::io::Error::other)?;
    writer.finish().map_err(std::io::Error::other)
}

/// Moves the finished temporary file to `path` without ever replacing an existing file.
fn publish(tmp: &Path, path: &Path) -> std::io::Result<()> {
    match std::fs::hard_link(tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(already_exists()),
        // File systems without hard links (FAT, some network shares): check, then rename.
        Err(_) if path.exists() => Err(already_exists()),
        Err(_) => std::fs::rename(tmp, path),
    }
}

fn already_exists() -> std::io::Error {
    std::io::Error::new(
        ErrorKind::AlreadyExists,
        "the file already exists; Ember never overwrites images",
    )
}

/// All text chunks of a PNG as (keyword, text): tEXt first, then zTXt, then iTXt, each in file order.
pub fn read_png_text(path: &Path) -> Result<Vec<(String, String)>> {
    let file = File::open(path).map_err(|e| Error::image(path, format!("cannot open it: {e}")))?;
    read_png_text_from(BufReader::new(file), path)
}

/// [`read_png_text`] from any reader (`path` only names the image in errors); the fuzz targets feed it bytes.
pub fn read_png_text_from(png: impl BufRead + Seek, path: &Path) -> Result<Vec<(String, String)>> {
    let bad = |e: png::DecodingError| Error::image(path, format!("cannot read its PNG text chunks: {e}"));
    let mut reader = png::Decoder::new(png).read_info().map_err(bad)?;
    // Text chunks may also follow the image data; finishing reads (and skips) up to IEND.
    reader.finish().map_err(bad)?;
    let info = reader.info();
    let mut out: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|c| (c.keyword.clone(), c.text.clone()))
        .collect();
    for chunk in &info.compressed_latin1_text {
        out.push((chunk.keyword.clone(), chunk.get_text().map_err(bad)?));
    }
    for chunk in &info.utf8_text {
        out.push((chunk.keyword.clone(), chunk.get_text().map_err(bad)?));
    }
    Ok(out)
}

/// The next free output name in `outdir` (created if missing): `{prefix:06}.{seed}.png`, where prefix is
/// one more than the highest numeric prefix of the `NNN….png` files there (so 000001 in an empty folder,
/// as InvokeAI). The numeric maximum is used, not InvokeAI's reverse alphabetical pick, so 1000000 > 999999.
pub fn next_output_path(outdir: &Path, seed: u32) -> Result<PathBuf> {
    let dir_err = |source: std::io::Error| Error::Write {
        path: outdir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(outdir).map_err(dir_err)?;
    let mut highest = 0u64;
    for entry in std::fs::read_dir(outdir).map_err(dir_err)? {
        let name = entry.map_err(dir_err)?.file_name();
        if let Some(n) = name.to_str().and_then(numeric_prefix) {
            highest = highest.max(n);
        }
    }
    Ok(outdir.join(format!("{:06}.{seed}.png", highest.saturating_add(1))))
}

/// `42` for `000042.1234.png` (InvokeAI's pattern `^(\d+)\..*png`); None for other names.
fn numeric_prefix(name: &str) -> Option<u64> {
    let (digits, rest) = name.split_once('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || !rest.ends_with("png") {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_prefixes() {
        assert_eq!(numeric_prefix("000032.1592514025.png"), Some(32));
        assert_eq!(numeric_prefix("000019.steps.png"), Some(19));
        assert_eq!(numeric_prefix("fire-drawing.png"), None);
        assert_eq!(numeric_prefix("000040.1.txt"), None);
        assert_eq!(numeric_prefix(".000050.1.png.123.tmp"), None);
    }

    fn pixels(v: u8) -> RgbImage {
        RgbImage::from_pixel(3, 2, image::Rgb([v, 255 - v, v / 2]))
    }

    #[test]
    fn writes_text_chunks_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("study.1.png");
        let chunks = [
            ("Description", "strengths 0.7, 0.4 — ×".to_string()),
            ("Software", "Ember".to_string()),
        ];
        write_png_with_text(&path, &pixels(9), &chunks).expect("write");
        let text = read_png_text(&path).expect("read");
        assert!(text.contains(&("Software".to_string(), "Ember".to_string())));
        assert!(text.contains(&("Description".to_string(), chunks[0].1.clone())));
        assert_eq!(image::open(&path).expect("png").to_rgb8(), pixels(9));
        assert!(write_png_with_text(&path, &pixels(0), &chunks).is_err());
    }
}
