//! Training for tritium: from text to a trained BitNet b1.58 checkpoint.
//!
//! Data flows one way: [`text`] reads files into documents → [`tokenizer`] (train or load a
//! byte-level BPE) → [`data`] prepares flat token files and samples windows from them →
//! [`trainer::train`] runs the loop with [`optim::AdamW`] and the schedule in [`config::RunConfig`] →
//! [`checkpoint`] and [`metrics`] write the run directory. [`bench`] times the bare training step.

pub mod bench;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod eval;
pub mod finetune;
pub mod fsutil;
pub mod instruct;
pub mod metrics;
pub mod optim;
pub mod step;
pub mod text;
pub mod tokenizer;
pub mod trainer;

pub use bench::{BenchConfig, BenchReport, run_bench};
pub use config::RunConfig;
pub use step::{StepOutput, StepParams, train_step};
pub use trainer::{Event, Summary, TrainOptions, train};
