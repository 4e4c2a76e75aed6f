//! Helpers shared by every d2a test (unit tests of each crate take this crate as a
//! dev-dependency): where `../shared` lives and how a test that needs it skips or fails without
//! it, and small mask images written to temporary folders.

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma};

/// `../shared/data` beside the repository (or `$D2A_SHARED_DATA`): the real CT slices.
///
/// The real CT data is non-commercial and never copied into the repository. Where it is
/// absent, this fails the test under `CI=true` (CI always has it) and elsewhere returns `None`
/// after printing a `SKIPPED` line that `cargo test` shows (it bypasses output capture).
pub fn shared_data() -> Option<PathBuf> {
    shared("data", "D2A_SHARED_DATA")
}

/// `../shared/fixtures` beside the repository (or `$D2A_SHARED_FIXTURES`): the PyTorch
/// reference tensors. Missing: as [`shared_data`].
pub fn shared_fixtures() -> Option<PathBuf> {
    shared("fixtures", "D2A_SHARED_FIXTURES")
}

/// The file `name` of [`shared_fixtures`], if the folder is there.
pub fn shared_fixture(name: &str) -> Option<PathBuf> {
    let path = shared_fixtures()?.join(name);
    if path.is_file() {
        Some(path)
    } else {
        missing(&path)
    }
}

/// `../shared/<sub>` (or `$<var>`), with the policy of [`shared_data`].
fn shared(sub: &str, var: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os(var) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared")
            .join(sub),
    };
    if dir.is_dir() {
        Some(dir)
    } else {
        missing(&dir)
    }
}

/// A check that needs an optional tool this machine lacks (`what` says which, and how to get
/// it): prints a `SKIPPED` line that `cargo test` shows. Unlike `../shared`, these tools come
/// from a package registry (`.ci/run` installs them when it can), so their absence never fails
/// a run; the rest of the test still runs.
pub fn skip(what: &str) {
    use std::io::Write as _;
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {what}");
}

fn missing(path: &Path) -> Option<PathBuf> {
    use std::io::Write as _;
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs {}, which CI must have", path.display());
    }
    // Straight to the process's stderr: `eprintln!` would be captured and hidden.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {} not found (set D2A_SHARED_DATA / D2A_SHARED_FIXTURES)",
        path.display()
    );
    None
}

/// Writes an 8-bit grayscale PNG of `w x h` pixels from `f(x, y)`.
pub fn write_gray(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("creating a test folder");
    }
    GrayImage::from_fn(w, h, |x, y| Luma([f(x, y)]))
        .save(path)
        .expect("writing a test image");
}
