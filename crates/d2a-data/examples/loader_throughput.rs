//! Slices per second of the training loader at the paper's 560 -> 448 augmentation.
//!
//! `cargo run --release -p d2a-data --example loader_throughput [PREPARED_DIR]`: without a
//! folder it uses 96 synthetic 512x512 phantoms.

use std::time::Instant;

use d2a_data::augment::AugmentConfig;
use d2a_data::loader::{Loader, LoaderConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let slices = match std::env::args().nth(1) {
        Some(dir) => d2a_data::prepared::read(std::path::Path::new(&dir))?.1,
        None => d2a_data::synthetic::phantoms(96, 512, 0),
    };
    let n = slices.len();
    let loader = Loader::new(slices, LoaderConfig::train(6, 0, AugmentConfig::paper()))?;
    let start = Instant::now();
    let mut seen = 0;
    for batch in loader.epoch(0) {
        seen += batch?.indices.len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{seen} of {n} slices at 448x448 in {secs:.2} s: {:.1} slices/s (2 worker threads)",
        seen as f64 / secs
    );
    Ok(())
}
