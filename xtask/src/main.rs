//! `cargo xtask`: developer commands for d2a.
//!
//! Planned subcommands, one module each: `fetch-data` (downloads the public datasets listed in
//! `docs/datasets.md` with checksums) and `convert-weights` (ImageNet ResNeXt weights to
//! safetensors). Neither is built yet; this entry point says so instead of failing obscurely.

use anyhow::bail;

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1);
    match task.as_deref() {
        Some(name @ ("fetch-data" | "convert-weights")) => {
            bail!("cargo xtask {name} is not built yet")
        }
        Some(other) => bail!("unknown task {other:?}; tasks: fetch-data, convert-weights"),
        None => bail!("usage: cargo xtask <fetch-data|convert-weights>"),
    }
}
