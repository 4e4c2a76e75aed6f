//! The paper's baselines (Table 2, SPEC §2.8), each in its own file with its citation, built on
//! the same ops and layers as the D2A U-Net so that one training loop serves them all.
//!
//! Today: [`unet`]. Attention U-Net, U-Net++, FCN-8s and DeepLab v3 are to come.

pub mod unet;
