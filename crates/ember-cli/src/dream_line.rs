//! `invoke>` command lines, InvokeAI 2.x style: `a red fox -s 30 -S 42 -W 512 -H 512 -C 7.5 -A k_lms`.
//!
//! Splitting follows InvokeAI's `Args.parse_cmd`: a line that starts with `"` has the first shell word as its
//! prompt; a line that starts with `-` has no prompt before its switches (a bare word among them is the prompt);
//! otherwise the prompt is everything before the first whitespace followed by `-x` or `--x` (x a letter). The
//! switch part is split like Python's `shlex.split(s, comments=True)` (POSIX mode), which also reads back the
//! `Dream` chunk Ember and InvokeAI write into every PNG: that is what `!fetch` relies on ([`fetch_command`]).

use crate::args::Switches;
use clap::Parser;
use ember::image::metadata::{quote, quote_if_needed};
use ember::request::Outcrop;
use ember::sample::denoiser::PredictionType;
use ember::sample::schedule::TimestepSpacing;
use ember::Error;
use std::path::Path;

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

/// The command line that made a PNG: its `Dream` chunk (Ember's and InvokeAI's), else one rebuilt from its
/// `sd-metadata` JSON (InvokeAI 2.x's RFC #266 layout, plus Ember's `prediction_type` and `timestep_spacing`).
pub fn fetch_command(path: &Path) -> ember::Result<String> {
    command_from_text_chunks(path, &ember::image::png_meta::read_png_text(path)?)
}

/// [`fetch_command`] on text chunks already read from the PNG at `path` (named in errors).
pub fn command_from_text_chunks(path: &Path, chunks: &[(String, String)]) -> ember::Result<String> {
    let get = |key: &str| chunks.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    if let Some(dream) = get("Dream").map(str::trim).filter(|d| !d.is_empty()) {
        // InvokeAI 2.0 wrote `Dream: "prompt" -s …`'s body; some versions kept a leading `!dream `.
        return Ok(dream.strip_prefix("!dream ").unwrap_or(dream).to_string());
    }
    let json = get("sd-metadata").ok_or_else(|| {
        Error::image(
            path,
            "it has no Dream or sd-metadata text chunk: it was not made by Ember or InvokeAI",
        )
    })?;
    let doc: serde_json::Value =
        serde_json::from_str(json).map_err(|e| Error::image(path, format!("its sd-metadata is not JSON: {e}")))?;
    command_from_sd_metadata(&doc["image"]).ok_or_else(|| Error::image(path, "its sd-metadata has no prompt"))
}

/// Rebuilds a command line from sd-metadata's `image` object.
fn command_from_sd_metadata(image: &serde_json::Value) -> Option<String> {
    let prompt = match &image["prompt"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) if parts.len() == 1 => parts[0]["prompt"].as_str()?.to_string(),
        // A legacy blend: `a:0.25 b:0.75`.
        serde_json::Value::Array(parts) => parts
            .iter()
            .map(|p| Some(format!("{}:{}", p["prompt"].as_str()?, p["weight"].as_f64()?)))
            .collect::<Option<Vec<_>>>()?
            .join(" "),
        _ => return None,
    };
    let mut line = vec![quote(&prompt)];
    let mut push = |flag: &str, key: &str| {
        let v = &image[key];
        let text = match v {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => quote_if_needed(s),
            _ => return,
        };
        line.push(format!("{flag} {text}"));
    };
    for (flag, key) in [
        ("-s", "steps"),
        ("-S", "seed"),
        ("-W", "width"),
        ("-H", "height"),
        ("-C", "cfg_scale"),
        ("-A", "sampler"),
    ] {
        push(flag, key);
    }
    if image["type"] == "img2img" || image["init_image_path"].is_string() {
        push("-I", "init_image_path");
        push("-f", "strength");
        if image["fit"] == true {
            line.push("--fit".to_string());
        }
        // Inpainting: InvokeAI 2.x web's `mask_image_path` (Ember writes it too), then Ember's options.
        if let Some(mask) = image["mask_image_path"].as_str().filter(|m| !m.is_empty()) {
            line.push(format!("-M {}", quote_if_needed(mask)));
        }
        if image["invert_mask"] == true {
            line.push("--invert-mask".to_string());
        }
        if let Some(blur) = image["mask_blur"].as_u64().filter(|&b| b > 0) {
            line.push(format!("--mask-blur {blur}"));
        }
        if let Some(outcrop) = sd_outcrop(&image["outcrop"]).filter(|o| !o.is_empty()) {
            line.push(format!("--outcrop {outcrop}"));
        }
        if image["paste_back"] == false {
            line.push("--no-paste-back".to_string());
        }
    }
    if let Some(variations) = image["variations"].as_array().filter(|v| !v.is_empty()) {
        let list: Option<Vec<String>> = variations
            .iter()
            .map(|v| Some(format!("{}:{}", v["seed"].as_u64()?, v["weight"].as_f64()?)))
            .collect();
        if let Some(list) = list {
            line.push(format!("-V {}", list.join(",")));
        }
    }
    if image["seamless"] == true {
        line.push("--seamless".to_string());
    }
    if image["vae_tiling"] == true {
        line.push("--vae-tiling".to_string());
    }
    for (flag, key) in [("--threshold", "threshold"), ("--perlin", "perlin")] {
        if image[key].as_f64().is_some_and(|v| v > 0.0) {
            line.push(format!("{flag} {}", image[key]));
        }
    }
    if image["downweight"] == "mask" {
        line.push("--downweight mask".to_string());
    }
    // Ember's record of what the model ran with: replayed as overrides, so another model's defaults (or a models-file
    // entry's) cannot change the image. A value this version does not know is left out rather than failing the line.
    if let Some(p) = image["prediction_type"]
        .as_str()
        .and_then(|p| p.parse::<PredictionType>().ok())
    {
        line.push(format!("--prediction-type {p}"));
    }
    if let Some(s) = image["timestep_spacing"]
        .as_str()
        .and_then(|s| s.parse::<TimestepSpacing>().ok())
    {
        line.push(format!("--timestep-spacing {s}"));
    }
    if let Some(negative) = image["negative_prompt"].as_str().filter(|n| !n.is_empty()) {
        line.push(format!("--negative {}", quote(negative)));
    }
    Some(line.join(" "))
}

/// sd-metadata's `outcrop`: Ember's `{"top": 64, "left": 128, …}`, or InvokeAI's words `"top 64 left 128"`.
fn sd_outcrop(v: &serde_json::Value) -> Option<Outcrop> {
    match v {
        serde_json::Value::Object(sides) => {
            let side = |k: &str| {
                sides
                    .get(k)
                    .and_then(|px| px.as_u64())
                    .and_then(|px| u32::try_from(px).ok())
            };
            Some(Outcrop {
                top: side("top").unwrap_or(0),
                bottom: side("bottom").unwrap_or(0),
                left: side("left").unwrap_or(0),
                right: side("right").unwrap_or(0),
            })
        }
        serde_json::Value::String(words) => Outcrop::parse(&words.split_whitespace().collect::<Vec<_>>()).ok(),
        _ => None,
    }
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
