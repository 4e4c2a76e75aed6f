//! One path names a dataset: a prepared folder, or a folder with an image subfolder and a mask
//! subfolder (as the public datasets unpack), read the way `d2a prepare` reads them.

use std::path::{Path, PathBuf};

use crate::readers::{Finish, ReadOptions, read_source_with};
use crate::{Error, Result, Slice, prepared};

/// Subfolder names tried for the images, in order.
pub const IMAGE_DIRS: [&str; 2] = ["images", "imgs"];
/// Subfolder names tried for the masks, in order.
pub const MASK_DIRS: [&str; 5] = ["masks", "pseudo_masks", "labels", "gt", "masks_binary"];

/// The `(images, masks)` subfolders of a dataset folder, if it has them.
pub fn subfolders(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| names.iter().map(|n| dir.join(n)).find(|p| p.is_dir());
    Some((find(&IMAGE_DIRS)?, find(&MASK_DIRS)?))
}

/// Every slice of the dataset at `path`: a prepared folder (read as prepared; `opts` is
/// ignored), or a folder with `images/` and `masks/` (or `pseudo_masks/`, `labels/`, ...)
/// read with `opts`.
pub fn read_dataset(path: &Path, opts: &ReadOptions) -> Result<Vec<Slice>> {
    read_dataset_with(path, opts, &|s| s)
}

/// [`read_dataset`], each kept slice passed through `finish` as soon as it is read (training
/// packs them: [`crate::PackedSlice`]).
pub fn read_dataset_with<T: Send>(
    path: &Path,
    opts: &ReadOptions,
    finish: Finish<T>,
) -> Result<Vec<T>> {
    if prepared::is_prepared(path) {
        return Ok(prepared::read_with(path, finish)?.1);
    }
    if !path.is_dir() {
        return Err(Error::NotAFolder {
            path: path.to_path_buf(),
        });
    }
    let Some((images, masks)) = subfolders(path) else {
        return Err(Error::Invalid(format!(
            "{} is neither a prepared folder (no manifest.json) nor a dataset folder with an image \
             subfolder ({}) and a mask subfolder ({})",
            path.display(),
            IMAGE_DIRS.join(", "),
            MASK_DIRS.join(", ")
        )));
    };
    Ok(read_source_with(&images, &masks, opts, finish)?.slices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_without_subfolders_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_dataset(dir.path(), &ReadOptions::paper()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&dir.path().display().to_string()) && text.contains("pseudo_masks"),
            "{text}"
        );
        let missing = dir.path().join("nothing");
        assert!(read_dataset(&missing, &ReadOptions::paper()).is_err());
    }
}
