//! `ember generate`: one prompt with switches, or `--from-file` with one `invoke>` command line per line.
//! Both go through the REPL's [`Runner`], so a file of lines behaves exactly like typing them at `invoke>`.

use crate::args::GenerateArgs;
use crate::dream_line::{script_line, DreamLine, ScriptLine};
use crate::runner::Runner;
use anyhow::Context;
use std::io::{BufRead, BufReader, IsTerminal, Read};

pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    // The config file's model, named models and [defaults] (crate::settings), before anything loads.
    let resolved = crate::settings::resolve_model(&args.model)?;
    let mut runner = Runner::new(resolved.model, args.switches.clone()).with_model_defaults(resolved.defaults);
    runner.set_progress(args.progress);
    let Some(file) = &args.from_file else {
        let prompt = args.prompt.clone().unwrap_or_default();
        runner.run(&DreamLine {
            prompt,
            switches: Default::default(),
        })?;
        return Ok(());
    };
    let reader: Box<dyn Read> = if file.as_os_str() == "-" {
        if std::io::stdin().is_terminal() {
            eprintln!("reading command lines from the terminal; end with Ctrl-D");
        }
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?)
    };
    // A batch needs the model for every line: a load failure ends it at once instead of once per line.
    runner.load()?;
    let mut failed = 0;
    let mut ran = 0;
    for (number, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read line {} of {}", number + 1, file.display()))?;
        // As the REPL's !replay reads a file: `q` ends it, `!` commands are skipped with a note.
        let line = match script_line(&line) {
            ScriptLine::Skip => continue,
            ScriptLine::Quit => break,
            ScriptLine::Bang(command) => {
                eprintln!(
                    "{}:{}: skipped, !commands are not run from a file: {command}",
                    file.display(),
                    number + 1
                );
                continue;
            }
            ScriptLine::Command(line) => line,
        };
        ran += 1;
        // One bad line should not lose the rest of a batch; the exit status still reports it.
        if let Err(e) = runner.run_line(line) {
            crate::term::error(format!("line {}: {}", number + 1, crate::errors::describe(&e)));
            failed += 1;
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {ran} command lines failed");
    }
    Ok(())
}
