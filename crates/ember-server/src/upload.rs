//! Uploaded init images and inpainting masks: the type is sniffed from the bytes and the declared size read from the header before any
//! pixel is decoded, so a tiny file that declares a gigapixel image (a decompression bomb) is refused cheaply.

use crate::error::{ApiError, ApiResult};
use ember::image::init::MAX_DECODE_SIDE;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};
use std::io::Cursor;

/// Largest upload accepted, in bytes (20 MB).
pub const MAX_UPLOAD_BYTES: usize = 20 * 1000 * 1000;

/// Decoding memory cap: an 8192×8192 RGBA image at 16 bits per channel is 512 MiB.
const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;

const FIELD: &str = "init_image";

/// The accepted formats, from the file's first bytes (the name and the declared content type can lie).
fn sniff(bytes: &[u8], field: &str) -> ApiResult<ImageFormat> {
    let field = Some(field);
    match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Bmp)) => Ok(f),
        Ok(other) => Err(ApiError::bad_request(
            field,
            format!("{other:?} images are not supported; upload a PNG, JPEG, WebP or BMP file"),
        )),
        Err(_) => Err(ApiError::bad_request(
            field,
            "the file is not an image Ember can read; upload a PNG, JPEG, WebP or BMP file",
        )),
    }
}

/// The size an image declares, with its EXIF orientation applied (a quarter turn swaps the sides), read from the
/// header alone: no pixel buffer is allocated, so a job's size limits are checked before anything is decoded.
pub fn probe(bytes: &[u8]) -> ApiResult<(u32, u32)> {
    probe_as(bytes, FIELD)
}

/// [`probe`], its errors naming `field` (`init_mask`).
pub fn probe_as(bytes: &[u8], field: &str) -> ApiResult<(u32, u32)> {
    let format = sniff(bytes, field)?;
    let broken = |e| broken(e, field);
    let mut decoder = ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .map_err(broken)?;
    let (w, h) = decoder.dimensions();
    let orientation = decoder.orientation().map_err(broken)?;
    use image::metadata::Orientation::*;
    let quarter_turn = matches!(orientation, Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH);
    if w > MAX_DECODE_SIDE || h > MAX_DECODE_SIDE {
        return Err(too_large(w, h, field));
    }
    Ok(if quarter_turn { (h, w) } else { (w, h) })
}

fn too_large(w: u32, h: u32, field: &str) -> ApiError {
    ApiError::bad_request(
        Some(field),
        format!(
            "the image declares {w}×{h} pixels, over the {MAX_DECODE_SIDE}×{MAX_DECODE_SIDE} limit; shrink it first"
        ),
    )
}

fn broken(e: ImageError, field: &str) -> ApiError {
    let field = Some(field);
    match e {
        ImageError::Limits(_) => ApiError::bad_request(
            field,
            format!(
                "the image is larger than {MAX_DECODE_SIDE}×{MAX_DECODE_SIDE} pixels or needs too much memory \
                 to decode; shrink it first"
            ),
        ),
        e => ApiError::bad_request(field, format!("the image is broken or truncated: {e}")),
    }
}

/// Checks type and declared size ([`probe`]), then decodes (applying EXIF orientation). Run it off the async executor:
/// decoding a large JPEG takes a while.
pub fn decode(bytes: &[u8]) -> ApiResult<DynamicImage> {
    decode_as(bytes, FIELD)
}

/// [`decode`], its errors naming `field` (`init_mask`).
pub fn decode_as(bytes: &[u8], field: &str) -> ApiResult<DynamicImage> {
    let format = sniff(bytes, field)?;
    probe_as(bytes, field)?;
    let broken = |e| broken(e, field);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DECODE_SIDE);
    limits.max_image_height = Some(MAX_DECODE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(broken)?;
    let orientation = decoder.orientation().map_err(broken)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(broken)?;
    image.apply_orientation(orientation);
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real 1×1 PNG whose IHDR is patched to declare `w × h` (CRC fixed): tiny, but huge if decoded.
    fn png_declaring(w: u32, h: u32) -> Vec<u8> {
        let mut png = Vec::new();
        DynamicImage::new_rgb8(1, 1)
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .expect("encode");
        // Signature (8), length (4), "IHDR" (4), then width and height; the CRC covers bytes 12..29.
        png[16..20].copy_from_slice(&w.to_be_bytes());
        png[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn field_and_message(r: ApiResult<DynamicImage>) -> (Option<String>, String) {
        let e = r.expect_err("must be refused");
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        (e.field, e.message)
    }

    #[test]
    fn refuses_huge_declared_sizes_before_decoding() {
        let (field, message) = field_and_message(decode(&png_declaring(100_000, 100_000)));
        assert_eq!(field.as_deref(), Some("init_image"));
        assert!(
            message.contains("100000×100000") || message.contains("larger than"),
            "{message}"
        );
    }

    #[test]
    fn refuses_non_images_and_other_formats() {
        let (field, message) = field_and_message(decode(b"hello, this is not an image"));
        assert_eq!(field.as_deref(), Some("init_image"));
        assert!(message.contains("PNG, JPEG, WebP or BMP"), "{message}");
        // GIF is a real image format, but not one Ember accepts.
        let (_, message) = field_and_message(decode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"));
        assert!(message.contains("not supported"), "{message}");
    }

    #[test]
    fn refuses_truncated_images_and_decodes_good_ones() {
        let mut truncated = png_declaring(64, 64);
        truncated.truncate(40);
        let (_, message) = field_and_message(decode(&truncated));
        assert!(message.contains("broken or truncated"), "{message}");
        let mut good = Vec::new();
        DynamicImage::new_rgb8(16, 8)
            .write_to(&mut Cursor::new(&mut good), ImageFormat::Png)
            .expect("encode");
        let image = decode(&good).expect("a valid PNG");
        assert_eq!((image.width(), image.height()), (16, 8));
    }
}
