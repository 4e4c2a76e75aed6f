//! The `d2a` command line: one module per subcommand under [`commands`].
//!
//! The binary (`src/main.rs`) only parses arguments and prints errors; everything a subcommand
//! does is reachable from this library, so integration tests can call it in-process.

#![warn(missing_docs)]

pub mod commands;
pub mod overlay;

use clap::{Parser, Subcommand};

/// d2a: COVID-19 lung lesion segmentation in chest CT (D2A U-Net).
#[derive(Debug, Parser)]
#[command(name = "d2a", version, about, long_about = None)]
pub struct Cli {
    /// Print only results and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Time a model's forward pass or training step, and its peak memory.
    Bench(commands::bench::Args),
    /// Score a trained checkpoint on labelled data with the paper's metrics.
    Eval(commands::eval::Args),
    /// Score predicted masks against ground-truth masks with the paper's metrics.
    EvalMasks(commands::eval_masks::Args),
    /// Parameter and multiply-add counts of a model.
    Info(commands::info::Args),
    /// Segment CT volumes or slices with a trained checkpoint.
    Predict(commands::predict::Args),
    /// Read CT volumes or slice folders once into a prepared dataset for training.
    Prepare(commands::prepare::Args),
    /// Train a model (with no arguments: a small model on synthetic phantoms).
    Train(commands::train::Args),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench(args) => args.run(),
        Command::Eval(args) => args.run(cli.quiet),
        Command::EvalMasks(args) => args.run(),
        Command::Info(args) => args.run(),
        Command::Predict(args) => args.run(cli.quiet),
        Command::Prepare(args) => args.run(cli.quiet),
        Command::Train(mut args) => {
            args.quiet = cli.quiet;
            args.run()
        }
    }
}

/// Sends `tracing` logs to stderr; `RUST_LOG` overrides the level, `quiet` lowers it to warnings.
pub fn init_logging(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A second initialisation (tests calling in-process) is harmless, so its error is ignored.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only where a person reads them, never into logs or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .try_init();
}

pub use d2a_model::tune_allocator;
