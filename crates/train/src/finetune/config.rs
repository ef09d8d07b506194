//! The `[finetune]` table of a fine-tuning config, and the run spec a fine-tuning directory keeps.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tritium_checkpoint::LoraLayout;
use tritium_model::config::from_toml;
use tritium_model::{ModelConfig, Projection};

use crate::error::{TrainError, io};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Lora,
    Full,
}

fn d_method() -> Method {
    Method::Lora
}
fn d_rank() -> usize {
    8
}
fn d_alpha() -> f32 {
    16.0
}
fn d_dropout() -> f64 {
    0.05
}
fn d_targets() -> Vec<Projection> {
    Projection::ALL.to_vec()
}
fn d_steps() -> usize {
    200
}
fn d_batch() -> usize {
    8
}
fn d_seq() -> usize {
    256
}
fn d_lr() -> f64 {
    2e-3
}
fn d_warmup() -> usize {
    10
}
fn d_clip() -> f32 {
    1.0
}
fn d_holdout() -> usize {
    10
}
fn d_log() -> usize {
    10
}
fn d_eval() -> usize {
    50
}
fn d_ckpt() -> usize {
    100
}
fn d_keep() -> usize {
    2
}

/// The `[finetune]` table of a fine-tuning config.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    #[serde(default = "d_method")]
    pub method: Method,
    #[serde(default = "d_rank")]
    pub rank: usize,
    #[serde(default = "d_alpha")]
    pub alpha: f32,
    #[serde(default = "d_dropout")]
    pub dropout: f64,
    /// BitLinears that get adapters: any of q, k, v, o, gate, up, down.
    #[serde(default = "d_targets")]
    pub target: Vec<Projection>,
    #[serde(default = "d_steps")]
    pub steps: usize,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Longest training row in tokens; longer examples are cut (and counted).
    #[serde(default = "d_seq")]
    pub seq_len: usize,
    /// Pack several short examples into each row of `seq_len`, attention cut between them.
    #[serde(default)]
    pub packing: bool,
    #[serde(default = "d_lr")]
    pub lr: f64,
    #[serde(default = "d_warmup")]
    pub warmup_steps: usize,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "d_clip")]
    pub grad_clip: f32,
    /// Every Nth example is held out when no separate evaluation file is given.
    #[serde(default = "d_holdout")]
    pub holdout_every: usize,
    #[serde(default = "d_log")]
    pub log_every: usize,
    /// Held-out response loss every N steps (and at the end; 0: only at the end).
    #[serde(default = "d_eval")]
    pub eval_every: usize,
    /// A checkpoint every N steps (and at the end; 0: only at the end).
    #[serde(default = "d_ckpt")]
    pub checkpoint_every: usize,
    #[serde(default = "d_keep")]
    pub keep_checkpoints: usize,
    #[serde(default)]
    pub seed: u64,
    /// A Jinja chat template (default: ChatML).
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub skip_invalid: bool,
    /// The training products' arithmetic, as `precision` in a training run's [train]: "f32",
    /// "bf16" (AMX tiles or AVX512-BF16; f32 on a CPU with neither), or "int8" (bf16, and the input
    /// gradients of the BitLinear layers being trained as int8 × ternary: `method = "full"`
    /// only, since a LoRA run's base is frozen and would gain nothing).
    #[serde(default)]
    pub precision: tritium_model::Precision,
    /// Activation checkpointing, as in a training run's [train] (see
    /// [`crate::config::Checkpointing`]).
    #[serde(default)]
    pub gradient_checkpointing: crate::config::Checkpointing,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    finetune: FinetuneConfig,
}

