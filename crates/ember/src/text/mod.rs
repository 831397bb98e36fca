//! Text: the CLIP BPE tokenizer (prompt → token ids).

pub mod tokenizer;
