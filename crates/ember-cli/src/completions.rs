//! `ember completions SHELL`: the shell completion script, from the same clap definitions as the commands.
//!
//! `ember completions bash > ~/.local/share/bash-completion/completions/ember`,
//! `ember completions zsh > ~/.zfunc/_ember`, `ember completions fish > ~/.config/fish/completions/ember.fish`.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for: bash, zsh, fish, powershell or elvish.
    #[arg(value_name = "SHELL")]
    pub shell: Shell,
}

/// Prints the script for `shell` on stdout.
pub fn run(args: &CompletionsArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&script(args.shell)).and_then(|()| stdout.flush()) {
        // `ember completions bash | head`: the reader had enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| anyhow::anyhow!("cannot write the completion script to stdout: {e}")),
    }
}

/// The completion script of the whole `ember` command line for `shell`. Made in memory: clap_complete panics
/// when its writer fails (a closed pipe), so the writing to stdout happens here.
pub fn script(shell: Shell) -> Vec<u8> {
    let mut command = crate::args::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "ember", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(shell: Shell) -> String {
        String::from_utf8(super::script(shell)).expect("a completion script is text")
    }

    #[test]
    fn bash_script_knows_subcommands_and_switches() {
        let bash = script(Shell::Bash);
        for word in ["generate", "--strength", "info", "completions", "--sampler"] {
            assert!(bash.contains(word), "the bash script lacks {word}");
        }
    }

    #[test]
    fn zsh_and_fish_scripts_are_made_too() {
        assert!(script(Shell::Zsh).contains("#compdef ember"));
        let fish = script(Shell::Fish);
        assert!(
            fish.contains("complete -c ember") && fish.contains("strength"),
            "{fish}"
        );
    }
}
