//! Tab completion at `invoke>`: `!` command names, switch names (from clap's definition of [`Switches`], so a new
//! switch completes without touching this file), sampler names (the engine's list), the values of switches with a
//! fixed set, model names after `!switch` (the models file), and file paths after `-I`, `-M` (and the other switches
//! that take a file or folder), `!fetch` and `!replay`.

use super::commands::COMMAND_NAMES;
use crate::args::Switches;
use clap::Args;
use ember::sample::SamplerKind;
use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};

/// The switches (by clap id) whose value is a file or folder.
const PATH_SWITCHES: &[&str] = &[
    "init_image",
    "init_mask",
    "outdir",
    "embedding",
    "embedding_dir",
    "lora",
    "lora_dir",
];

/// One switch of a generation line as clap defines it.
struct SwitchInfo {
    id: String,
    /// `-s`, `--steps` and any aliases (`--cfg_scale`): what may precede its value.
    spellings: Vec<String>,
    /// What completes a switch name: its short and long forms, not the aliases.
    shown: Vec<String>,
    takes_value: bool,
    /// A fixed set of values (`--downweight remove|mask`); empty for free values.
    values: Vec<String>,
}

/// The REPL's rustyline helper: completion only (no hints, highlighting or multi-line validation).
pub struct ReplHelper {
    files: FilenameCompleter,
    switches: Vec<SwitchInfo>,
}

impl Default for ReplHelper {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplHelper {
    pub fn new() -> Self {
        let command = Switches::augment_args(clap::Command::new("invoke"));
        let switches = command
            .get_arguments()
            .filter(|arg| !arg.is_positional())
            .map(|arg| {
                let mut shown = Vec::new();
                if let Some(short) = arg.get_short() {
                    shown.push(format!("-{short}"));
                }
                if let Some(long) = arg.get_long() {
                    shown.push(format!("--{long}"));
                }
                let mut spellings = shown.clone();
                spellings.extend(
                    arg.get_all_aliases()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|a| format!("--{a}")),
                );
                spellings.extend(
                    arg.get_all_short_aliases()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|a| format!("-{a}")),
                );
                SwitchInfo {
                    id: arg.get_id().to_string(),
                    spellings,
                    shown,
                    takes_value: arg.get_action().takes_values(),
                    values: arg
                        .get_possible_values()
                        .iter()
                        .map(|v| v.get_name().to_string())
                        .collect(),
                }
            })
            .collect();
        Self {
            files: FilenameCompleter::new(),
            switches,
        }
    }

    /// Where the completed word starts in `line` and its candidates (the text that replaces it), for the cursor at
    /// byte `pos`; `models` gives the names `!switch` completes.
    fn candidates(&self, line: &str, pos: usize, models: &dyn Fn() -> Vec<String>) -> (usize, Vec<Pair>) {
        let before = &line[..pos];
        let start = before
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map_or(0, |(i, c)| i + c.len_utf8());
        let word = &before[start..];
        let previous: Vec<&str> = before[..start].split_whitespace().collect();
        let words = |names: Vec<String>| (start, matching(word, names));
        if before.trim_start().starts_with('!') {
            let Some(&command) = previous.first() else {
                return words(COMMAND_NAMES.iter().map(|c| format!("!{c}")).collect());
            };
            return match (command, previous.len()) {
                ("!fetch" | "!replay", 1) => self.paths(line, pos),
                ("!switch", 1) => words(models()),
                _ => (start, Vec::new()),
            };
        }
        if let Some(switch) = previous.last().and_then(|p| self.switch(p)) {
            if switch.takes_value {
                return if PATH_SWITCHES.contains(&switch.id.as_str()) {
                    self.paths(line, pos)
                } else if switch.id == "sampler" {
                    words(SamplerKind::ALL.iter().map(|k| k.name().to_string()).collect())
                } else {
                    words(switch.values.clone())
                };
            }
        }
        if word.starts_with('-') {
            return words(self.switches.iter().flat_map(|s| s.shown.iter().cloned()).collect());
        }
        // A prompt word: nothing to complete.
        (start, Vec::new())
    }

    /// The switch spelled `word` (`-I`, `--init-image`, `--init_image`).
    fn switch(&self, word: &str) -> Option<&SwitchInfo> {
        self.switches.iter().find(|s| s.spellings.iter().any(|w| w == word))
    }

    /// File names, as rustyline completes them (quoting and escaping included).
    fn paths(&self, line: &str, pos: usize) -> (usize, Vec<Pair>) {
        self.files.complete_path(line, pos).unwrap_or((pos, Vec::new()))
    }
}

