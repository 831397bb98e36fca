//! compel's prompt grammar (the one InvokeAI 3+ parses), as a hand-written recursive-descent parser.
//!
//! It follows compel 2.x's pyparsing grammar (`compel/prompt_parser.py`) rule by rule, including its
//! leniency: at the top level anything that does not parse as syntax is taken literally, so an unbalanced
//! `(` or a stray `+` becomes plain text rather than an error. Inside `( )` and `" "` only syntax-free words,
//! `,`, `.` and nested groups are allowed; if the inside does not parse, the whole group falls back to text.
//!
//! Backtracking: compel's grammar tries a group as an attention target, then as a weighted group, then as a
//! plain group, so a naive parser reads each `(` three times and nested groups cost 3ⁿ (24 unclosed
//! parentheses never finished). The group readers are memoised by position (a packrat parser), which makes
//! the parse linear in the number of positions; [`super::MAX_NESTING`] bounds the recursion depth.

use std::cell::RefCell;
use std::collections::HashMap;

/// One node of the parse tree: text, or a group whose weight multiplies into everything inside it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Text(String),
    Group { weight: f64, children: Vec<Node> },
}

/// compel's per-`+` and per-`-` factors (`PromptParser(attention_plus_base=1.1, attention_minus_base=0.9)`).
const PLUS_BASE: f64 = 1.1;
const MINUS_BASE: f64 = 0.9;

/// Characters with a meaning in compel's grammar; `\` before one of them makes it literal.
const SYNTACTIC: &[char] = &['(', ')', '"', ',', '.', '+', '-', '='];

fn is_syntactic(c: char) -> bool {
    SYNTACTIC.contains(&c)
}

/// A blend found by [`parse_blend`]: the sub-prompts' trees, their weights and whether to normalise them.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct BlendTree {
    pub prompts: Vec<Vec<Node>>,
    pub weights: Vec<f64>,
    pub normalize: bool,
}

/// Why a `.blend(…)` was not accepted (a message for the user).
pub(super) type BlendError = String;

/// A group's children and the position after it, or None when no group starts there.
type GroupParse = Option<(Vec<Node>, usize)>;

pub(super) struct Parser<'a> {
    s: &'a [char],
    /// Memoised [`Parser::paren_children`] and [`Parser::quoted`] results, by start position.
    parens: RefCell<HashMap<usize, GroupParse>>,
    quotes: RefCell<HashMap<usize, GroupParse>>,
}

impl<'a> Parser<'a> {
    pub fn new(s: &'a [char]) -> Self {
        Self {
            s,
            parens: RefCell::default(),
            quotes: RefCell::default(),
        }
    }

    /// `read(p)`, computed once per position.
    fn memoised(
        &self,
        cache: &RefCell<HashMap<usize, GroupParse>>,
        p: usize,
        read: impl FnOnce() -> GroupParse,
    ) -> GroupParse {
        if let Some(hit) = cache.borrow().get(&p) {
            return hit.clone();
        }
        let parsed = read();
        cache.borrow_mut().insert(p, parsed.clone());
        parsed
    }

    fn at(&self, p: usize) -> Option<char> {
        self.s.get(p).copied()
    }

    fn skip_ws(&self, mut p: usize) -> usize {
        while self.at(p).is_some_and(char::is_whitespace) {
            p += 1;
        }
        p
    }

    fn literal(&self, p: usize, lit: &str) -> Option<usize> {
        let mut q = p;
        for c in lit.chars() {
            if self.at(q)? != c {
                return None;
            }
            q += 1;
        }
        Some(q)
    }

    /// compel's top-level `prompt`: attention, quoted, parenthesised or, failing those, a free word
    /// (any run of non-whitespace, taken literally).
    pub fn prompt(&self, mut p: usize) -> Vec<Node> {
        let end = self.s.len();
        let mut out = Vec::new();
        loop {
            p = self.skip_ws(p);
            if p >= end {
                return out;
            }
            if let Some((node, q)) = self
                .attention(p)
                .or_else(|| self.quoted(p).map(|(nodes, q)| (group(1.0, nodes), q)))
                .or_else(|| self.paren(p))
            {
                out.push(node);
                p = q;
            } else {
                let q = (p..end).find(|&i| self.s[i].is_whitespace()).unwrap_or(end);
                out.push(Node::Text(unescape(&self.s[p..q].iter().collect::<String>())));
                p = q;
            }
        }
    }

