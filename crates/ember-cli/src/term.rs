//! What the command line writes on stderr for people: `error:`/`warning:`/`note:` labels coloured as clap colours
//! its own (bold red, bold yellow, bold green), and the progress of a run (stages, `denoise k/n`, `image i/n`).
//!
//! Colour only on a terminal and only when `NO_COLOR` is unset or empty (<https://no-color.org>): a log file or a
//! pipe gets plain text. Progress follows `--progress`: `auto` draws a bar only when stderr is a terminal, `always`
//! also writes one line per stage into a pipe or file, `never` writes nothing.

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

const BOLD_RED: &str = "\x1b[1;31m";
const BOLD_YELLOW: &str = "\x1b[1;33m";
const BOLD_GREEN: &str = "\x1b[1;32m";
const RESET: &str = "\x1b[0m";

/// Whether stderr gets colour codes: a terminal, and `NO_COLOR` unset or empty.
pub fn colour_stderr() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// `label: message`, the label wrapped in `style` when `colour`.
fn labelled(label: &str, style: &str, message: &str, colour: bool) -> String {
    if colour {
        format!("{style}{label}:{RESET} {message}")
    } else {
        format!("{label}: {message}")
    }
}

/// `error: message` on stderr.
pub fn error(message: impl std::fmt::Display) {
    eprintln!("{}", labelled("error", BOLD_RED, &message.to_string(), colour_stderr()));
}

/// `warning: message` on stderr.
pub fn warning(message: impl std::fmt::Display) {
    eprintln!(
        "{}",
        labelled("warning", BOLD_YELLOW, &message.to_string(), colour_stderr())
    );
}

/// `note: message` on stderr.
pub fn note(message: impl std::fmt::Display) {
    eprintln!(
        "{}",
        labelled("note", BOLD_GREEN, &message.to_string(), colour_stderr())
    );
}

/// `--progress`: when a run shows its progress on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, nothing otherwise.
    #[default]
    Auto,
    /// A bar on a terminal; one line per stage into a pipe or file.
    Always,
    /// Nothing.
    Never,
}

/// How progress is shown, decided once from the mode and whether stderr is a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressDraw {
    Bar,
    Lines,
    Off,
}

impl ProgressMode {
    pub fn draw(self, stderr_is_terminal: bool) -> ProgressDraw {
        match (self, stderr_is_terminal) {
            (ProgressMode::Never, _) => ProgressDraw::Off,
            (_, true) => ProgressDraw::Bar,
            (ProgressMode::Always, false) => ProgressDraw::Lines,
            (ProgressMode::Auto, false) => ProgressDraw::Off,
        }
    }

    /// This mode on this process's stderr.
    pub fn draw_here(self) -> ProgressDraw {
        self.draw(std::io::stderr().is_terminal())
    }
}

/// The progress of one image: `LABEL: encoding text`, `LABEL [====   ] denoise k/n`, `LABEL: decoding`. LABEL is
/// `seed S`, or `image i/n seed S` in a batch.
pub struct Progress {
    draw: ProgressDraw,
    label: String,
    /// Drawn only once a stage is set: a bar made with length 0 would first draw as a full `0/0`.
    bar: Option<ProgressBar>,
    total_steps: usize,
}

impl Progress {
    pub fn new(draw: ProgressDraw, label: String) -> Self {
        Self {
            draw,
            label,
            bar: None,
            total_steps: 0,
        }
    }

    /// A stage without steps (`encoding text`, `decoding`).
    pub fn stage(&mut self, stage: &str) {
        match self.draw {
            ProgressDraw::Off => {}
            ProgressDraw::Lines => eprintln!("{}: {stage}", self.label),
            ProgressDraw::Bar => {
                let message = format!("{}: {stage}", self.label);
                let bar = self.bar();
                bar.set_style(
                    ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(message);
                bar.tick();
            }
        }
    }

    /// Denoising starts: `total_steps` steps.
    pub fn start_denoise(&mut self, total_steps: usize) {
        self.total_steps = total_steps;
        match self.draw {
            ProgressDraw::Off | ProgressDraw::Lines => {}
            ProgressDraw::Bar => {
                let label = self.label.clone();
                let bar = self.bar();
                // Length, position and message before the bar style: setting the style draws at once, and an
                // earlier draw would show `0/0`.
                bar.set_length(total_steps as u64);
                bar.set_position(0);
                bar.reset_eta();
                bar.set_message(label);
                bar.set_style(
                    ProgressStyle::with_template("{msg} [{bar:30}] denoise {pos}/{len} ({elapsed} elapsed, ETA {eta})")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
            }
        }
    }

    /// Step `step` (1-based) of denoising finished.
    pub fn step(&mut self, step: usize) {
        match self.draw {
            ProgressDraw::Off => {}
            ProgressDraw::Lines => {
                // About ten lines per image: enough to follow a log, not one per step of a 1000-step run.
                let every = (self.total_steps / 10).max(1);
                if step == 1 || step.is_multiple_of(every) || step == self.total_steps {
                    eprintln!("{}: denoise {step}/{}", self.label, self.total_steps);
                }
            }
            ProgressDraw::Bar => {
                if let Some(bar) = &self.bar {
                    bar.set_position(step as u64);
                }
            }
        }
    }

    /// The bar, made on first use (on stderr, not drawn until a stage sets its style).
    fn bar(&mut self) -> &ProgressBar {
        self.bar
            .get_or_insert_with(|| ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()))
    }

    /// Runs `f` (which writes to stderr) with the bar out of the way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Removes the bar; the lines written stay.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_coloured_only_when_asked() {
        assert_eq!(labelled("error", BOLD_RED, "bad", false), "error: bad");
        assert_eq!(labelled("error", BOLD_RED, "bad", true), "\x1b[1;31merror:\x1b[0m bad");
        assert_eq!(
            labelled("warning", BOLD_YELLOW, "odd", true),
            "\x1b[1;33mwarning:\x1b[0m odd"
        );
    }

    #[test]
    fn progress_modes() {
        assert_eq!(ProgressMode::Auto.draw(true), ProgressDraw::Bar);
        assert_eq!(ProgressMode::Auto.draw(false), ProgressDraw::Off);
        assert_eq!(ProgressMode::Always.draw(false), ProgressDraw::Lines);
        assert_eq!(ProgressMode::Always.draw(true), ProgressDraw::Bar);
        assert_eq!(ProgressMode::Never.draw(true), ProgressDraw::Off);
    }
}
