//! d2a's cross-crate integration tests, one module per area.

mod eval_masks;
mod overfit;
