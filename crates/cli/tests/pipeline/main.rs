//! The whole pipeline through the libraries (no `tritium` binary): a tiny model trained here,
//! checkpointed, exported to every GGUF form and run by the engine, must be the same model at every
//! stage. One test binary, so the trained fixture is shared:
//!
//! - [`engine`]: the engine's logits equal the Burn forward pass (eval mode) within 1e-3 relative
//!   for every ternary format, and greedy generation is identical token for token;
//! - [`eval`]: `tritium eval`'s checkpoint and GGUF scorers agree;
//! - [`lora`]: LoRA adapters (trained by fine-tuning, exported, applied by the engine) give the
//!   Burn model's outputs; fine-tuning resumes exactly and merges.
//!
//! The checkpoint is trained here for a short while (a minute on 2 cores), or taken from
//! `TRITIUM_TEST_CKPT` (e.g. `runs/tiny-ternary`, the 600-step model of `configs/tiny.toml`).

#[path = "../common/mod.rs"]
mod common;
mod engine;
mod eval;
mod import;
mod lora;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use common::root;

use tritium_checkpoint::Checkpoint;
use tritium_engine::{KvType, Logits, Model, Runtime, Sampler, SamplerConfig, Session};
use tritium_export::{EmbdType, ExportOptions, ScaleMode, WeightType, export};
use tritium_model::burn::prelude::*;
use tritium_model::{Backend, Transformer};
use tritium_train::{RunConfig, TrainOptions, train};

/// Burn's random numbers come from one process-wide generator, and even loading a checkpoint draws
/// from it (the model is initialised before its record is loaded). The fine-tuning tests expect a
/// reproducible stream, so every test here takes this lock and they run one at a time.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

struct Fixture {
    _dir: tempfile::TempDir,
    ckpt: PathBuf,
    files: Vec<(String, PathBuf)>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        // Run configs name their files relative to the repository root.
        std::env::set_current_dir(root()).unwrap();
        let ckpt = match std::env::var("TRITIUM_TEST_CKPT") {
            Ok(p) => tritium_checkpoint::resolve(&root().join(p)).unwrap(),
            Err(_) => {
                let r = root();
                let sets: Vec<String> = vec![
                    "n_layers=2".into(),
                    "n_kv_heads=2".into(), // exercise grouped-query attention
                    "max_steps=250".into(),
                    "seq_len=64".into(),
                    "warmup_steps=10".into(),
                    "eval_every=1000".into(),
                    "checkpoint_every=250".into(),
                    "sample_tokens=0".into(),
                    format!(
                        "tokenizer=\"{}\"",
                        r.join("datasets/tinystories/tokenizer.json").display()
                    ),
                    format!("prepared=\"{}\"", dir.path().join("data").display()),
                    format!(
                        "inputs=[\"{}\", \"{}\"]",
                        r.join("datasets/tinystories/train_head.txt.gz").display(),
                        r.join("datasets/tinystories/valid_head.txt.gz").display()
                    ),
                ];
                let config = RunConfig::load(&r.join("configs/tiny.toml"), &sets).unwrap();
                let out = dir.path().join("run");
                let opts = TrainOptions {
                    config,
                    out: out.clone(),
                    resume: false,
                    stop: Arc::new(AtomicBool::new(false)),
                    fused: true,
                    check_memory: true,
                };
                train(opts, &mut |_| {}).unwrap();
                tritium_checkpoint::resolve(&out).unwrap()
            }
        };
        let mut files = Vec::new();
        for (name, weights, scale, embd) in [
            ("tq2_0", WeightType::Tq2_0, ScaleMode::Exact, EmbdType::F16),
            ("tq1_0", WeightType::Tq1_0, ScaleMode::Exact, EmbdType::F16),
            ("i2_s", WeightType::I2S, ScaleMode::Exact, EmbdType::F16),
            (
                "tq2_0-folded",
                WeightType::Tq2_0,
                ScaleMode::Folded,
                EmbdType::F16,
            ),
            (
                "tq2_0-f32embd",
                WeightType::Tq2_0,
                ScaleMode::Exact,
                EmbdType::F32,
            ),
        ] {
            let path = dir.path().join(format!("{name}.gguf"));
            export(
                &ckpt,
                &ExportOptions {
                    weights,
                    scale,
                    embd,
                    device: Backend::Flex,
                },
                &path,
            )
            .unwrap();
            files.push((name.to_string(), path));
        }
        Fixture {
            _dir: dir,
            ckpt,
            files,
        }
    })
}

fn burn_model() -> (Transformer, Device) {
    let dev = Backend::Flex.device().unwrap();
    let model = load_model(&fixture().ckpt, &dev);
    (model, dev)
}

fn load_model(ckpt: &Path, dev: &Device) -> Transformer {
    Checkpoint::open(ckpt).unwrap().load_model(dev).unwrap()
}

/// A GGUF on the engine with two threads, as CI has.
fn load_gguf(path: &Path) -> Model {
    Model::load(path, &Runtime::new(2)).unwrap()
}

fn burn_logits(model: &Transformer, dev: &Device, ids: &[u32]) -> Vec<f32> {
    let x = Tensor::<1, Int>::from_ints(
        ids.iter().map(|&i| i as i64).collect::<Vec<_>>().as_slice(),
        dev,
    )
    .reshape([1, ids.len()]);
    model
        .forward(x)
        .into_data()
        .convert::<f32>()
        .iter::<f32>()
        .collect()
}

pub const PROMPT: &str = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends.";

fn greedy() -> Sampler {
    Sampler::new(SamplerConfig {
        temperature: 0.0,
        ..SamplerConfig::default()
    })
}

/// `n` tokens after `prompt`, each the argmax, through the session's own loop (no `generate`).
fn greedy_tokens(s: &mut Session, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut sampler = greedy();
    let mut out = Vec::new();
    let mut logits = s.forward(prompt, Logits::Last).unwrap().to_vec();
    for _ in 0..n {
        let t = sampler.sample(&logits, &[]);
        out.push(t);
        logits = s.forward(&[t], Logits::Last).unwrap().to_vec();
    }
    out
}
