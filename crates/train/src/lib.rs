//! Training for tritium.
//!
//! [`step`] holds one optimizer step (forward, backward, AdamW) exactly as the training loop runs
//! it; [`bench`] times that step on random tokens, which is the figure the PyTorch anchor
//! (`torch_bitnet.py bench`) is compared against.

pub mod bench;
pub mod step;

pub use bench::{BenchConfig, BenchReport, run_bench};
pub use step::{OptimConfig, TrainStep};
