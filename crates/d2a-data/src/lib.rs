//! CT data for d2a: from files on disk to augmented training batches (SPEC §3–4).
//!
//! - [`readers`]: NIfTI volumes (`.nii`, `.nii.gz`) with their mask volumes, and folders of 2-D
//!   slices with their masks, as [`Slice`]s with [`Provenance`] (file, volume, slice index) so
//!   that splits are made by patient; display orientation, HU window or /255, labels merged,
//!   slices without lesion dropped unless asked, resized to a square size.
//! - [`prepared`]: slices written once as safetensors shards with a manifest (`d2a prepare`),
//!   read back in seconds; atomic and versioned.
//! - [`synthetic`]: CT-like phantoms with exact masks, the embedded default dataset.
//! - [`augment`]: the paper's augmentation, seeded. [`loader`]: shuffled, prefetched batches.
//! - [`slice_files`]: listing and pairing slice folders, decoding grayscale maps.
//! - [`align`]: finding one copy of a slice inside another by normalised cross-correlation and
//!   carrying its mask across (the radiologists' masks onto Inf-Net's images).
//!
//! The crate stands alone: it depends on no other d2a crate.

#![warn(missing_docs)]

pub mod align;
pub mod augment;
pub mod dataset;
pub mod dicom;
mod error;
pub mod inputs;
pub mod loader;
pub mod prepared;
pub mod readers;
pub mod slice;
pub mod slice_files;
pub mod synthetic;

pub use error::{Error, Result, UnpairedFiles};
pub use readers::{ReadOptions, ReadResult, read_source};
pub use slice::{HasProvenance, Intensity, PackedSlice, Provenance, Slice, SliceView};