impl FinetuneConfig {
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// As [`Self::load`], from the text of a file named `origin` in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, TrainError> {
        let bad = |msg: String| TrainError::Config(format!("{origin}: {msg}"));
        // Parsed in two steps: syntax errors carry their line, type errors the key's path.
        let table: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let f: File =
            from_toml(toml::Value::Table(table)).map_err(|(key, msg)| match key.as_str() {
                "." => bad(msg),
                _ => bad(format!("{key}: {msg}")),
            })?;
        f.finetune.validate().map_err(bad)?;
        Ok(f.finetune)
    }

    /// Every value in range, the message naming the key.
    pub(super) fn validate(&self) -> Result<(), String> {
        let at_least = |key: &str, v: usize, min: usize| {
            (v < min).then(|| format!("[finetune].{key} = {v}: must be at least {min}"))
        };
        let positive = |key: &str, v: f64| {
            (!(v.is_finite() && v > 0.0))
                .then(|| format!("[finetune].{key} = {v}: must be a finite number > 0"))
        };
        let non_negative = |key: &str, v: f64| {
            (!(v.is_finite() && v >= 0.0))
                .then(|| format!("[finetune].{key} = {v}: must be a finite number ≥ 0"))
        };
        let problem = at_least("rank", self.rank, 1)
            .or_else(|| at_least("batch_size", self.batch_size, 1))
            .or_else(|| at_least("seq_len", self.seq_len, 2))
            .or_else(|| at_least("steps", self.steps, 1))
            .or_else(|| at_least("holdout_every", self.holdout_every, 2))
            .or_else(|| at_least("log_every", self.log_every, 1))
            .or_else(|| at_least("keep_checkpoints", self.keep_checkpoints, 1))
            .or_else(|| positive("lr", self.lr))
            .or_else(|| positive("alpha", self.alpha as f64))
            .or_else(|| non_negative("weight_decay", self.weight_decay))
            .or_else(|| non_negative("grad_clip", self.grad_clip as f64))
            .or_else(|| {
                (!(0.0..1.0).contains(&self.dropout))
                    .then(|| format!("[finetune].dropout = {}: must be in [0, 1)", self.dropout))
            })
            .or_else(|| {
                (self.method == Method::Lora && self.precision == tritium_model::Precision::Int8).then(|| {
                    "[finetune].precision = \"int8\": its int8 products are the input gradients \
                     of BitLinear layers being trained, and LoRA freezes them; use \"bf16\" (or \
                     method = \"full\")"
                        .to_string()
                })
            })
            .or_else(|| {
                (self.method == Method::Lora && self.target.is_empty()).then(|| {
                    "[finetune].target is empty: LoRA needs at least one of q, k, v, o, gate, up, down".to_string()
                })
            })
            .or_else(|| {
                let mut seen = Vec::new();
                self.target.iter().find(|t| {
                    let dup = seen.contains(t);
                    seen.push(*t);
                    dup
                }).map(|t| format!("[finetune].target names {} twice", format!("{t:?}").to_lowercase()))
            });
        problem.map_or(Ok(()), Err)
    }

    pub(super) fn layout(&self) -> LoraLayout {
        LoraLayout {
            rank: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
            target: self.target.clone(),
        }
    }
}

/// What a fine-tuning run was asked to do, kept as `finetune.json` in its directory so
/// `--resume DIR` needs nothing else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    pub config: FinetuneConfig,
    pub base: PathBuf,
    /// Training files, read in order and joined.
    pub data: Vec<PathBuf>,
    pub eval_data: Option<PathBuf>,
    /// Fold the adapter into the weights at the end (LoRA only).
    #[serde(default)]
    pub merge: bool,
}

impl RunSpec {
    pub fn read(out: &Path) -> Result<Self, TrainError> {
        let p = out.join("finetune.json");
        if !p.exists() && out.is_dir() {
            return Err(TrainError::Config(format!(
                "{}: not a fine-tuning run (no finetune.json); --resume takes the --out of `tritium finetune`",
                out.display()
            )));
        }
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {e}", p.display())))
    }
}

/// Parameters an adapter set adds: `r·(d_in + d_out)` per adapted projection.
pub fn lora_param_count(m: &ModelConfig, rank: usize, targets: &[Projection]) -> usize {
    let (d, f, kv) = (m.d_model, m.d_ff, m.kv_heads() * m.head_dim());
    let per = |p: &Projection| {
        let (d_in, d_out) = p.dims(d, kv, f);
        d_in + d_out
    };
    m.n_layers * rank * targets.iter().map(per).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each bad `[finetune]` value is refused with its key and the file named.
    #[test]
    fn bad_values_name_the_key() {
        let file = tempfile::Builder::new()
            .suffix("ft.toml")
            .tempfile()
            .unwrap();
        let p = file.path();
        for (body, key) in [
            ("alpha = -1.0", "alpha"),
            ("alpha = nan", "alpha"),
            ("target = []", "target"),
            ("target = [\"qq\"]", "qq"),
            ("lr = 0.0", "lr"),
            ("rank = 0", "rank"),
            ("seq_len = 1", "seq_len"),
            ("dropout = 1.0", "dropout"),
            ("grad_clip = -1.0", "grad_clip"),
            ("precision = \"int8\"", "precision"),
        ] {
            std::fs::write(p, format!("[finetune]\n{body}\n")).unwrap();
            let e = FinetuneConfig::load(p).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("ft.toml"), "{body}: {e}");
        }
        std::fs::write(p, "[finetune]\nmethod = \"full\"\ntarget = []\n").unwrap();
        FinetuneConfig::load(p).expect("full fine-tuning has no targets to name");
        std::fs::write(p, "[finetune]\nmethod = \"full\"\nprecision = \"int8\"\n").unwrap();
        FinetuneConfig::load(p).expect("full fine-tuning trains BitLinear layers: int8 applies");
    }
}
