//! Images: init-image preparation, PNG output with generation metadata, step previews and strips, grids.

pub mod grid;
pub mod init;
pub mod metadata;
pub mod png_meta;
pub mod preview;
pub mod strip;
