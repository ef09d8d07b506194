//! `state.json`: what a checkpoint holds besides its tensors — progress, the model's shape, the
//! tokenizer's identity and where the checkpoint came from.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tritium_model::ModelConfig;

use crate::CheckpointError;

/// The `state.json` format this build writes. Format 1 (which stored the whole pretraining run
/// config) is still read.
pub const FORMAT: u32 = 2;

/// The command that wrote a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Train,
    Finetune,
    Import,
}

/// Where a checkpoint came from: kept for the record and for the tokenizer fallback of
/// checkpoints written before the tokenizer was copied in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    pub origin: Origin,
    /// The tokenizer file the producing run read; its copy is `tokenizer.json` beside the weights.
    pub tokenizer: Option<PathBuf>,
    /// The producing command's own configuration, as it wrote it (a `RunConfig`, a fine-tuning
    /// spec, an import's source): informative, never read back as a config.
    #[serde(default)]
    pub run: serde_json::Value,
}

impl Provenance {
    /// Written by `origin`, which read `tokenizer`; no run config recorded. The tokenizer's path
    /// is made absolute, so that a checkpoint whose own copy goes missing finds it from any
    /// working directory (its hash still decides whether it is the same file).
    pub fn new(origin: Origin, tokenizer: Option<PathBuf>) -> Provenance {
        Provenance {
            origin,
            tokenizer: tokenizer.map(|p| std::path::absolute(&p).unwrap_or(p)),
            run: serde_json::Value::Null,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub format: u32,
    /// Optimizer steps completed.
    pub step: usize,
    pub tokens: u64,
    pub best_val_loss: Option<f64>,
    /// SHA-256 of the tokenizer the weights were trained with.
    pub tokenizer_hash: String,
    /// The shape of the model in `model.bpk`.
    pub model: ModelConfig,
    pub provenance: Provenance,
}

/// Format 1: `config` held the pretraining run config, with `[model]` and `[data].tokenizer`.
#[derive(Deserialize)]
struct StateV1 {
    step: usize,
    tokens: u64,
    best_val_loss: Option<f64>,
    tokenizer_hash: String,
    config: serde_json::Value,
}

impl State {
    /// A state at step 0 for a model of shape `model`.
    pub fn new(model: ModelConfig, tokenizer_hash: String, provenance: Provenance) -> State {
        State {
            format: FORMAT,
            step: 0,
            tokens: 0,
            best_val_loss: None,
            tokenizer_hash,
            model,
            provenance,
        }
    }

    /// Reads `ckpt/state.json`, format 1 or 2.
    pub fn read(ckpt: &Path) -> Result<State, CheckpointError> {
        let path = ckpt.join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|source| CheckpointError::Io {
            path: path.clone(),
            source,
        })?;
        let bad = |msg: String| CheckpointError::Bad {
            path: path.clone(),
            msg,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let state = Self::from_json(value, ckpt).map_err(bad)?;
        // A shape the model cannot be built with is refused here, before anything sizes by it.
        state.model.validate().map_err(|e| bad(e.to_string()))?;
        Ok(state)
    }

    fn from_json(value: serde_json::Value, ckpt: &Path) -> Result<State, String> {
        match value.get("format").and_then(serde_json::Value::as_u64) {
            Some(2) => at_path(value),
            Some(1) => {
                let v1: StateV1 = at_path(value)?;
                let model =
                    at_path(v1.config["model"].clone()).map_err(|e| format!("config.model.{e}"))?;
                let tokenizer = v1.config["data"]["tokenizer"].as_str().map(PathBuf::from);
                // Format 1 did not say what wrote it; fine-tuning left its template beside.
                let origin = if ckpt.join(crate::CHAT_TEMPLATE).exists() {
                    Origin::Finetune
                } else {
                    Origin::Train
                };
                Ok(State {
                    format: FORMAT,
                    step: v1.step,
                    tokens: v1.tokens,
                    best_val_loss: v1.best_val_loss,
                    // Some format-1 fine-tuning checkpoints recorded the base's tokenizer hash
                    // beside their own tokenizer: unknown, so not checked.
                    tokenizer_hash: if origin == Origin::Finetune {
                        String::new()
                    } else {
                        v1.tokenizer_hash
                    },
                    model,
                    provenance: Provenance {
                        origin,
                        tokenizer,
                        run: v1.config,
                    },
                })
            }
            Some(f) => Err(format!(
                "checkpoint format {f}; this build reads formats 1 and {FORMAT}"
            )),
            None => Err("no checkpoint format number".into()),
        }
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("state serializes")
    }
}

/// Deserializes `value`, naming the field at fault ("model.d_model: invalid type: …").
fn at_path<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}
