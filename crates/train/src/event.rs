//! What a training loop reports as it goes, pretraining and fine-tuning alike; the CLI turns
//! these into a progress bar or log lines.

use std::path::PathBuf;

use crate::finetune::FinetuneSummary;
use crate::metrics::Row;

#[derive(Debug, Clone)]
pub enum Event {
    /// Pretraining prepared its token files first.
    Prepared {
        dir: PathBuf,
        tokens: usize,
        seconds: f64,
        text_bytes: usize,
    },
    /// The loop is about to run steps `first_step + 1 ..= max_steps`.
    Start {
        first_step: usize,
        max_steps: usize,
        data: StartData,
        /// What the training products run as, when `precision` asks for more than f32.
        products: Option<&'static str>,
    },
    /// One optimizer step done.
    Step(Row),
    /// Held-out loss (and for pretraining, a sample).
    Eval {
        step: usize,
        val_loss: f64,
        sample: Option<String>,
    },
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
    /// Stopped at a step boundary when asked (Ctrl-C), after a checkpoint.
    Interrupted {
        step: usize,
    },
}

/// What a run trains on, for the start line.
#[derive(Debug, Clone)]
pub enum StartData {
    Corpus {
        tokens_per_step: usize,
        params: usize,
        train_tokens: usize,
        val_tokens: usize,
        unigram_entropy: f64,
    },
    Examples(Box<FinetuneSummary>),
}
