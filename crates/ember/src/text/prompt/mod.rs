//! The prompt language: InvokeAI's syntax for weighting words, blending prompts and moving words into the
//! negative prompt, parsed into weighted text fragments that [`crate::text::conditioning`] encodes.
//!
//! Two layers, as in InvokeAI 2.3 (`ldm/invoke/conditioning.py`):
//! - [`parse_invokeai`] handles the InvokeAI 2.x conventions: `[words]` go to the negative prompt, and a
//!   prompt containing `:` is a legacy blend `a cat:0.25 a dog:0.75` (weights normalised to sum 1 unless
//!   `skip_normalize`, the `-x` switch). `\:` is a literal colon.
//! - [`parse`] is compel's syntax (what InvokeAI 3+ uses): `word+`, `word-`, `(phrase)++`, `(phrase)1.3`,
//!   `"phrase"0.8`, `(phrase).attend(1.2)`, nesting (weights multiply), `\(` `\)` `\"` escapes, and the
//!   whole-prompt blend `("a photo", "a painting").blend(1, 1)` (`no_normalize` as last argument).
//!
//! Leniency follows compel: unbalanced parentheses or stray operators at the top level are plain text.
//! A malformed `.blend(…)` and compel features Ember does not implement (`.swap`, `.and`)
//! are errors, since reading them as text would silently give a very different image. LoRA terms are taken out
//! before parsing ([`take_loras`]).

mod loras;
mod parse;
#[cfg(test)]
mod tests;

pub use loras::{take_loras, LoraUse};

use crate::{Error, Result};
use regex::Regex;
use std::sync::OnceLock;

/// A run of prompt text with one weight (1 = neutral; > 1 emphasised; < 1 de-emphasised).
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    pub text: String,
    pub weight: f64,
}

/// A blend of several weighted prompts: their conditionings are mixed by `weights`.
#[derive(Debug, Clone, PartialEq)]
pub struct Blend {
    pub prompts: Vec<Vec<Fragment>>,
    pub weights: Vec<f64>,
    /// Divide the weights by their sum before mixing.
    pub normalize: bool,
}

/// A parsed prompt: weighted fragments, or a blend of several.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Weighted(Vec<Fragment>),
    Blend(Blend),
}

/// A prompt line split the InvokeAI 2.x way.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedPrompt {
    pub prompt: Prompt,
    /// The `[bracketed]` words, space-separated ("" when none), for the negative prompt.
    pub negative: String,
    /// Things the user should know (e.g. legacy blend weights that sum to zero).
    pub warnings: Vec<String>,
}

/// Parses compel's syntax (no `[ ]` or `:` handling; see [`parse_invokeai`]).
pub fn parse(text: &str) -> Result<Prompt> {
    // compel enforces a space after each comma before parsing.
    let mut spaced = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        spaced.push(c);
        if c == ',' && chars.peek().is_some_and(|n| !n.is_whitespace()) {
            spaced.push(' ');
        }
    }
    if spaced.trim().is_empty() {
        return Ok(Prompt::Weighted(vec![empty_fragment()]));
    }
    reject_unsupported(&spaced)?;
    let chars: Vec<char> = spaced.chars().collect();
    check_nesting(&chars)?;
    match parse::parse_blend(&chars).map_err(|msg| Error::invalid("prompt", msg))? {
        Some(tree) => Ok(Prompt::Blend(Blend {
            prompts: tree.prompts.iter().map(|nodes| fragments(nodes)).collect(),
            weights: tree.weights,
            normalize: tree.normalize,
        })),
        None => Ok(Prompt::Weighted(fragments(&parse::Parser::new(&chars).prompt(0)))),
    }
}

/// Parses a prompt as InvokeAI 2.x did: newlines become spaces, `[words]` are moved out, a prompt with
/// `:` weights becomes a legacy blend, anything else goes to [`parse`].
pub fn parse_invokeai(text: &str, skip_normalize: bool) -> Result<ParsedPrompt> {
    let text = text.replace('\n', " ");
    let (positive, negative) = split_negative(&text);
    let (subprompts, warning) = split_weighted_subprompts(&positive, skip_normalize);
    let prompt = if subprompts.len() > 1 {
        let mut prompts = Vec::with_capacity(subprompts.len());
        for (sub, _) in &subprompts {
            match parse(sub)? {
                Prompt::Weighted(fragments) => prompts.push(fragments),
                Prompt::Blend(_) => {
                    return Err(Error::invalid(
                        "prompt",
                        "a .blend() cannot be part of a `text:weight` blend; use one kind of blend",
                    ))
                }
            }
        }
        Prompt::Blend(Blend {
            prompts,
            weights: subprompts.iter().map(|(_, w)| *w).collect(),
            normalize: !skip_normalize,
        })
    } else {
        // InvokeAI 2.x left `\:` as typed when there was no blend (the backslash reached the tokenizer);
        // Ember makes it the literal colon the user asked for.
        parse(&positive.replace("\\:", ":"))?
    };
    let mut warnings: Vec<String> = warning.into_iter().collect();
    if subprompts.len() > 1 {
        warnings.extend(digit_colon_warning(&positive));
    }
    Ok(ParsedPrompt {
        prompt,
        negative,
        warnings,
    })
}

