//! `ember generate`: one prompt with switches, or `--from-file` with one `invoke>` command line per line.
//! Both go through the REPL's [`Runner`], so a file of lines behaves exactly like typing them at `invoke>`.

use crate::args::GenerateArgs;
use crate::dream_line::DreamLine;
use crate::runner::Runner;
use anyhow::Context;
use std::io::{BufRead, BufReader, IsTerminal, Read};

pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    let mut runner = Runner::new(args.model.clone(), args.switches.clone());
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
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        ran += 1;
        // One bad line should not lose the rest of a batch; the exit status still reports it.
        if let Err(e) = runner.run_line(line) {
            eprintln!("error: line {}: {}", number + 1, crate::errors::describe(&e));
            failed += 1;
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {ran} command lines failed");
    }
    Ok(())
}
