//! CT data for d2a: from files on disk to slices the model and the metrics can use.
//!
//! Today this crate reads folders of 2-D slice images and masks ([`slice_files`]): listing them,
//! pairing them by file stem and decoding grayscale maps with their bit depth. The NIfTI volume
//! readers, intensity normalisation (SPEC §3), augmentation (SPEC §4) and the batch loader land
//! with the data issue.
//!
//! The crate stands alone: it depends on no other d2a crate.

#![warn(missing_docs)]

pub mod augment;
mod error;
pub mod prepared;
pub mod readers;
pub mod slice;
pub mod slice_files;
pub mod synthetic;

pub use error::{Error, Result, UnpairedFiles};
pub use readers::{ReadOptions, ReadResult, read_source};
pub use slice::{Intensity, Provenance, Slice};