/// The names that start with `word`, each followed by a space (a completed word is done), sorted and unique.
fn matching(word: &str, names: Vec<String>) -> Vec<Pair> {
    let mut names: Vec<String> = names.into_iter().filter(|n| n.starts_with(word)).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| Pair {
            replacement: format!("{n} "),
            display: n,
        })
        .collect()
}

/// The named models `!switch` knows (the config file's, and an older models.toml's); none when they cannot be read
/// (completion stays quiet).
fn model_names() -> Vec<String> {
    crate::settings::Settings::load()
        .map(|settings| settings.models.into_keys().collect())
        .unwrap_or_default()
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        Ok(self.candidates(line, pos, &model_names))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}

impl Highlighter for ReplHelper {}

impl Validator for ReplHelper {}

impl Helper for ReplHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(line: &str) -> (usize, Vec<String>) {
        let helper = ReplHelper::new();
        let models = || vec!["sd15".to_string(), "tiny".to_string(), "turbo".to_string()];
        let (start, pairs) = helper.candidates(line, line.len(), &models);
        (start, pairs.into_iter().map(|p| p.replacement).collect())
    }

    #[test]
    fn commands_after_a_bang() {
        assert_eq!(complete("!sw"), (0, vec!["!switch ".to_string()]));
        let (_, all) = complete("!");
        assert_eq!(all.len(), COMMAND_NAMES.len());
        assert!(all.contains(&"!replay ".to_string()) && all.contains(&"!fetch ".to_string()));
    }

    #[test]
    fn switches_come_from_clap() {
        assert_eq!(complete("a red fox --stre"), (10, vec!["--strength ".to_string()]));
        let (_, both) = complete("a fox --save");
        assert_eq!(both, ["--save-intermediates "]);
        // Every switch of the line parser is offered, short and long.
        let (_, all) = complete("fox -");
        for switch in [
            "-s ",
            "--steps ",
            "-I ",
            "--init-image ",
            "--seamless ",
            "--step-strip ",
        ] {
            assert!(all.contains(&switch.to_string()), "{switch} missing from {all:?}");
        }
        // Aliases are accepted before a value but not offered.
        assert!(!all.contains(&"--cfg_scale ".to_string()));
    }

    #[test]
    fn values_of_samplers_and_fixed_sets() {
        assert_eq!(complete("fox -A dd").1, ["ddim "]);
        assert_eq!(complete("fox --sampler k_euler").1, ["k_euler ", "k_euler_a "]);
        let (_, all) = complete("fox -A ");
        assert_eq!(all.len(), SamplerKind::ALL.len());
        assert_eq!(complete("fox --downweight m").1, ["mask "]);
        // A free value (a seed) and a prompt word complete to nothing.
        assert!(complete("fox -S 4").1.is_empty());
        assert!(complete("a red f").1.is_empty());
        assert!(complete("fox -S -").1.is_empty(), "a negative seed is not a switch");
    }

    #[test]
    fn model_names_after_switch() {
        assert_eq!(complete("!switch t").1, ["tiny ", "turbo "]);
        assert_eq!(complete("!switch ").1.len(), 3);
        assert!(complete("!switch tiny x").1.is_empty());
    }

    #[test]
    fn file_paths_after_init_image_mask_fetch_and_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("drawing.png"), b"").unwrap();
        std::fs::write(dir.path().join("dream.txt"), b"").unwrap();
        std::fs::write(dir.path().join("other.png"), b"").unwrap();
        let base = dir.path().display().to_string();
        let want = format!("{base}/drawing.png");
        for line in [
            format!("fox -I {base}/dra"),
            format!("fox -f 0.5 --init-image {base}/dra"),
            format!("fox -M {base}/dra"),
            format!("fox --init_mask {base}/dra"),
            format!("!fetch {base}/dra"),
        ] {
            let (start, found) = complete(&line);
            assert_eq!(found, std::slice::from_ref(&want), "{line}");
            assert_eq!(&line[start..], format!("{base}/dra"), "{line}");
        }
        assert_eq!(
            complete(&format!("fox -I {base}/dr")).1.len(),
            2,
            "drawing.png and dream.txt"
        );
        assert_eq!(
            complete(&format!("!replay {base}/dre")).1,
            [format!("{base}/dream.txt")]
        );
        // No file names where a number goes.
        assert!(complete(&format!("fox -s {base}/dr")).1.is_empty());
    }
}
