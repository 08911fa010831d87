//! Pruning passes.
//!
//! `prune-depth` ([`depth`]) removes whole residual blocks ([`blocks`] finds them), chosen on
//! calibration data and by LIFE's predicted latency, and can refit the next linear layer to
//! compensate ([`refit`]). SDS / Wanda / SparseGPT (unstructured and N:M sparsity) will live here
//! too, sharing the calibration plumbing of [`crate::calib`].

pub mod blocks;
pub mod depth;
pub mod merge;
pub mod refit;
