//! CLIP's byte-level BPE tokenizer, as Stable Diffusion 1.x uses it (Hugging Face `CLIPTokenizer`, no ftfy).
//!
//! Prompt → ids in four steps: split out literal special tokens, clean the text (collapse whitespace,
//! lowercase), cut it into words with CLIP's regex, then map each word's UTF-8 bytes to vocabulary symbols
//! and merge them by BPE rank (the last symbol carries the `</w>` end-of-word marker).
//!
//! The vocabulary comes from a model's `tokenizer/` folder (`vocab.json` + `merges.txt`) or from OpenAI's
//! `bpe_simple_vocab_16e6.txt.gz`, bundled into the binary (MIT, see `assets/LICENSE-openai-CLIP`).
//! Not done (as in diffusers without ftfy): HTML unescaping, ftfy fixes, Unicode NFC normalization
//! (prompts typed on a keyboard are already NFC).

use crate::{Error, Result};
use regex::Regex;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// OpenAI's merges file, gzipped (1.3 MB), with its licence in `assets/LICENSE-openai-CLIP`.
static BUNDLED_BPE_GZ: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");

/// OpenAI's `simple_tokenizer` keeps `lines[1 : 49152 - 256 - 2 + 1]` of the merges file.
const BUNDLED_MERGES: usize = 49152 - 256 - 2;

pub const START_OF_TEXT: &str = "<|startoftext|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// `<|endoftext|>`'s id in CLIP's vocabulary (the last entry), the token whose hidden state is pooled.
pub const EOS_ID: u32 = 49407;

/// CLIP's word splitter. Text is lowercased before it runs, so the case-insensitive flag is not needed.
const WORD_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The cache is cleared when it grows past this many words (a long-running server sees many prompts).
const CACHE_LIMIT: usize = 20_000;

/// A prompt tokenized to a fixed length, as the text encoder takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// Exactly `max_len` ids: BOS, the prompt's tokens, EOS, then padding.
    pub ids: Vec<u32>,
    /// True when the prompt had more tokens than fit; they were dropped.
    pub truncated: bool,
    /// The dropped part of the prompt, as text (empty unless `truncated`), for the user's warning.
    pub dropped: String,
}

/// CLIP's BPE tokenizer. Cheap to share: `encode` takes `&self` (the word cache is behind a mutex); cheap to clone
/// (the vocabulary is shared), e.g. to give it [`AddedTokens`].
#[derive(Clone)]
pub struct ClipTokenizer {
    word_re: Regex,
    /// Id of each byte's symbol, alone and as the last symbol of a word (`</w>`).
    byte_ids: [u32; 256],
    byte_end_ids: [u32; 256],
    /// (left id, right id) → (rank, id of the merged symbol).
    merges: Arc<HashMap<(u32, u32), (u32, u32)>>,
    /// Id → vocabulary string, for decoding.
    tokens: Arc<Vec<String>>,
    /// Vocabulary char → byte (inverse of [`bytes_to_unicode`]), for decoding.
    char_to_byte: Arc<HashMap<char, u8>>,
    bos: u32,
    eos: u32,
    pad: u32,
    cache: Arc<Mutex<HashMap<String, Vec<u32>>>>,
    /// Words with ids of their own (textual-inversion embeddings), matched before BPE.
    added: Arc<AddedTokens>,
}

/// Words that stand for ids outside CLIP's vocabulary (a textual-inversion embedding's vectors), as a tokenizer's
/// added tokens do in transformers: a word is matched anywhere in the text, case-insensitively, where it is not
/// part of a longer word, and becomes its ids.
#[derive(Debug, Clone, Default)]
pub struct AddedTokens {
    /// (lowercase word, ids), longest word first.
    words: Vec<(String, Vec<u32>)>,
}

