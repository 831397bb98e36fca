//! Restricted reader for PyTorch `.ckpt` / `.pt` checkpoints (zip + pickle).
//!
//! The pickle is interpreted by a small stack machine that only knows the opcodes and globals a
//! tensor state dict needs; everything else is rejected. Nothing in the file is ever executed.
