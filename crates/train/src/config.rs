//! `RunConfig`: one TOML file with `[model]`, `[data]` and `[train]` tables, validated once, with
//! `--set key=value` overrides applied before validation.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tritium_model::config::from_toml;
use tritium_model::{Backend, ModelConfig};

use crate::schedule::{Decay, Schedule};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {msg}")]
    Invalid { origin: String, msg: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A Hugging Face tokenizer.json.
    pub tokenizer: PathBuf,
    /// Prepared data directory (`tritium data prepare`). Prepared from `inputs` if missing.
    pub prepared: PathBuf,
    /// Text files to prepare from when `prepared` does not exist yet.
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
    /// Every n-th document goes to the validation split.
    #[serde(default = "default_val_every")]
    pub val_every: usize,
    /// The JSONL field or Parquet column that holds the text.
    #[serde(default = "default_field")]
    pub field: String,
}

fn default_field() -> String {
    crate::text::DEFAULT_FIELD.into()
}

fn default_val_every() -> usize {
    20
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub max_steps: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    pub lr: f64,
    /// Final learning rate.
    #[serde(default)]
    pub min_lr: f64,
    /// Second-stage peak for `two-stage` (defaults to lr / 2... see `lr_at`).
    #[serde(default)]
    pub lr2: Option<f64>,
    pub warmup_steps: usize,
    pub schedule: Decay,
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f32,
    #[serde(default = "default_beta2")]
    pub beta2: f32,
    #[serde(default = "default_eps")]
    pub eps: f32,
    /// Global-norm gradient clipping; 0 disables it.
    pub grad_clip: f32,
    pub eval_every: usize,
    /// Validation batches per evaluation.
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    pub checkpoint_every: usize,
    pub keep_checkpoints: usize,
    #[serde(default = "one")]
    pub log_every: usize,
    pub seed: u64,
    /// Tokens generated for the sample shown at each evaluation (0: none).
    #[serde(default)]
    pub sample_tokens: usize,
    #[serde(default)]
    pub sample_prompt: String,
    /// Compute device (flex, wgpu, wgpu:N, cuda, cuda:N, ndarray).
    #[serde(default)]
    pub device: Backend,
    /// Data-parallel training over these devices (overrides `device`): one replica each, the
    /// micro-batches dealt out, gradients summed by Burn's all-reduce (CUDA only in Burn 0.22).
    #[serde(default)]
    pub devices: Vec<Backend>,
    /// The arithmetic of the step's matrix products on the fused CPU ops: "f32", "bf16"
    /// (operands rounded to bf16, f32 accumulation, as PyTorch's autocast; AMX tiles or AVX512-BF16,
    /// f32 on a CPU with neither), or "int8" (bf16, and each BitLinear's input gradient as int8 ×
    /// ternary, dY quantized per token: SwitchBack's scheme). Weights, optimizer state, the loss
    /// and evaluation stay f32. Absent: `bitlinear::pretraining_default` (int8 on the fused CPU
    /// ops, f32 elsewhere); the run's own config.toml records what it resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<tritium_model::Precision>,
    /// Activation checkpointing (see [`Checkpointing`]).
    #[serde(default)]
    pub gradient_checkpointing: Checkpointing,
}

/// `gradient_checkpointing`: `false` (the default), `true` (every block) or a number of blocks
/// (the first N). A checkpointed block keeps only its input from the forward pass and is
/// recomputed in the backward: its activations cost memory one block at a time, for a second
/// forward pass through it. The gradients are the same either way (with dropout, the masks differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "CheckpointingToml", into = "CheckpointingToml")]
pub enum Checkpointing {
    #[default]
    Off,
    All,
    Blocks(usize),
}

#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(untagged)]
enum CheckpointingToml {
    Switch(bool),
    Blocks(usize),
}

