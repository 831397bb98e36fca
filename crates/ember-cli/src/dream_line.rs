//! `invoke>` command lines, InvokeAI 2.x style: `a red fox -s 30 -S 42 -W 512 -H 512 -C 7.5 -A k_lms`.
//!
//! Splitting follows InvokeAI's `Args.parse_cmd`: a line that starts with `"` has the first shell word as its
//! prompt; a line that starts with `-` has no prompt before its switches (a bare word among them is the prompt);
//! otherwise the prompt is everything before the first whitespace followed by `-x` or `--x` (x a letter). The
//! switch part is split like Python's `shlex.split(s, comments=True)` (POSIX mode), which also reads back the
//! `Dream` chunk Ember and InvokeAI write into every PNG: that is what `!fetch` relies on ([`crate::fetch`]).

use crate::args::Switches;
use clap::Parser;
use ember::Error;

/// One parsed `invoke>` line.
#[derive(Debug, Clone, PartialEq)]
pub struct DreamLine {
    pub prompt: String,
    pub switches: Switches,
}

/// The switches of a line, parsed by clap with the same definitions as `ember generate`.
#[derive(Debug, Parser)]
#[command(
    name = "invoke>",
    no_binary_name = true,
    disable_version_flag = true,
    disable_help_flag = true,
    // InvokeAI's argparse: the last of a repeated switch wins, so `!fetch` then `-S 2` edits the fetched seed.
    args_override_self = true,
    override_usage = "PROMPT [-s STEPS] [-S SEED] [-W WIDTH] [-H HEIGHT] [-C CFG] [-A SAMPLER] [-I INIT -f STRENGTH] …"
)]
struct LineParser {
    #[command(flatten)]
    switches: Switches,
    /// Words that are no switch's value: the prompt of a line that starts with a switch.
    #[arg(allow_hyphen_values = false)]
    words: Vec<String>,
}

/// Parses one command line (prompt and switches).
pub fn parse(line: &str) -> ember::Result<DreamLine> {
    let (prompt, words) = split_prompt(line)?;
    let parsed = LineParser::try_parse_from(&words).map_err(|e| {
        if let Some(message) = crate::args::unsupported_switch_in(&e) {
            return Error::invalid("command", format!("{message} (in: {line})"));
        }
        let text = e.render().to_string();
        // clap's message ends with a usage block and a "--help" hint that mean nothing at the prompt.
        let first = text
            .lines()
            .next()
            .unwrap_or("cannot parse the switches")
            .trim_start_matches("error: ");
        Error::invalid("command", format!("{first} (in: {line})"))
    })?;
    let prompt = match (prompt.is_empty(), parsed.words.is_empty()) {
        (true, _) => parsed.words.join(" "),
        (false, true) => prompt,
        (false, false) => {
            return Err(Error::invalid(
                "command",
                format!(
                "'{}' follows the switches but is not a switch's value; quote the whole prompt, e.g. \"{prompt} {}\"",
                parsed.words.join(" "),
                parsed.words.join(" ")
            ),
            ))
        }
    };
    Ok(DreamLine {
        prompt,
        switches: parsed.switches,
    })
}

/// What one line of a command file (`ember generate --from-file`, the REPL's `!replay`) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptLine<'a> {
    /// Blank or a `#` comment.
    Skip,
    /// `q`, `quit` or `exit`: the REPL's way out, which ends the file there.
    Quit,
    /// A `!` command (`!fetch`, `!switch`, …): not run from a file, since it works on the REPL's edit buffer and
    /// session; reported as skipped.
    Bang(&'a str),
    /// A generation line.
    Command(&'a str),
}

/// Classifies a (trimmed) line of a command file, as the REPL would read it.
pub fn script_line(line: &str) -> ScriptLine<'_> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        ScriptLine::Skip
    } else if matches!(line, "q" | "quit" | "exit") {
        ScriptLine::Quit
    } else if line.starts_with('!') {
        ScriptLine::Bang(line)
    } else {
        ScriptLine::Command(line)
    }
}

