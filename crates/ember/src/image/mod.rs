//! Images: init-image preparation, and PNG output with generation metadata.

pub mod init;
pub mod metadata;
pub mod png_meta;
pub mod preview;
