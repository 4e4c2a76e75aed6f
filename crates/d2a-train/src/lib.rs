//! Training for d2a: the Dice + BCE loss, Adam with L2 weight decay, reduce-on-plateau, the run
//! folder with its checkpoints and curves (SPEC §4).
//!
//! It uses d2a-model, d2a-data and d2a-metrics, and nothing uses it but the cli. It lands with
//! the training issue.

#![warn(missing_docs)]
