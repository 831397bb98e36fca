//! Text: the CLIP BPE tokenizer (prompt → token ids), the prompt language, weighted conditioning, and each model
//! family's text encoders behind one seam (`encoder`).

pub mod conditioning;
pub mod encoder;
pub mod prompt;
pub mod tokenizer;