    /// `target.attend(w)`, `(…)w` / `"…"w` with w = `+…`, `-…` or a number, or `word+…` / `word-…`.
    fn attention(&self, p: usize) -> Option<(Node, usize)> {
        // Explicit form; pyparsing skips whitespace between its parts.
        if let Some((children, q)) = self.operator_target(p) {
            let q = self.skip_ws(q);
            if let Some(q) = self.literal(q, ".attend") {
                let q = self.skip_ws(q);
                let q = self.literal(q, "(")?;
                let (weight, q) = self.weight_op(self.skip_ws(q), true)?;
                let q = self.literal(self.skip_ws(q), ")")?;
                return Some((group(weight, children), q));
            }
        }
        // Implicit forms: the operator must follow the target without whitespace.
        if let Some((children, q)) = self.quoted(p).or_else(|| self.paren_children(p)) {
            if let Some((weight, r)) = self.weight_op(q, true) {
                return Some((group(weight, children), r));
            }
        }
        let (word, q) = self.word(p)?;
        let (weight, r) = self.weight_op(q, false)?;
        Some((group(weight, vec![Node::Text(word)]), r))
    }

    /// compel's `potential_operator_target`: quoted, parenthesised or a syntax-free word.
    fn operator_target(&self, p: usize) -> Option<(Vec<Node>, usize)> {
        self.quoted(p)
            .or_else(|| self.paren_children(p))
            .or_else(|| self.word(p).map(|(w, q)| (vec![Node::Text(w)], q)))
    }

    /// `+…` → 1.1ⁿ, `-…` → 0.9ⁿ, or (when `numbers`) a number such as `1.3`, `.5`, `2`.
    fn weight_op(&self, p: usize, numbers: bool) -> Option<(f64, usize)> {
        let c = self.at(p)?;
        if c == '+' || c == '-' {
            let n = self.s[p..].iter().take_while(|&&x| x == c).count();
            let base = if c == '+' { PLUS_BASE } else { MINUS_BASE };
            return Some((base.powf(n as f64), p + n));
        }
        if !numbers {
            return None;
        }
        let digits = |from: usize| self.s[from..].iter().take_while(|x| x.is_ascii_digit()).count();
        let int = digits(p);
        let q = if self.at(p + int) == Some('.') && (int > 0 || digits(p + 1) > 0) {
            p + int + 1 + digits(p + int + 1)
        } else if int > 0 {
            p + int
        } else {
            return None;
        };
        let text: String = self.s[p..q].iter().collect();
        text.parse().ok().map(|w| (w, q))
    }

    /// compel's `non_syntax_word`: escaped syntax characters, `+`/`-` inside a word (`well-known`), and
    /// any other non-space, non-syntax character. Returns the text with `\(`, `\)`, `\"` unescaped.
    fn word(&self, p: usize) -> Option<(String, usize)> {
        let mut q = p;
        while let Some(c) = self.at(q) {
            let next = self.at(q + 1);
            if c == '\\' && next.is_some_and(is_syntactic) {
                q += 2;
            } else if (!c.is_whitespace() && !is_syntactic(c))
                // `+`/`-` belong to a word when a word character follows (`well-known`).
                || ((c == '+' || c == '-') && next.is_some_and(|n| !n.is_whitespace() && !is_syntactic(n)))
            {
                q += 1;
            } else {
                break;
            }
        }
        (q > p).then(|| (unescape(&self.s[p..q].iter().collect::<String>()), q))
    }

    fn paren(&self, p: usize) -> Option<(Node, usize)> {
        self.paren_children(p).map(|(children, q)| (group(1.0, children), q))
    }

    /// `( … )` with compel's inner grammar; None when unbalanced or the inside does not parse.
    fn paren_children(&self, p: usize) -> GroupParse {
        if self.at(p) != Some('(') {
            return None;
        }
        self.memoised(&self.parens, p, || {
            let (children, q) = self.inner(p + 1)?;
            let q = self.skip_ws(q);
            Some((children, self.literal(q, ")")?))
        })
    }

    /// compel's `fragment_including_commas_or_periods`: groups, syntax-free words, `,` and `.`; stops at
    /// the first thing it cannot read (the caller checks what comes next).
    fn inner(&self, mut p: usize) -> Option<(Vec<Node>, usize)> {
        let mut out = Vec::new();
        loop {
            let q = self.skip_ws(p);
            if let Some((node, r)) = self
                .attention(q)
                .or_else(|| self.paren(q))
                .or_else(|| self.quoted(q).map(|(nodes, r)| (group(1.0, nodes), r)))
                .or_else(|| self.word(q).map(|(w, r)| (Node::Text(w), r)))
            {
                out.push(node);
                p = r;
            } else if let Some(c @ (',' | '.')) = self.at(q) {
                out.push(Node::Text(c.to_string()));
                p = q + 1;
            } else {
                return Some((out, p));
            }
        }
    }

    /// `"…"` (`\"` inside is a literal quote); its content must parse with the inner grammar.
    fn quoted(&self, p: usize) -> GroupParse {
        if self.at(p) != Some('"') {
            return None;
        }
        self.memoised(&self.quotes, p, || self.read_quoted(p + 1))
    }

