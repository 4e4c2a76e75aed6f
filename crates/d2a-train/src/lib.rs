//! Training for d2a: the Dice + BCE loss (SPEC §4), Adam with L2 weight decay, reduce-on-plateau,
//! the resumable [`fit::Trainer`], scoring on labelled slices, and run folders with their
//! checkpoints and curves.
//!
//! It uses d2a-model, d2a-data and d2a-metrics, and nothing uses it but the cli.

#![warn(missing_docs)]

pub mod curves;
mod error;
pub mod fit;
pub mod loss;
pub mod optim;
pub mod run;
pub mod schedule;
pub mod score;
#[cfg(test)]
mod torch_parity;

pub use error::{Error, Result};
