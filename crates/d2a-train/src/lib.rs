//! Training for d2a: the Dice + BCE loss (SPEC §4) today; Adam with L2 weight decay,
//! reduce-on-plateau and the run folder with its checkpoints land with the training issue.
//!
//! It uses d2a-model, d2a-data and d2a-metrics, and nothing uses it but the cli.

#![warn(missing_docs)]

pub mod fit;
pub mod loss;
pub mod optim;
