//! The `invoke>` prompt: `ember` without a subcommand, or `ember repl`.
//!
//! The model stays loaded between lines. Each line is an InvokeAI 2.x command (`a red fox -s 30 -S 42`) run by the
//! shared [`Runner`], with the launch flags as sticky defaults, or a `!` command ([`commands`]). Line editing and
//! the persistent history come from `rustyline`; when standard input is not a terminal, lines are simply read
//! from it (so scripts and tests can pipe commands in).
//!
//! Tab completes `!` commands, switches, samplers, model names and file paths ([`completion`]).
//!
//! Stdout, at a terminal: after each image its echo line as InvokeAI prints it, `[N] path: dream-line (seconds)`
//! (N counts the session's images from 1), then its step strip's path and the `-g` grid's path, one per line; `!`
//! commands print their listings there too. With lines piped in (a script), each image is a bare path instead, as
//! `ember generate` prints it, so scripts read the same stdout from both. Everything for people only (progress,
//! notes, errors) goes to stderr.
//!
//! When the launch model cannot be loaded (a hub model offline, say) and a models file exists, the prompt stays:
//! the error is reported and `!switch NAME` loads a named model; a generation line says that no model is loaded.
//!
//! Ctrl-C: at the prompt rustyline reads it as a key and the line is cleared; while an image is generating the
//! terminal is back in normal mode, so it arrives as SIGINT and cancels that image (a second Ctrl-C quits).

mod commands;
pub mod completion;
pub mod config;

use crate::args::ReplArgs;
use crate::runner::Runner;
use crate::term;
use completion::ReplHelper;
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{CompletionType, Config, Editor};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const PROMPT: &str = "invoke> ";
/// History entries kept in the file.
const HISTORY_SIZE: usize = 1000;

/// What the REPL remembers besides the runner.
pub struct Repl {
    runner: Runner,
    editor: Editor<ReplHelper, DefaultHistory>,
    history_path: Option<PathBuf>,
    /// Text for the next prompt's edit buffer (`!fetch`, `!NNN`).
    pending: Option<String>,
    interactive: bool,
    /// The launch flags' model settings: `!switch` starts every named model from these, so one entry's `dtype` or
    /// `device` does not carry over to the next.
    launch: crate::args::ModelArgs,
    /// The models-file entry `!switch` loaded last (None: the launch model).
    current_entry: Option<String>,
}

pub fn run(args: &ReplArgs) -> anyhow::Result<()> {
    // The config file's model, named models and [defaults] (crate::settings), before anything loads.
    let resolved = crate::settings::resolve_model(&args.model)?;
    let mut runner = Runner::new(resolved.model.clone(), args.switches.clone()).with_model_defaults(resolved.defaults);
    runner.set_progress(args.progress);
    let interactive = std::io::stdin().is_terminal();
    runner.set_echo_lines(interactive);
    if let Err(e) = runner.load() {
        // With named models to switch to, the session is still useful; without, there is nothing to do.
        let has_named_models = crate::settings::Settings::load().is_ok_and(|s| !s.models.is_empty());
        if !has_named_models {
            return Err(e);
        }
        report(&e);
        term::note("the prompt stays: !models lists the named models, !switch NAME loads one");
    }
    let config = Config::builder()
        .max_history_size(HISTORY_SIZE)?
        .auto_add_history(false)
        // Tab lists the candidates (after completing their common prefix), as bash does.
        .completion_type(CompletionType::List)
        .build();
    let mut editor: Editor<ReplHelper, DefaultHistory> = Editor::with_config(config)?;
    editor.set_helper(Some(ReplHelper::new()));
    // After the editor: on a terminal rustyline installs a SIGINT handler of its own, which this one replaces.
    let busy = Arc::new(AtomicBool::new(false));
    install_ctrlc(&runner, busy.clone())?;
    let history_path = config::history_file();
    if let Some(path) = &history_path {
        // A missing history file is a first run, not an error.
        if path.exists() {
            if let Err(e) = editor.load_history(path) {
                term::warning(format!("cannot read the history {}: {e}", path.display()));
            }
        }
    }
    if interactive {
        eprintln!("Type a prompt with switches (e.g. `a red fox -s 30 -S 42`), !help for commands, q to quit.");
    }
    let mut repl = Repl {
        runner,
        editor,
        history_path,
        pending: None,
        interactive,
        launch: resolved.launch,
        current_entry: resolved.entry,
    };
    loop {
        let read = match repl.pending.take() {
            Some(text) => repl.editor.readline_with_initial(PROMPT, (&text, "")),
            None => repl.editor.readline(PROMPT),
        };
        let line = match read {
            Ok(line) => line,
            // Ctrl-C at the prompt: drop the line, stay.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            // A window resize or similar interrupts the read; nothing was typed that matters.
            #[cfg(unix)]
            Err(ReadlineError::Signal(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if matches!(line, "q" | "quit" | "exit") {
            break;
        }
        busy.store(true, Ordering::SeqCst);
        let outcome = repl.handle(line);
        busy.store(false, Ordering::SeqCst);
        if let Err(e) = outcome {
            report(&e);
        }
    }
    Ok(())
}

impl Repl {
    /// One line: a `!` command or a generation command. Generation lines go into the history first, so a
    /// failed line can be fetched back with `!NNN` and fixed.
    fn handle(&mut self, line: &str) -> anyhow::Result<()> {
        if let Some(command) = line.strip_prefix('!') {
            return self.command(command.trim());
        }
        self.remember(line);
        if !self.runner.is_loaded() {
            anyhow::bail!("no model loaded; use !switch NAME or restart with --model …");
        }
        self.runner.run_line(line)?;
        Ok(())
    }

    /// Adds a line to the history and saves the file (so a crash loses nothing).
    fn remember(&mut self, line: &str) {
        let _ = self.editor.add_history_entry(line);
        self.save_history();
    }

    fn save_history(&mut self) {
        let Some(path) = &self.history_path else { return };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = self.editor.save_history(path) {
            term::warning(format!("cannot save the history to {}: {e}", path.display()));
        }
    }

    /// Puts text into the next prompt's edit buffer; without a terminal it is printed instead (there is no buffer
    /// to edit) so scripts can read it.
    fn offer(&mut self, text: String) {
        if !self.interactive {
            println!("{text}");
        }
        self.pending = Some(text);
    }
}

fn report(e: &anyhow::Error) {
    if matches!(e.downcast_ref::<ember::Error>(), Some(ember::Error::Cancelled)) {
        eprintln!("cancelled");
    } else {
        term::error(crate::errors::describe(e));
    }
}

/// SIGINT while a command runs cancels its image; a second one (or one while idle without a terminal) quits.
fn install_ctrlc(runner: &Runner, busy: Arc<AtomicBool>) -> anyhow::Result<()> {
    let cancel = runner.cancel_token();
    ctrlc::set_handler(move || {
        if busy.load(Ordering::SeqCst) && !cancel.is_cancelled() {
            eprintln!("\ncancelling … (Ctrl-C again quits)");
            cancel.cancel();
        } else {
            std::process::exit(130);
        }
    })?;
    Ok(())
}