impl AddedTokens {
    pub fn new(words: impl IntoIterator<Item = (String, Vec<u32>)>) -> Self {
        let mut words: Vec<(String, Vec<u32>)> = words
            .into_iter()
            .filter(|(w, ids)| !w.trim().is_empty() && !ids.is_empty())
            .map(|(w, ids)| (w.to_lowercase(), ids))
            .collect();
        words.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Self { words }
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The word whose first id is `id`.
    fn word_of(&self, id: u32) -> Option<&str> {
        self.words
            .iter()
            .find(|(_, ids)| ids.first() == Some(&id))
            .map(|(w, _)| w.as_str())
    }

    /// The first added word in `text`, if any.
    pub fn first_match(&self, text: &str) -> Option<String> {
        self.split(text).into_iter().find_map(|p| match p {
            Piece::Added(word, _) => Some(word.to_string()),
            Piece::Text(_) => None,
        })
    }

    /// `text` (lowercased) cut into plain text and added words.
    fn split<'t>(&'t self, text: &str) -> Vec<Piece<'t>> {
        let lower = text.to_lowercase();
        if self.words.is_empty() {
            return vec![Piece::Text(lower)];
        }
        let is_word_char = |c: char| c.is_alphanumeric() || c == '_';
        let mut pieces = Vec::new();
        let (mut plain_start, mut i) = (0, 0);
        while i < lower.len() {
            let before = lower[..i].chars().next_back();
            let found = self.words.iter().find(|(word, _)| {
                let Some(after) = lower[i..].strip_prefix(word.as_str()) else {
                    return false;
                };
                let starts_word = word.chars().next().is_some_and(is_word_char);
                let ends_word = word.chars().next_back().is_some_and(is_word_char);
                let joins_before = starts_word && before.is_some_and(is_word_char);
                let joins_after = ends_word && after.chars().next().is_some_and(is_word_char);
                !(joins_before || joins_after)
            });
            match found {
                Some((word, ids)) => {
                    pieces.push(Piece::Text(lower[plain_start..i].to_string()));
                    pieces.push(Piece::Added(word, ids));
                    i += word.len();
                    plain_start = i;
                }
                None => i += lower[i..].chars().next().map_or(1, char::len_utf8),
            }
        }
        pieces.push(Piece::Text(lower[plain_start..].to_string()));
        pieces
    }
}

enum Piece<'a> {
    Text(String),
    Added(&'a str, &'a [u32]),
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("merges", &self.merges.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .finish()
    }
}

impl ClipTokenizer {
    /// The SD 1.x tokenizer built from the vocabulary bundled into the binary.
    pub fn bundled() -> Result<Self> {
        Self::bundled_padding_with(END_OF_TEXT)
    }

