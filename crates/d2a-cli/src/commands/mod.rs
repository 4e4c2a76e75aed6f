//! One module per `d2a` subcommand, each an `Args` struct with a `run` method.

pub mod bench;
pub mod eval;
pub mod eval_masks;
pub mod info;
pub mod predict;
pub mod prepare;
pub mod train;
