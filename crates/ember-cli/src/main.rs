//! `ember`: the command-line front-end of the Ember engine. It parses arguments, builds requests and
//! shows events; all the work happens in the `ember` library. Without a subcommand it opens the `invoke>` REPL.

use clap::Parser;
use ember_cli::{args, bench, completions, generate, info, models, repl, serve, study};

fn main() -> std::process::ExitCode {
    ember::tune_allocator();
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // InvokeAI's switches that Ember lacks (-U, -G, --embiggen, …) are named as such, not as typos.
            if let Some(message) = args::unsupported_switch_in(&e) {
                ember_cli::term::error(message);
                return std::process::ExitCode::from(2);
            }
            e.exit()
        }
    };
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
        Some(args::Command::Info(i)) => info::run(&i),
        Some(args::Command::Models(m)) => models::run(&m),
        Some(args::Command::Completions(c)) => completions::run(&c),
        None => repl::run(&cli.repl),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            ember_cli::term::error(ember_cli::errors::describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