    /// [`Self::bundled`] padding with `pad_token` (`!` for OpenCLIP's text towers: SD 2.x, SDXL's second).
    pub fn bundled_padding_with(pad_token: &str) -> Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(BUNDLED_BPE_GZ)
            .read_to_string(&mut text)
            .map_err(|e| Error::Tokenizer(format!("the bundled CLIP vocabulary is corrupt: {e}")))?;
        let merges: Vec<(String, String)> = text
            .lines()
            .skip(1)
            .take(BUNDLED_MERGES)
            .enumerate()
            .map(|(i, line)| parse_merge(line, i + 2, "bundled merges"))
            .collect::<Result<_>>()?;
        if merges.len() != BUNDLED_MERGES {
            return Err(Error::Tokenizer(format!(
                "the bundled CLIP vocabulary has {} merges, expected {BUNDLED_MERGES}",
                merges.len()
            )));
        }
        // Vocabulary order of OpenAI's simple_tokenizer: bytes, bytes + "</w>", merges, the two specials.
        let byte_chars: Vec<char> = bytes_to_unicode().iter().map(|&(_, c)| c).collect();
        let mut vocab: Vec<String> = byte_chars.iter().map(|c| c.to_string()).collect();
        vocab.extend(byte_chars.iter().map(|c| format!("{c}</w>")));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.push(START_OF_TEXT.to_string());
        vocab.push(END_OF_TEXT.to_string());
        // `dict(zip(vocab, range(len(vocab))))`: a repeated string keeps its last id.
        let ids: HashMap<String, u32> = vocab.into_iter().zip(0u32..).collect();
        Self::build(ids, &merges, pad_token)
    }

    /// Loads a model's tokenizer folder: `vocab.json`, `merges.txt` and, if present, the pad token
    /// from `special_tokens_map.json` (SD 1.x pads with `<|endoftext|>`, SD 2.x with `!`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| {
                Error::Tokenizer(format!(
                    "cannot read {}: {e} (a CLIP tokenizer folder needs vocab.json and merges.txt)",
                    dir.join(name).display()
                ))
            })
        };
        let vocab: HashMap<String, u32> = serde_json::from_str(&read("vocab.json")?).map_err(|e| {
            Error::Tokenizer(format!(
                "{} is not a token → id JSON map: {e}",
                dir.join("vocab.json").display()
            ))
        })?;
        let merges_text = read("merges.txt")?;
        let merges: Vec<(String, String)> = merges_text
            .lines()
            .enumerate()
            .filter(|(i, line)| !(line.is_empty() || *i == 0 && line.starts_with("#version")))
            .map(|(i, line)| parse_merge(line, i + 1, "merges.txt"))
            .collect::<Result<_>>()?;
        let pad = read_pad_token(dir).unwrap_or_else(|| END_OF_TEXT.to_string());
        Self::build(vocab, &merges, &pad)
    }

    fn build(vocab: HashMap<String, u32>, merges: &[(String, String)], pad_token: &str) -> Result<Self> {
        let lookup = |token: &str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| Error::Tokenizer(format!("the vocabulary lacks {token:?}; is this a CLIP tokenizer?")))
        };
        let mut byte_ids = [0u32; 256];
        let mut byte_end_ids = [0u32; 256];
        let mut char_to_byte = HashMap::with_capacity(256);
        for (byte, c) in bytes_to_unicode() {
            byte_ids[byte as usize] = lookup(&c.to_string())?;
            byte_end_ids[byte as usize] = lookup(&format!("{c}</w>"))?;
            char_to_byte.insert(c, byte);
        }
        let mut merge_table = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in (0u32..).zip(merges) {
            // A merge whose parts or result are not in the vocabulary can never apply.
            if let (Some(&l), Some(&r), Some(&m)) = (vocab.get(a), vocab.get(b), vocab.get(&format!("{a}{b}"))) {
                merge_table.entry((l, r)).or_insert((rank, m));
            }
        }
        let size = vocab.values().max().map_or(0, |&m| m as usize + 1);
        let mut tokens = vec![String::new(); size];
        for (token, &id) in &vocab {
            tokens[id as usize] = token.clone();
        }
        let word_re = Regex::new(WORD_PATTERN).map_err(|e| Error::Tokenizer(format!("word pattern: {e}")))?;
        Ok(Self {
            word_re,
            byte_ids,
            byte_end_ids,
            merges: Arc::new(merge_table),
            tokens: Arc::new(tokens),
            char_to_byte: Arc::new(char_to_byte),
            bos: lookup(START_OF_TEXT)?,
            eos: lookup(END_OF_TEXT)?,
            pad: lookup(pad_token)?,
            cache: Arc::new(Mutex::new(HashMap::new())),
            added: Arc::new(AddedTokens::default()),
        })
    }

    /// This tokenizer with `added` words (replacing any it had).
    pub fn with_added(&self, added: AddedTokens) -> Self {
        Self {
            added: Arc::new(added),
            ..self.clone()
        }
    }

    /// The size of CLIP's vocabulary: added words' ids come after it.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }
    pub fn eos_id(&self) -> u32 {
        self.eos
    }
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// Token ids of `text` with BOS and EOS, neither padded nor truncated.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.bos];
        // Special tokens typed literally are matched before cleaning (case-sensitively), as HF does.
        for (segment, special) in split_specials(text) {
            match special {
                Some(id) => ids.push(if id == 0 { self.bos } else { self.eos }),
                None => {
                    for piece in self.added.split(segment) {
                        match piece {
                            Piece::Text(text) => self.encode_segment(&text, &mut ids),
                            Piece::Added(_, added) => ids.extend_from_slice(added),
                        }
                    }
                }
            }
        }
        ids.push(self.eos);
        ids
    }

    /// `max_len` ids (77 for SD): BOS, tokens, EOS, padded with the pad token. A longer prompt keeps its
    /// first `max_len - 2` tokens (then EOS) and reports the rest in [`Tokenized::dropped`].
    pub fn encode_padded(&self, text: &str, max_len: usize) -> Tokenized {
        let max_len = max_len.max(2);
        let mut ids = self.encode(text);
        let mut dropped = String::new();
        let truncated = ids.len() > max_len;
        if truncated {
            dropped = self.decode(&ids[max_len - 1..ids.len() - 1]);
            ids.truncate(max_len - 1);
            ids.push(self.eos);
        }
        ids.resize(max_len, self.pad);
        Tokenized {
            ids,
            truncated,
            dropped,
        }
    }

    /// Text of `ids`, without special tokens and with words separated by single spaces.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if id == self.bos || id == self.eos {
                continue;
            }
            let Some(token) = self.tokens.get(id as usize) else {
                if let Some(word) = self.added.word_of(id) {
                    bytes.extend_from_slice(word.as_bytes());
                    bytes.push(b' ');
                }
                continue;
            };
            let (body, end_of_word) = match token.strip_suffix("</w>") {
                Some(body) => (body, true),
                None => (token.as_str(), false),
            };
            bytes.extend(body.chars().filter_map(|c| self.char_to_byte.get(&c).copied()));
            if end_of_word {
                bytes.push(b' ');
            }
        }
        String::from_utf8_lossy(&bytes).trim().to_string()
    }

    fn encode_segment(&self, segment: &str, ids: &mut Vec<u32>) {
        let cleaned = segment.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for word in self.word_re.find_iter(&cleaned) {
            let word = word.as_str();
            if let Some(cached) = cache.get(word) {
                ids.extend_from_slice(cached);
                continue;
            }
            let word_ids = self.bpe(word.as_bytes());
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            ids.extend_from_slice(&word_ids);
            cache.insert(word.to_string(), word_ids);
        }
    }

    /// Byte-level BPE of one word: repeatedly merge every occurrence of the lowest-ranked adjacent pair.
    fn bpe(&self, bytes: &[u8]) -> Vec<u32> {
        let Some((&last, init)) = bytes.split_last() else {
            return Vec::new();
        };
        let mut word: Vec<u32> = init.iter().map(|&b| self.byte_ids[b as usize]).collect();
        word.push(self.byte_end_ids[last as usize]);
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|pair| {
                    self.merges
                        .get(&(pair[0], pair[1]))
                        .map(|&(rank, _)| (rank, pair[0], pair[1]))
                })
                .min();
            let Some((_, left, right)) = best else { break };
            let merged = self.merges[&(left, right)].1;
            let mut next = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == left && word[i + 1] == right {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(word[i]);
                    i += 1;
                }
            }
            word = next;
        }
        word
    }
}