/// InvokeAI's prompt/switch split: `(prompt, switch words)`.
pub fn split_prompt(line: &str) -> ember::Result<(String, Vec<String>)> {
    let line = line.trim();
    if line.starts_with('-') {
        return Ok((String::new(), shell_split(line)?));
    }
    if line.starts_with('"') {
        let mut words = shell_split(line)?;
        if words.is_empty() {
            return Ok((String::new(), words));
        }
        let prompt = words.remove(0);
        return Ok((prompt, words));
    }
    match first_switch(line) {
        Some(at) => Ok((line[..at].trim_end().to_string(), shell_split(&line[at..])?)),
        None => Ok((line.to_string(), Vec::new())),
    }
}

/// Byte offset of the first ` -x` / ` --x` (x an ASCII letter) that follows at least one prompt character:
/// InvokeAI's `^(.+?)\s(--?[a-zA-Z].+)`, except that a one-letter switch may end the line (`a fox -g`), which
/// InvokeAI's regex reads as part of the prompt.
fn first_switch(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    (2..bytes.len()).find(|&i| {
        let switch = match &bytes[i..] {
            [b'-', b'-', c, ..] | [b'-', c, ..] => c.is_ascii_alphabetic(),
            _ => false,
        };
        bytes[i - 1].is_ascii_whitespace() && switch
    })
}

/// Splits like Python's `shlex.split(s, comments=True)`: whitespace separates words; `'…'` is literal; inside
/// `"…"` a backslash escapes only `"` and `\`; outside quotes it escapes any character; an unquoted `#` ends
/// the line.
pub fn shell_split(s: &str) -> ember::Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word exists once it has a character or a (possibly empty) quoted part.
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '#' => break,
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(next) => word.push(next),
                    None => return Err(unclosed(s, "a trailing backslash escapes nothing")),
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(unclosed(s, "a single quote is not closed")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(unclosed(s, "a double quote is not closed")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(unclosed(s, "a double quote is not closed")),
                    }
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn unclosed(s: &str, what: &str) -> Error {
    Error::invalid("command", format!("{what} in: {s}"))
}

/// `-V 1234:0.1,5678:0.2` → `[(1234, 0.1), (5678, 0.2)]`.
pub fn parse_variations(list: &str) -> ember::Result<Vec<(u32, f64)>> {
    let bad = |part: &str, why: &str| {
        Error::invalid(
            "with_variations",
            format!("'{part}' {why}; write seed:weight pairs separated by commas, e.g. -V 1234:0.1,5678:0.2"),
        )
    };
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (seed, weight) = part.split_once(':').ok_or_else(|| bad(part, "has no ':'"))?;
            let seed = seed
                .trim()
                .parse::<u32>()
                .map_err(|_| bad(part, "has no seed in 0..=4294967295"))?;
            let weight = weight
                .trim()
                .parse::<f64>()
                .map_err(|_| bad(part, "has no number as weight"))?;
            if !(0.0..=1.0).contains(&weight) {
                return Err(bad(part, "has a weight outside [0, 1]"));
            }
            Ok((seed, weight))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_shlex_rules() {
        // Expected values: Python 3.11 `shlex.split(s, comments=True)`.
        let cases: [(&str, &[&str]); 7] = [
            (r#""a \"b\" \\c" -s 5"#, &[r#"a "b" \c"#, "-s", "5"]),
            (r#""\(x\)""#, &[r"\(x\)"]),
            ("'it''s' x", &["its", "x"]),
            (r"a\ b c", &["a b", "c"]),
            ("-s 5 # comment -S 3", &["-s", "5"]),
            ("a#b c", &["a"]),
            (r#""""#, &[""]),
        ];
        for (input, want) in cases {
            assert_eq!(shell_split(input).unwrap(), want, "{input}");
        }
        assert!(shell_split("\"open").is_err());
        assert!(shell_split("'open").is_err());
    }
}
