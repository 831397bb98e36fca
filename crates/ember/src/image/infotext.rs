//! AUTOMATIC1111's `parameters` text ("infotext"), written and read as A1111 does (its `create_infotext` and
//! `parse_generation_parameters`):
//!
//! ```text
//! a red fox, <lora:film:0.8>
//! Negative prompt: blurry
//! Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, Model: "sd, v1.5"
//! ```
//!
//! The last line holds the settings when it has at least three `Key: value` pairs, else it is part of the prompt.
//! A value with `,`, `:` or a line break is written as a JSON string (A1111's `quote`); Ember also quotes one with a
//! `"`, which A1111's reader would otherwise take for the start of a quoted value.

/// A1111's `quote`: the value as is, or JSON-quoted when it has `,`, `:`, a line break (or, here, a `"`).
pub fn quote(value: &str) -> String {
    if value.contains([',', ':', '\n', '"']) {
        serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
    } else {
        value.to_string()
    }
}

/// The whole text: prompt, `Negative prompt:` line when `negative` is not empty, the settings line.
pub fn format(prompt: &str, negative: &str, fields: &[(&str, String)]) -> String {
    let settings: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {}", quote(v))).collect();
    let negative = if negative.is_empty() {
        String::new()
    } else {
        format!("\nNegative prompt: {negative}")
    };
    format!("{prompt}{negative}\n{}", settings.join(", "))
        .trim()
        .to_string()
}

/// A parsed `parameters` text: prompts and the settings as A1111 keeps them (strings, in order; quoted values
/// unquoted; `Size: 512x768` kept whole).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Infotext {
    pub prompt: String,
    pub negative_prompt: String,
    pub settings: Vec<(String, String)>,
}

impl Infotext {
    /// The value of `key`, the first one when repeated.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A1111's `parse_generation_parameters`, without its defaults for missing keys.
pub fn parse(text: &str) -> Infotext {
    let mut lines: Vec<&str> = text.trim().split('\n').collect();
    let last = lines.pop().unwrap_or("");
    let pairs = key_values(last);
    let settings = if pairs.len() >= 3 {
        pairs
    } else {
        lines.push(last);
        Vec::new()
    };
    let (mut prompt, mut negative, mut in_negative) = (String::new(), String::new(), false);
    for line in lines {
        let mut line = line.trim();
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            line = rest.trim();
        }
        let target = if in_negative { &mut negative } else { &mut prompt };
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line);
    }
    Infotext {
        prompt,
        negative_prompt: negative,
        settings,
    }
}

/// `re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', line)`, quoted values JSON-unquoted and
/// values trimmed. Where no pair starts, the search moves on one character, as the regex search does.
pub fn key_values(line: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        match pair_at(&chars, at) {
            Some((key, value, next)) => {
                out.push((key, value));
                at = next.max(at + 1);
            }
            None => at += 1,
        }
    }
    out
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// One match of the pair pattern starting at `at`: (key, value, where the search goes on).
fn pair_at(chars: &[char], mut at: usize) -> Option<(String, String, usize)> {
    while chars.get(at).is_some_and(|c| c.is_whitespace()) {
        at += 1;
    }
    let key_start = at;
    if !chars.get(at).copied().is_some_and(is_word) {
        return None;
    }
    at += 1;
    // `[\w \-/]+` is greedy and cannot take the `:` that must follow, so no backtracking can help.
    while chars
        .get(at)
        .is_some_and(|&c| is_word(c) || matches!(c, ' ' | '-' | '/'))
    {
        at += 1;
    }
    if at - key_start < 2 || chars.get(at) != Some(&':') {
        return None;
    }
    let key: String = chars[key_start..at].iter().collect();
    at += 1;
    while chars.get(at).is_some_and(|c| c.is_whitespace()) {
        at += 1;
    }
    // A quoted value, when its closing quote is followed by `,` or the end.
    if chars.get(at) == Some(&'"') {
        let mut end = at + 1;
        while let Some(&c) = chars.get(end) {
            match c {
                '\\' if end + 1 < chars.len() => end += 2,
                '"' | '\\' => break,
                _ => end += 1,
            }
        }
        let closed = chars.get(end) == Some(&'"') && end > at + 1;
        if closed && matches!(chars.get(end + 1), None | Some(',')) {
            let quoted: String = chars[at..=end].iter().collect();
            let value = serde_json::from_str::<String>(&quoted).unwrap_or(quoted);
            return Some((key.trim().to_string(), value, end + 2));
        }
    }
    let mut end = at;
    while chars.get(end).is_some_and(|&c| c != ',') {
        end += 1;
    }
    let value: String = chars[at..end].iter().collect();
    Some((key.trim().to_string(), value.trim().to_string(), end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_follows_a1111() {
        assert_eq!(quote("sd-v1.5"), "sd-v1.5");
        assert_eq!(quote("sd, v1.5"), "\"sd, v1.5\"");
        assert_eq!(quote("a: 1"), "\"a: 1\"");
        assert_eq!(quote("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(
            quote("火, 水"),
            "\"火, 水\"",
            "non-ASCII stays as is (ensure_ascii=False)"
        );
    }

    #[test]
    fn parses_as_a1111_parses() {
        let text = "a cat, (fur)\n  more prompt\nNegative prompt: ugly\nworse\nSteps: 20, Sampler: DPM++ 2M Karras, \
                    CFG scale: 7, Seed: 1, Size: 512x768, Model: \"tiny, sd\", Lora hashes: \"a: 1, b: 2\", \
                    Odd: \"x\" y, Denoising strength: 0.6";
        let p = parse(text);
        assert_eq!(p.prompt, "a cat, (fur)\nmore prompt");
        assert_eq!(p.negative_prompt, "ugly\nworse");
        assert_eq!(p.get("Steps"), Some("20"));
        assert_eq!(p.get("Sampler"), Some("DPM++ 2M Karras"));
        assert_eq!(p.get("Size"), Some("512x768"));
        assert_eq!(p.get("Model"), Some("tiny, sd"));
        assert_eq!(p.get("Lora hashes"), Some("a: 1, b: 2"));
        // A quote not followed by `,`: the plain form takes the value up to the comma.
        assert_eq!(p.get("Odd"), Some("\"x\" y"));
        assert_eq!(p.get("Denoising strength"), Some("0.6"));
        // Fewer than three pairs: the line is prompt.
        let p = parse("a fox: red\nSteps: 5, Seed: 2");
        assert_eq!(
            (p.prompt.as_str(), p.settings.len()),
            ("a fox: red\nSteps: 5, Seed: 2", 0)
        );
        assert_eq!(parse("").prompt, "");
    }

    #[test]
    fn formats_and_reads_back() {
        let fields = [
            ("Steps", "20".to_string()),
            ("Sampler", "Euler a".to_string()),
            ("Model", "m: \"x\", y".to_string()),
        ];
        let text = format("fox", "", &fields);
        assert_eq!(text, "fox\nSteps: 20, Sampler: Euler a, Model: \"m: \\\"x\\\", y\"");
        let back = parse(&text);
        assert_eq!(back.prompt, "fox");
        let want: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        assert_eq!(back.settings, want);
        assert!(format("fox", "bad", &fields).starts_with("fox\nNegative prompt: bad\nSteps: 20"));
    }
}