/// Splits `text` around literal `<|startoftext|>` (Some(0)) and `<|endoftext|>` (Some(1)).
fn split_specials(text: &str) -> Vec<(&str, Option<u8>)> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let next = [(START_OF_TEXT, 0u8), (END_OF_TEXT, 1u8)]
            .iter()
            .filter_map(|&(tok, id)| rest.find(tok).map(|pos| (pos, tok, id)))
            .min_by_key(|&(pos, _, _)| pos);
        match next {
            Some((pos, tok, id)) => {
                out.push((&rest[..pos], None));
                out.push(("", Some(id)));
                rest = &rest[pos + tok.len()..];
            }
            None => {
                out.push((rest, None));
                return out;
            }
        }
    }
}

fn parse_merge(line: &str, line_no: usize, what: &str) -> Result<(String, String)> {
    match line.split_once(' ') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => Ok((a.to_string(), b.to_string())),
        _ => Err(Error::Tokenizer(format!(
            "{what} line {line_no} is not a merge (\"left right\"): {line:?}"
        ))),
    }
}

/// `pad_token` of `special_tokens_map.json`: a string or `{"content": …}`; None when absent or unreadable.
fn read_pad_token(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("special_tokens_map.json")).ok()?;
    let map: serde_json::Value = serde_json::from_str(&text).ok()?;
    match map.get("pad_token")? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => other.get("content")?.as_str().map(str::to_string),
    }
}

/// GPT-2's reversible byte → printable char map, in vocabulary order: the printable Latin-1 bytes map to
/// themselves, the other 68 bytes to U+0100 onwards.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut out: Vec<(u8, char)> = (0..=255u8)
        .filter(|&b| printable(b))
        .map(|b| (b, char::from(b)))
        .collect();
    for (b, code) in (0..=255u8).filter(|&b| !printable(b)).zip(256u32..) {
        // 256..=323 are all valid chars.
        out.push((b, char::from_u32(code).unwrap_or('\u{FFFD}')));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection_in_gpt2_order() {
        let map = bytes_to_unicode();
        assert_eq!(map.len(), 256);
        assert_eq!(map[0], (b'!', '!'));
        // The first non-printable byte (0x00) comes right after the 188 printable ones, as U+0100.
        assert_eq!(map[188], (0, '\u{100}'));
        assert_eq!(map.iter().find(|(b, _)| *b == b' ').map(|p| p.1), Some('\u{120}'));
        let chars: std::collections::HashSet<char> = map.iter().map(|p| p.1).collect();
        assert_eq!(chars.len(), 256);
    }

    #[test]
    fn specials_are_split_out() {
        let parts = split_specials("a<|endoftext|>b <|startoftext|>");
        assert_eq!(
            parts,
            vec![("a", None), ("", Some(1)), ("b ", None), ("", Some(0)), ("", None)]
        );
    }
}
