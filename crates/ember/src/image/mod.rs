//! Images: init-image preparation, inpainting masks, PNG output with generation metadata, step previews and strips, grids.

pub mod grid;
pub mod infotext;
pub mod init;
pub mod mask;
pub mod metadata;
pub mod png_meta;
pub mod preview;
pub mod strip;
