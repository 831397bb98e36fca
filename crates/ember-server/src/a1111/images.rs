//! Images in A1111 bodies: base64 uploads (`init_images`, `mask`, `png-info`'s `image`) and A1111's alpha masks.

use super::{invalid, A1111Error, Result};
use crate::blocking::decode_base64;
use crate::error::ApiError;

/// An uploaded image (base64 in JSON), checked for size; `field` names it in errors.
pub(super) fn image_bytes(value: &str, field: &str) -> Result<Vec<u8>> {
    let bytes = decode_base64(value, field)?;
    if image::guess_format(&bytes).is_err() {
        return Err(invalid(
            field,
            "not an image: the base64 data is not a PNG, JPEG, WebP or BMP file",
        ));
    }
    Ok(bytes)
}

/// A1111 reads an RGBA mask with transparency by its alpha channel (opaque = inpaint); Ember reads masks by their
/// grey level. Such a mask is turned into grey (alpha > 128 → white) here; other masks are passed on as they are.
pub(super) fn a1111_mask(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let Ok(image) = crate::upload::decode_as(&bytes, "mask") else {
        // The submit check reports it, naming the field.
        return Ok(bytes);
    };
    if !image.color().has_alpha() {
        return Ok(bytes);
    }
    let rgba = image.to_rgba8();
    if rgba.pixels().all(|p| p[3] == 255) {
        return Ok(bytes);
    }
    let grey = image::GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        image::Luma([if rgba.get_pixel(x, y)[3] > 128 { 255 } else { 0 }])
    });
    encode_png(&image::DynamicImage::ImageLuma8(grey))
}

/// `image` as a PNG file (A1111 masks made grey here; `openai.rs` makes its masks with it too).
pub(crate) fn encode_png(image: &image::DynamicImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| A1111Error(ApiError::internal(format!("cannot encode a PNG: {e}"))))?;
    Ok(out)
}
