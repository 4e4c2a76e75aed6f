//! `cargo xtask <fetch-data|convert-weights|align-labels>`: see the library's documentation.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    match xtask::Cli::parse().run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
