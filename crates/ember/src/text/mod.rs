//! Text: the CLIP BPE tokenizer (prompt → token ids), the prompt language and weighted conditioning.

pub mod conditioning;
pub mod prompt;
pub mod tokenizer;