impl From<CheckpointingToml> for Checkpointing {
    fn from(t: CheckpointingToml) -> Self {
        match t {
            CheckpointingToml::Switch(false) | CheckpointingToml::Blocks(0) => Checkpointing::Off,
            CheckpointingToml::Switch(true) => Checkpointing::All,
            CheckpointingToml::Blocks(n) => Checkpointing::Blocks(n),
        }
    }
}

impl From<Checkpointing> for CheckpointingToml {
    fn from(c: Checkpointing) -> Self {
        match c {
            Checkpointing::Off => CheckpointingToml::Switch(false),
            Checkpointing::All => CheckpointingToml::Switch(true),
            Checkpointing::Blocks(n) => CheckpointingToml::Blocks(n),
        }
    }
}

impl Checkpointing {
    /// How many blocks, from the first, are recomputed (`usize::MAX`: all of them).
    pub fn blocks(self) -> usize {
        match self {
            Checkpointing::Off => 0,
            Checkpointing::All => usize::MAX,
            Checkpointing::Blocks(n) => n,
        }
    }
}

fn one() -> usize {
    1
}
fn default_beta1() -> f32 {
    0.9
}
fn default_beta2() -> f32 {
    0.95
}
fn default_eps() -> f32 {
    1e-8
}
fn default_eval_batches() -> usize {
    8
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
}

impl RunConfig {
    /// Reads `path`, applies `overrides` (`key=value`; a bare key is looked up in the `[train]`,
    /// `[model]` and `[data]` tables, or name it `table.key`), and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    /// As [`Self::load`], from the text of a file named `origin` in messages.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        let origin = origin.to_string();
        let mut value: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            origin: origin.clone(),
            msg: e.to_string(),
        })?;
        // Where each overridden key came from, so a bad value blames its --set, not the file.
        let mut set_by = Vec::new();
        for o in overrides {
            let key = apply_override(&mut value, o).map_err(|msg| ConfigError::Invalid {
                origin: format!("--set {o}"),
                msg,
            })?;
            set_by.push((key, format!("--set {o}")));
        }
        Self::from_table_with(value, &origin, &set_by)
    }

    pub fn from_table(value: toml::Table, origin: &str) -> Result<Self, ConfigError> {
        Self::from_table_with(value, origin, &[])
    }

    /// As [`Self::from_table`]; `set_by` maps a key path (`train.max_steps`) to the `--set` that
    /// gave it its value.
    fn from_table_with(
        value: toml::Table,
        origin: &str,
        set_by: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let invalid = |msg: String| ConfigError::Invalid {
            origin: origin.to_string(),
            msg,
        };
        let cfg: RunConfig = from_toml(toml::Value::Table(value)).map_err(|(key, msg)| {
            let origin = set_by
                .iter()
                .rev()
                .find(|(k, _)| *k == key)
                .map_or(origin, |(_, o)| o.as_str());
            let msg = match key.as_str() {
                "." => msg,
                _ => format!("{key}: {msg}"),
            };
            ConfigError::Invalid {
                origin: origin.to_string(),
                msg,
            }
        })?;
        cfg.model.validate().map_err(|e| invalid(e.to_string()))?;
        cfg.validate().map_err(invalid)?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let t = &self.train;
        for (key, v) in [
            ("max_steps", t.max_steps),
            ("batch_size", t.batch_size),
            ("seq_len", t.seq_len),
            ("grad_accum", t.grad_accum),
            ("eval_every", t.eval_every),
            ("eval_batches", t.eval_batches),
            ("checkpoint_every", t.checkpoint_every),
            ("keep_checkpoints", t.keep_checkpoints),
            ("log_every", t.log_every),
        ] {
            if v == 0 {
                return Err(format!("[train].{key} must be at least 1"));
            }
        }
        if t.seq_len > self.model.max_seq_len {
            return Err(format!(
                "[train].seq_len = {} exceeds [model].max_seq_len = {}",
                t.seq_len, self.model.max_seq_len
            ));
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return Err(format!("[train].lr = {} must be a positive number", t.lr));
        }
        if !(t.min_lr.is_finite() && t.min_lr >= 0.0 && t.min_lr <= t.lr) {
            return Err(format!(
                "[train].min_lr = {} must be between 0 and lr = {}",
                t.min_lr, t.lr
            ));
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return Err(format!(
                "[train].weight_decay = {} must be ≥ 0",
                t.weight_decay
            ));
        }
        if !(t.grad_clip.is_finite() && t.grad_clip >= 0.0) {
            return Err(format!(
                "[train].grad_clip = {} must be ≥ 0 (0 disables clipping)",
                t.grad_clip
            ));
        }
        for (key, b) in [("beta1", t.beta1), ("beta2", t.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(format!("[train].{key} = {b} must be in [0, 1)"));
            }
        }
        if t.warmup_steps > t.max_steps {
            return Err(format!(
                "[train].warmup_steps = {} exceeds max_steps = {}",
                t.warmup_steps, t.max_steps
            ));
        }
        if self.data.val_every < 2 {
            return Err("[data].val_every must be at least 2".into());
        }
        Ok(())
    }

    /// The learning-rate and weight-decay schedule of `[train]`.
    pub fn schedule(&self) -> Schedule {
        let t = &self.train;
        Schedule {
            decay: t.schedule,
            lr: t.lr,
            min_lr: t.min_lr,
            lr2: t.lr2,
            warmup_steps: t.warmup_steps,
            max_steps: t.max_steps,
            weight_decay: t.weight_decay,
        }
    }
}

