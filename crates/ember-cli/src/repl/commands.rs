//! The REPL's `!` commands (InvokeAI 2.x's set): `!fetch`, `!replay`, `!history`, `!NNN`, `!search`, `!models`,
//! `!switch`, `!clear`, `!help`.

use super::Repl;
use crate::args::ModelArgs;
use crate::dream_line::{script_line, shell_split, ScriptLine};
use crate::fetch::fetch;
use anyhow::{bail, Context};
use rustyline::history::History;
use std::path::Path;

const HELP: &str = "\
A line is a prompt with switches, e.g.:  a red fox -s 30 -S 42 -W 512 -H 512 -C 7.5 -A k_lms
  img2img: -I drawing.png -f 0.7 (-I -1: the previous image)   -S -1: the previous seed
  inpainting: -I photo.png -M mask.png (white = repaint), --invert-mask, --mask-blur N, --outcrop top 64 left 128
  -n N images, -g grid, -v AMOUNT variations, -V seed:weight,…, --step-strip, --save-intermediates N
  (`ember generate --help` lists every switch)
Commands:
  !fetch FILE      put the command line that made FILE (a PNG: Ember, InvokeAI or A1111) into the edit buffer
  !replay FILE     run each command line of a text file
  !history         list the history; !NNN puts entry NNN into the edit buffer
  !search TEXT     list the history entries that contain TEXT
  !models          list the named models of the models file, with their defaults
  !switch NAME     load a named model (with its defaults from the models file)
  !clear           clear the history
  q                quit (also Ctrl-D); Ctrl-C cancels the running image";

/// The `!` commands' names, for tab completion (`!NNN` aside).
pub(super) const COMMAND_NAMES: &[&str] = &[
    "fetch", "replay", "history", "search", "models", "switch", "clear", "help",
];

