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
