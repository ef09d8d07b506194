//! The one error type of training, pretraining and fine-tuning alike.

use std::path::{Path, PathBuf};

use tritium_checkpoint::CheckpointError;

use crate::data::DataError;
use crate::instruct::InstructError;
use crate::step::NonFinite;
use crate::tokenizer::TokenizerError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Instruct(#[from] InstructError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Model(#[from] tritium_model::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    /// Ctrl-C before there was anything to checkpoint.
    #[error("interrupted {0}")]
    Interrupted(String),
    /// Instruction examples that cannot be used: a template that does not render, or nothing
    /// left to train on after tokenization.
    #[error("{0}")]
    Examples(String),
    #[error(
        "{what} at step {step}; stopped without saving it (the last good checkpoint is kept; lower lr or raise warmup_steps)"
    )]
    NonFinite { step: usize, what: NonFinite },
}

/// Wraps an I/O error with the file it concerns.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.to_path_buf();
    move |source| TrainError::Io { path, source }
}
