//! Training for tritium: from text to a trained BitNet b1.58 checkpoint.
//!
//! Data flows one way: [`text`] reads files into documents → [`tokenizer`] (train or load a
//! byte-level BPE) → [`data`] prepares flat token files and samples windows from them →
//! [`trainer::train`] runs the loop: [`step::train_step`] with [`optim::AdamW`] and the
//! [`schedule::Schedule`] of [`config::RunConfig`] → checkpoints (`tritium_checkpoint`) and
//! [`metrics`] in the run directory. [`finetune`] runs the same step on instruction data with
//! LoRA adapters; both report [`event::Event`]s. [`bench`] times the bare training step.

pub mod bench;
pub mod chat;
pub mod config;
pub mod corpus;
pub mod data;
pub mod error;
pub mod event;
pub mod finetune;
pub mod instruct;
pub mod metrics;
pub mod optim;
pub mod parallel;
pub mod prepare;
pub mod schedule;
pub mod step;
pub mod text;
pub mod tokenizer;
pub mod trainer;

pub use bench::{BenchConfig, BenchReport, run_bench};
pub use config::RunConfig;
pub use error::TrainError;
pub use event::{Event, StartData};
pub use schedule::{Decay, Schedule};
pub use step::{StepOutput, StepParams, train_step};
pub use trainer::{Summary, TrainOptions, train};

/// Fixtures the step tests share.
#[cfg(test)]
mod testing {
    use tritium_model::ModelConfig;
    use tritium_model::burn::prelude::*;

    /// A two-layer model small enough for exact step comparisons.
    pub fn tiny_config() -> ModelConfig {
        ModelConfig::from_toml_str(
            "[model]\nvocab_size = 61\nd_model = 32\nn_layers = 2\nn_heads = 2\nd_ff = 64\nmax_seq_len = 16\n",
        )
        .unwrap()
    }

    /// Micro-batch `m`: two rows of eight inputs and their next-token targets.
    pub fn micro_batch(m: usize, dev: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
        let ids: Vec<i64> = (0..2 * 9).map(|i| ((i * 7 + m * 13) % 61) as i64).collect();
        let t = Tensor::<1, Int>::from_ints(ids.as_slice(), dev).reshape([2, 9]);
        (t.clone().slice([0..2, 0..8]), t.slice([0..2, 1..9]))
    }
}
