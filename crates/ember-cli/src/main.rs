//! `ember`: the command-line front-end of the Ember engine. It parses arguments, builds requests and
//! shows events; all the work happens in the `ember` library. Without a subcommand it opens the `invoke>` REPL.

use clap::Parser;
use ember_cli::{args, bench, generate, repl, serve, study};

fn main() -> std::process::ExitCode {
    ember::tune_allocator();
    let cli = args::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("EMBER_LOG").unwrap_or_else(|_| "warn".into()))
        .without_time()
        // Colour codes only on a terminal: a log file or a service manager gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Some(args::Command::Generate(g)) => generate::run(&g),
        Some(args::Command::Repl(r)) => repl::run(&r),
        Some(args::Command::Bench(b)) => bench::run(&b),
        Some(args::Command::Serve(s)) => serve::run(&s),
        Some(args::Command::Worker(w)) => serve::run_worker(&w),
        Some(args::Command::Study(s)) => study::run(&s),
        None => repl::run(&cli.repl),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", ember_cli::errors::describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
