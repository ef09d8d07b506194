//! What the binary's integration tests share: where the repository is, and a run's losses read
//! back through the trainer's own metrics reader.
// Each test crate includes this module and uses its own part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository root (the binary runs there, so bundled paths resolve).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A run's `(step, loss)` rows: training, then validation.
#[derive(Debug, PartialEq)]
pub struct Losses {
    pub train: Vec<(u64, f64)>,
    pub val: Vec<(u64, f64)>,
}

/// The losses in `run`'s `metrics.jsonl` (none while it does not exist yet).
pub fn losses(run: &Path) -> Losses {
    let rows = tritium_train::metrics::read(&run.join("metrics.jsonl"));
    let curve = |f: fn(&tritium_train::metrics::Row) -> Option<f64>| {
        rows.iter()
            .filter_map(|r| f(r).map(|x| (r.step as u64, x)))
            .collect()
    };
    Losses {
        train: curve(|r| r.loss),
        val: curve(|r| r.val_loss),
    }
}