/// `key=value` onto the table. The value is parsed as TOML (so `3`, `1e-3`, `"x"`, `true`), falling
/// back to a plain string. Returns the key path it set (`train.max_steps`).
fn apply_override(root: &mut toml::Table, o: &str) -> Result<String, String> {
    let (key, raw) = o.split_once('=').ok_or("expected key=value")?;
    let key = key.trim();
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let (table, field) = match key.split_once('.') {
        Some((t, f)) => (t.to_string(), f.to_string()),
        None => {
            let found = ["train", "model", "data"].into_iter().find(|t| {
                root.get(*t)
                    .and_then(|v| v.as_table())
                    .is_some_and(|t| t.contains_key(key))
            });
            match found {
                Some(t) => (t.to_string(), key.to_string()),
                // Keys with defaults may be absent from the file: they belong to [train] unless known.
                None if MODEL_KEYS.contains(&key) => ("model".into(), key.into()),
                None if DATA_KEYS.contains(&key) => ("data".into(), key.into()),
                None => ("train".into(), key.into()),
            }
        }
    };
    let t = root
        .entry(table.clone())
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .ok_or(format!("[{table}] is not a table"))?;
    let path = format!("{table}.{field}");
    t.insert(field, value);
    Ok(path)
}

const MODEL_KEYS: &[&str] = &[
    "n_kv_heads",
    "ffn_act",
    "rope_theta",
    "norm_eps",
    "quant",
    "quant_warmup_steps",
];
const DATA_KEYS: &[&str] = &["inputs", "val_every", "field"];

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny.toml")
    }

    /// `gradient_checkpointing` takes a switch or a number of blocks, and the number reaches
    /// the step as a count (0 and false: none; true: every block).
    #[test]
    fn gradient_checkpointing_is_a_switch_or_a_block_count() {
        let load = |v: &str| {
            RunConfig::load(&tiny(), &[format!("train.gradient_checkpointing={v}")])
                .map(|c| c.train.gradient_checkpointing)
        };
        assert_eq!(load("false").unwrap(), Checkpointing::Off);
        assert_eq!(load("true").unwrap(), Checkpointing::All);
        assert_eq!(load("12").unwrap(), Checkpointing::Blocks(12));
        assert_eq!(load("0").unwrap().blocks(), 0);
        assert_eq!(load("true").unwrap().blocks(), usize::MAX);
        assert_eq!(load("12").unwrap().blocks(), 12);
        let e = load("\"some\"").unwrap_err().to_string();
        assert!(e.contains("gradient_checkpointing"), "{e}");
        let default = RunConfig::load(&tiny(), &[]).unwrap();
        assert_eq!(default.train.gradient_checkpointing, Checkpointing::Off);
    }

    #[test]
    fn bundled_configs_load() {
        let c = RunConfig::load(&tiny(), &[]).unwrap();
        assert_eq!(c.model.d_model, 256);
        let big = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/bitnet-125m.toml");
        RunConfig::load(&big, &[]).unwrap();
    }

    /// A value of the wrong type names its key path, and its origin: the file, or the `--set`
    /// that gave it.
    #[test]
    fn type_errors_name_the_key_and_where_it_came_from() {
        let file = tempfile::Builder::new()
            .suffix("bad.toml")
            .tempfile()
            .unwrap();
        let text = std::fs::read_to_string(tiny()).unwrap();
        std::fs::write(
            file.path(),
            text.replace("d_model = 256", "d_model = \"256\""),
        )
        .unwrap();
        let e = RunConfig::load(file.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("model.d_model") && e.contains("bad.toml"), "{e}");
        let e = RunConfig::load(&tiny(), &["max_steps=abc".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--set max_steps=abc") && e.contains("train.max_steps"),
            "{e}"
        );
    }

    #[test]
    fn overrides_reach_their_tables() {
        let c = RunConfig::load(
            &tiny(),
            &[
                "max_steps=70".into(),
                "lr=1e-3".into(),
                "model.quant=\"none\"".into(),
                "quant=none".into(),
                "schedule=two-stage".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.train.max_steps, 70);
        assert_eq!(c.train.lr, 1e-3);
        assert_eq!(c.model.quant, tritium_model::Quant::None);
        assert_eq!(c.train.schedule, Decay::TwoStage);
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let e = RunConfig::load(&tiny(), &["max_stepz=7".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_stepz"), "{e}");
        let e = RunConfig::load(&tiny(), &["batch_size=0".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("[train].batch_size"), "{e}");
        let e = RunConfig::load(&tiny(), &["seq_len=100000".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_seq_len"), "{e}");
        let e = RunConfig::load(&tiny(), &["lr=-1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("[train].lr"), "{e}");
        let e = RunConfig::load(&tiny(), &["device=tpu".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tpu"), "{e}");
        let e = RunConfig::load(Path::new("nope.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.toml"), "{e}");
    }

    #[test]
    fn schedules_by_hand() {
        let mut c = RunConfig::load(&tiny(), &[]).unwrap();
        c.train.lr = 1.0;
        c.train.min_lr = 0.0;
        c.train.warmup_steps = 10;
        c.train.max_steps = 110;
        c.train.schedule = Decay::Cosine;
        assert!((c.schedule().lr_at(0) - 0.1).abs() < 1e-12);
        assert!((c.schedule().lr_at(9) - 1.0).abs() < 1e-12);
        assert!((c.schedule().lr_at(10) - 1.0).abs() < 1e-12);
        assert!((c.schedule().lr_at(60) - 0.5).abs() < 1e-12); // half-way through the cosine
        assert!(c.schedule().lr_at(110).abs() < 1e-12);
        assert_eq!(c.schedule().weight_decay_at(100), c.train.weight_decay);
        c.train.schedule = Decay::TwoStage;
        c.train.lr2 = Some(0.4);
        // First half (steps 10..55): 1.0 → 0.7 linearly; at 55 it drops to 0.4 → 0 at 110.
        assert!((c.schedule().lr_at(10) - 1.0).abs() < 1e-12);
        assert!((c.schedule().lr_at(54) - (1.0 - 0.3 * 44.0 / 45.0)).abs() < 1e-12);
        assert!((c.schedule().lr_at(55) - 0.4).abs() < 1e-12);
        assert!(c.schedule().lr_at(110).abs() < 1e-12);
        assert_eq!(c.schedule().weight_decay_at(54), c.train.weight_decay);
        assert_eq!(c.schedule().weight_decay_at(55), 0.0);
    }
}