    fn read_quoted(&self, start: usize) -> GroupParse {
        let mut q = start;
        loop {
            match self.at(q)? {
                '\\' if self.at(q + 1) == Some('"') => q += 2,
                '"' => break,
                _ => q += 1,
            }
        }
        let content = &self.s[start..q];
        if content.iter().all(|c| c.is_whitespace()) {
            return Some((vec![Node::Text(String::new())], q + 1));
        }
        let sub = Parser::new(content);
        let (nodes, r) = sub.inner(0)?;
        (sub.skip_ws(r) == content.len()).then_some((nodes, q + 1))
    }
}

/// A whole-prompt blend `(target, …).blend(w, …[, no_normalize])`. `Ok(None)`: the text is not a blend;
/// `Err`: it is one but malformed (compel raises there too).
pub(super) fn parse_blend(s: &[char]) -> Result<Option<BlendTree>, BlendError> {
    let parser = Parser::new(s);
    let Some(mut p) = parser.literal(parser.skip_ws(0), "(") else {
        return Ok(None);
    };
    let mut prompts = Vec::new();
    loop {
        p = parser.skip_ws(p);
        // compel's `potential_operator_target | quoted_prompt`: a quoted target that is not valid inner
        // syntax is read with the full (lenient) prompt grammar.
        let target = parser.operator_target(p).or_else(|| {
            let start = parser.literal(p, "\"")?;
            let close = (start..s.len()).find(|&i| s[i] == '"' && (i == start || s[i - 1] != '\\'))?;
            Some((Parser::new(&s[start..close]).prompt(0), close + 1))
        });
        let Some((nodes, q)) = target else {
            return Ok(None);
        };
        prompts.push(nodes);
        p = parser.skip_ws(q);
        match parser.at(p) {
            Some(',') => p += 1,
            Some(')') => break,
            _ => return Ok(None),
        }
    }
    let Some(q) = parser.literal(parser.skip_ws(p + 1), ".blend") else {
        return Ok(None);
    };
    let Some(q) = parser.literal(parser.skip_ws(q), "(") else {
        return Err("`.blend` must be followed by its weights in parentheses, e.g. .blend(1, 1)".into());
    };
    let Some(close) = (q..s.len()).find(|&i| s[i] == ')') else {
        return Err("the weights of `.blend(` are missing their closing `)`".into());
    };
    if parser.skip_ws(close + 1) != s.len() {
        return Err("a `.blend(…)` must be the whole prompt; move the other words into the blended prompts".into());
    }
    let args: String = s[q..close].iter().collect();
    let mut weights = Vec::new();
    let mut normalize = true;
    let parts: Vec<&str> = args.split(',').map(str::trim).filter(|a| !a.is_empty()).collect();
    for (i, arg) in parts.iter().enumerate() {
        if *arg == "no_normalize" && i + 1 == parts.len() {
            normalize = false;
        } else {
            // compel accepts plain decimals only (no exponents, no inf/NaN).
            let w = Some(arg)
                .filter(|a| a.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '-'))
                .and_then(|a| a.parse::<f64>().ok())
                .ok_or_else(|| format!("blend weight {arg:?} is not a number (expected e.g. .blend(1, 1))"))?;
            weights.push(w);
        }
    }
    if weights.is_empty() {
        weights = vec![1.0; prompts.len()];
    }
    if weights.len() != prompts.len() {
        return Err(format!(
            "{} prompts are blended with {} weights; give one weight per prompt",
            prompts.len(),
            weights.len()
        ));
    }
    Ok(Some(BlendTree {
        prompts,
        weights,
        normalize,
    }))
}

fn group(weight: f64, children: Vec<Node>) -> Node {
    Node::Group { weight, children }
}

/// compel's `Fragment` unescaping: only `\(`, `\)` and `\"` lose their backslash.
fn unescape(text: &str) -> String {
    if text.contains('\\') {
        text.replace("\\(", "(").replace("\\)", ")").replace("\\\"", "\"")
    } else {
        text.to_string()
    }
}

/// Weighted text fragments of a tree: weights multiply down the groups, and neighbours with equal weights
/// are fused with a space between them (compel's `flatten` + `fuse_fragments`).
pub(super) fn flatten(nodes: &[Node]) -> Vec<(String, f64)> {
    fn walk(nodes: &[Node], scale: f64, out: &mut Vec<(String, f64)>) {
        for node in nodes {
            match node {
                Node::Text(text) => out.push((text.clone(), 1.0 * scale)),
                Node::Group { weight, children } => walk(children, scale * weight, out),
            }
        }
    }
    let mut flat = Vec::new();
    walk(nodes, 1.0, &mut flat);
    let mut fused: Vec<(String, f64)> = Vec::new();
    for (text, weight) in flat {
        match fused.last_mut() {
            Some(last) if last.1 == weight => {
                last.0.push(' ');
                last.0.push_str(&text);
            }
            _ => fused.push((text, weight)),
        }
    }
    fused
}
