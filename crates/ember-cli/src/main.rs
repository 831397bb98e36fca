//! `ember`: the command-line front-end of the Ember engine. It parses arguments, builds requests and
//! shows events; all the work happens in the `ember` library.

mod args;
mod bench;
mod generate;
mod serve;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = args::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("EMBER_LOG").unwrap_or_else(|_| "warn".into()))
        .without_time()
        .init();
    let result = match cli.command {
        Some(args::Command::Generate(g)) => generate::run(&g),
        Some(args::Command::Bench(b)) => bench::run(&b),
        Some(args::Command::Serve(s)) => serve::run(&s),
        None => {
            use clap::CommandFactory;
            args::Cli::command().print_help().map_err(Into::into)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
