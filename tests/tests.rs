//! d2a's cross-crate integration tests, one module per area.

mod architecture;
mod eval_masks;
mod fuzz;
mod overfit;
