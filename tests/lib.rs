//! Helpers shared by d2a's integration tests: where the real data lives and how to skip without
//! it, and small mask images written to temporary folders.

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma};

/// `../shared/data` beside the repository (or `$D2A_SHARED_DATA`), if it exists.
///
/// The real CT data is non-commercial and never copied into the repository, so tests that use
/// it call this and skip, with a message, on machines that lack it.
pub fn shared_data() -> Option<PathBuf> {
    let dir = match std::env::var_os("D2A_SHARED_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
    };
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: real data not found at {} (set D2A_SHARED_DATA to point at it)",
            dir.display()
        );
        None
    }
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
