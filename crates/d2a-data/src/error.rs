//! The error type of the data crate: every variant names the file or folder at fault.

use std::path::PathBuf;

/// What can go wrong while reading data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was being done: "read", "write", "create", "rename", "remove", "list".
        op: &'static str,
        /// The path at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A special file (FIFO, socket, device) or a folder where a file was expected: refused
    /// before it is opened, since reading a FIFO blocks until a writer comes.
    #[error("{path} is not a regular file (a folder, FIFO, socket or device)")]
    NotARegularFile {
        /// The path at fault.
        path: PathBuf,
    },
    /// A path that should be a folder is not one.
    #[error("{path} is not a folder")]
    NotAFolder {
        /// The path at fault.
        path: PathBuf,
    },
    /// A folder holds no image file of a known type.
    #[error("{path} holds no image (looked for {extensions})")]
    EmptyFolder {
        /// The folder.
        path: PathBuf,
        /// The extensions looked for, for the message.
        extensions: String,
    },
    /// Two files in one folder share a stem, so pairing by stem would be ambiguous.
    #[error("{first} and {second} have the same stem; keep one of them")]
    DuplicateStem {
        /// One file.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// Files of two folders do not pair up by stem.
    #[error("{0}")]
    Unpaired(Box<UnpairedFiles>),
    /// An image could not be decoded (corrupt, truncated or of an unsupported kind).
    #[error("cannot decode image {path}: {reason}")]
    Decode {
        /// The file at fault.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// Two images that must have the same size do not.
    #[error("{left} is {left_size:?} (width, height) but {right} is {right_size:?}")]
    SizeMismatch {
        /// One file.
        left: PathBuf,
        /// Its size.
        left_size: (u32, u32),
        /// The other file.
        right: PathBuf,
        /// Its size.
        right_size: (u32, u32),
    },
    /// A NIfTI file could not be read or has an unsupported layout.
    #[error("cannot read NIfTI {path}: {reason}")]
    Nifti {
        /// The file at fault.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An image and its mask have different shapes.
    #[error("image {image} has shape {image_dims:?} but mask {mask} has shape {mask_dims:?}")]
    MaskShape {
        /// The image file.
        image: PathBuf,
        /// Its shape.
        image_dims: Vec<usize>,
        /// The mask file.
        mask: PathBuf,
        /// Its shape.
        mask_dims: Vec<usize>,
    },
    /// A NaN or infinite voxel.
    #[error("{path}: slice {slice_idx} holds a NaN or infinite value (pixel {index})")]
    NonFinite {
        /// The file at fault.
        path: PathBuf,
        /// The slice.
        slice_idx: usize,
        /// Flat index of the first bad pixel in the slice.
        index: usize,
    },
    /// A prepared dataset that cannot be used (wrong version, missing or corrupt shard).
    #[error("prepared dataset {path}: {reason}")]
    Prepared {
        /// The folder or file at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A DICOM file or series that cannot be read as a CT volume.
    #[error("DICOM {path}: {reason}")]
    Dicom {
        /// The file or folder at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Bad options (sizes, counts) given by the caller.
    #[error("{0}")]
    Invalid(String),
    /// An error from candle (tensor I/O).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A threshold outside `[0, 1]`.
    #[error("threshold must be in [0, 1], got {0}")]
    BadThreshold(f64),
}

/// The result type of the data crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The files of two folders left without a partner by [`pair_by_stem`](crate::slice_files::pair_by_stem).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpairedFiles {
    /// What the left folder holds ("prediction", "image", ...).
    pub left_role: String,
    /// The left folder.
    pub left_dir: PathBuf,
    /// File names found only on the left.
    pub only_left: Vec<String>,
    /// What the right folder holds.
    pub right_role: String,
    /// The right folder.
    pub right_dir: PathBuf,
    /// File names found only on the right.
    pub only_right: Vec<String>,
}

impl std::fmt::Display for UnpairedFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (role, dir, files, other_role) in [
            (
                &self.left_role,
                &self.left_dir,
                &self.only_left,
                &self.right_role,
            ),
            (
                &self.right_role,
                &self.right_dir,
                &self.only_right,
                &self.left_role,
            ),
        ] {
            if !files.is_empty() {
                parts.push(format!(
                    "{} {role} file(s) in {} have no {other_role} with the same stem: {}",
                    files.len(),
                    dir.display(),
                    list_some(files)
                ));
            }
        }
        f.write_str(&parts.join("; "))
    }
}

/// The first few names of a list, with a count of the rest, for error messages.
fn list_some(names: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut out = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        out.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    out
}
