//! The `d2a` binary: parses the command line and reports errors with a non-zero exit.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    d2a_cli::tune_allocator();
    let cli = d2a_cli::Cli::parse();
    d2a_cli::init_logging(cli.quiet);
    match d2a_cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line: "reading x: cannot decode ...".
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