impl Repl {
    /// Runs `!command` (the text after the `!`).
    pub(super) fn command(&mut self, command: &str) -> anyhow::Result<()> {
        let (name, rest) = command.split_once(char::is_whitespace).unwrap_or((command, ""));
        let rest = rest.trim();
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
            return self.recall(name);
        }
        match name {
            "fetch" => {
                let fetched = fetch(Path::new(&one_path(rest, "!fetch")?))?;
                // What the line cannot carry (an init image A1111 did not record, a file not found) goes to stderr,
                // so that the line alone is on stdout.
                for note in &fetched.notes {
                    crate::term::note(note);
                }
                self.offer(fetched.line);
            }
            "replay" => self.replay(&one_path(rest, "!replay")?)?,
            "history" => {
                for (i, entry) in self.editor.history().iter().enumerate() {
                    println!("[{i}] {entry}");
                }
            }
            "search" => {
                if rest.is_empty() {
                    bail!("!search needs some text, e.g. !search fox");
                }
                let needle = rest.to_lowercase();
                for (i, entry) in self.editor.history().iter().enumerate() {
                    if entry.to_lowercase().contains(&needle) {
                        println!("[{i}] {entry}");
                    }
                }
            }
            "clear" => {
                self.editor.clear_history()?;
                // rustyline only appends to a file it wrote before; removing it makes the save a rewrite.
                if let Some(path) = &self.history_path {
                    let _ = std::fs::remove_file(path);
                }
                self.save_history();
                println!("history cleared");
            }
            "models" => self.list_models()?,
            "switch" => self.switch(rest)?,
            "help" | "" => println!("{HELP}"),
            "fix" => bail!("!fix (upscaling and face restoration of an image) is not supported by Ember"),
            "mask" | "triggers" | "optimize_model" | "edit_model" | "del_model" => {
                bail!("!{name} is an InvokeAI command that is not supported by Ember; type !help for Ember's")
            }
            "import_model" | "convert_model" => bail!(
                "!{name} is not supported at the prompt: add the model to the config file's [models] (see `ember \
                 models list`), convert a .ckpt with `ember models convert`, then !switch to it"
            ),
            other => bail!("unknown command !{other}; type !help for the list"),
        }
        Ok(())
    }

    /// `!NNN`: history entry NNN (as numbered by `!history`) into the edit buffer.
    fn recall(&mut self, number: &str) -> anyhow::Result<()> {
        let history = self.editor.history();
        let index: usize = number.parse().context("no such history entry")?;
        let Some(entry) = history.iter().nth(index) else {
            bail!(
                "there is no history entry {index}; !history lists the {} there are",
                history.len()
            );
        };
        let entry = entry.clone();
        self.offer(entry);
        Ok(())
    }

    /// `!replay FILE`: each non-blank, non-`#` line is run as if typed; `!` lines are skipped.
    fn replay(&mut self, path: &str) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
        if !self.runner.is_loaded() {
            bail!("no model loaded; use !switch NAME or restart with --model …, then !replay {path}");
        }
        for (number, line) in text.lines().enumerate() {
            let line = match script_line(line) {
                ScriptLine::Skip => continue,
                ScriptLine::Quit => break,
                ScriptLine::Bang(command) => {
                    eprintln!(
                        "{path}:{}: skipped, !commands are not run from a file: {command}",
                        number + 1
                    );
                    continue;
                }
                ScriptLine::Command(line) => line,
            };
            println!("{PROMPT}{line}", PROMPT = super::PROMPT);
            if let Err(e) = self.runner.run_line(line) {
                if matches!(e.downcast_ref::<ember::Error>(), Some(ember::Error::Cancelled)) {
                    return Err(e);
                }
                crate::term::error(format!("{path}:{}: {}", number + 1, crate::errors::describe(&e)));
            }
        }
        Ok(())
    }

    /// `!models`: every entry with its description, path and settings (dtype, device, generation defaults); the loaded one (`*`) also with what the
    /// loader found it to be. The others are not loaded to find out.
    fn list_models(&self) -> anyhow::Result<()> {
        let settings = crate::settings::Settings::load()?;
        let models = settings.models;
        if models.is_empty() {
            println!(
                "no named models in {}; add tables like [models.sd15] with path = \"…\"",
                settings
                    .path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
        let current = &self.runner.model().model;
        for (name, entry) in &models {
            let loaded = match &self.current_entry {
                Some(switched) => switched == name,
                // The launch model, when an entry names the same path.
                None => &entry.path == current,
            };
            let mark = if loaded { "*" } else { " " };
            let description = entry.description.as_deref().unwrap_or("");
            println!("{mark} {name:<16} {description}  ({})", entry.path);
            if let Some(spec) = self.runner.spec().filter(|_| loaded) {
                println!("    loaded: {}", crate::runner::describe_spec(spec));
            }
            let mut settings: Vec<String> = Vec::new();
            if let Some(dtype) = &entry.dtype {
                settings.push(format!("--dtype {dtype}"));
            }
            if let Some(device) = &entry.device {
                settings.push(format!("--device {device}"));
            }
            let defaults = entry.defaults_text();
            if !defaults.is_empty() {
                settings.push(defaults);
            }
            if !settings.is_empty() {
                println!("    settings: {}", settings.join(" "));
            }
        }
        Ok(())
    }

    /// `!switch NAME`: loads the entry's model from the launch flags' device and dtype (unless the entry sets its
    /// own) with the entry's defaults, which replace the previous entry's.
    fn switch(&mut self, name: &str) -> anyhow::Result<()> {
        if name.is_empty() {
            bail!("!switch needs a model name; !models lists them");
        }
        let settings = crate::settings::Settings::load()?;
        let models = &settings.models;
        let Some(entry) = models.get(name) else {
            let names: Vec<&str> = models.keys().map(String::as_str).collect();
            bail!(
                "no model named '{name}' in {} (it has: {})",
                settings.describe_path(),
                names.join(", ")
            );
        };
        let model = ModelArgs {
            model: entry.path.clone(),
            device: entry.device.clone().unwrap_or_else(|| self.launch.device.clone()),
            dtype: entry.dtype.clone().unwrap_or_else(|| self.launch.dtype.clone()),
            // The entry's tiny autoencoder, else the launch flag's.
            vae_approx: if entry.vae_approx.is_empty() {
                self.launch.vae_approx.clone()
            } else {
                entry.vae_approx.clone()
            },
            vae_approx_encode: self.launch.vae_approx_encode,
        };
        eprintln!("loading model {name} ({}) …", entry.path);
        // The config file's [defaults] stay under the entry's own.
        self.runner
            .switch_model(model, entry.switches().over(&settings.defaults.switches()))?;
        self.current_entry = Some(name.to_string());
        let defaults = entry.defaults_text();
        if defaults.is_empty() {
            eprintln!("model {name} loaded");
        } else {
            eprintln!("model {name} loaded; its defaults: {defaults}");
        }
        Ok(())
    }
}

/// The single (possibly quoted) path argument of a command.
fn one_path(rest: &str, command: &str) -> anyhow::Result<String> {
    let mut words = shell_split(rest)?;
    if words.len() != 1 {
        bail!("{command} takes one file name (quote it if it has spaces)");
    }
    Ok(words.remove(0))
}
