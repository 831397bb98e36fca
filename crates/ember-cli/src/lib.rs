//! The `ember` command line as a library: argument definitions, the `invoke>` line parser, the runner shared by
//! `generate`, `--from-file` and the REPL, and one module per subcommand. `main.rs` only dispatches; tests use
//! the parser and the argument types directly.

pub mod args;
pub mod bench;
pub mod completions;
pub mod dream_line;
pub mod errors;
pub mod fetch;
pub mod generate;
pub mod info;
pub mod models;
pub mod repl;
pub mod runner;
pub mod serve;
pub mod settings;
pub mod study;
pub mod term;