/// A `:` between two digits (`12:30 pm`, `16:9`) makes InvokeAI's `text:weight` blend, which is rarely what such a
/// prompt means: says how it was read and how to write a literal colon.
fn digit_colon_warning(text: &str) -> Option<String> {
    static DIGIT_COLON: OnceLock<Regex> = OnceLock::new();
    let re = DIGIT_COLON.get_or_init(|| Regex::new(r"(^|[^\\\d])(\d+):(\d+(?:\.\d+)?)").expect("valid regex"));
    let found = re.captures(text)?;
    let (left, right) = (found.get(2)?.as_str(), found.get(3)?.as_str());
    Some(format!(
        "`{left}:{right}` is read as a `:` blend (the text before it weighted {right}); write `{left}\\:{right}` for a \
         literal colon"
    ))
}

/// InvokeAI 2.x's `[negative words]`: returns the prompt with each `[…]` replaced by a space (runs of
/// spaces collapsed) and the bracketed texts joined by spaces.
pub fn split_negative(text: &str) -> (String, String) {
    static BRACKETS: OnceLock<Regex> = OnceLock::new();
    static SPACES: OnceLock<Regex> = OnceLock::new();
    let brackets = BRACKETS.get_or_init(|| Regex::new(r"\[(.*?)\]").expect("valid regex"));
    let words: Vec<&str> = brackets
        .captures_iter(text)
        .filter_map(|c| c.get(1).map(|m| m.as_str()))
        .collect();
    if words.is_empty() {
        return (text.to_string(), String::new());
    }
    let spaces = SPACES.get_or_init(|| Regex::new(r" +").expect("valid regex"));
    let cleaned = brackets.replace_all(text, " ");
    (spaces.replace_all(&cleaned, " ").into_owned(), words.join(" "))
}

/// InvokeAI 2.x's `split_weighted_subprompts`: `text:weight` pieces (`\:` is a literal colon; a missing
/// weight is 1). Weights are divided by their sum unless `skip_normalize`; a zero sum gives equal
/// weights and a warning.
pub fn split_weighted_subprompts(text: &str, skip_normalize: bool) -> (Vec<(String, f64)>, Option<String>) {
    static PIECE: OnceLock<Regex> = OnceLock::new();
    let piece = PIECE.get_or_init(|| {
        Regex::new(r"(?P<prompt>(?:\\:|[^:])+)(?::+(?P<weight>-?\d+(?:\.\d+)?)?\s*|$)").expect("valid regex")
    });
    let parts: Vec<(String, f64)> = piece
        .captures_iter(text)
        .map(|c| {
            let prompt = c.name("prompt").map_or("", |m| m.as_str()).replace("\\:", ":");
            let weight = c.name("weight").and_then(|m| m.as_str().parse().ok()).unwrap_or(1.0);
            (prompt, weight)
        })
        .collect();
    if skip_normalize {
        return (parts, None);
    }
    let sum: f64 = parts.iter().map(|(_, w)| w).sum();
    // An empty prompt has no pieces and nothing to weigh: no warning.
    if sum == 0.0 && !parts.is_empty() {
        let equal = 1.0 / parts.len().max(1) as f64;
        let warning = "the `:` weights of the prompt add up to zero; using equal weights instead".to_string();
        return (parts.into_iter().map(|(p, _)| (p, equal)).collect(), Some(warning));
    }
    (parts.into_iter().map(|(p, w)| (p, w / sum)).collect(), None)
}

fn fragments(nodes: &[parse::Node]) -> Vec<Fragment> {
    let flat = parse::flatten(nodes);
    if flat.is_empty() {
        // compel: "empty is meaningful" — an empty prompt is encoded as "".
        return vec![empty_fragment()];
    }
    flat.into_iter()
        .map(|(text, weight)| Fragment { text, weight })
        .collect()
}

fn empty_fragment() -> Fragment {
    Fragment {
        text: String::new(),
        weight: 1.0,
    }
}

/// Deepest nesting of `(` accepted. The parser recurses once per level (a thread's stack holds a few thousand), and
/// no prompt needs more than a handful: each level multiplies the weight by at least 1.1.
pub const MAX_NESTING: usize = 100;

/// Refuses prompts whose unescaped `(` nest deeper than [`MAX_NESTING`] (counting unclosed ones, which compel reads
/// as text but the parser still explores).
fn check_nesting(chars: &[char]) -> Result<()> {
    let (mut depth, mut deepest, mut escaped) = (0usize, 0usize, false);
    for &c in chars {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_NESTING {
        return Err(Error::invalid(
            "prompt",
            format!(
                "parentheses nest {deepest} levels deep; at most {MAX_NESTING} are read (write `\\(` for a literal \
                 parenthesis)"
            ),
        ));
    }
    Ok(())
}

/// compel operators Ember does not implement; reading them as plain text would mislead.
fn reject_unsupported(text: &str) -> Result<()> {
    for (op, what) in [
        (".swap(", "cross-attention control (.swap)"),
        (".and(", "conjunctions (.and)"),
        (".add(", "conjunctions (.add)"),
    ] {
        if text.contains(op) {
            return Err(Error::invalid(
                "prompt",
                format!("{what} is not supported by Ember; remove `{op}…)` from the prompt"),
            ));
        }
    }
    Ok(())
}
