//! `tritium finetune`: LoRA (or full) fine-tuning of a pretrained ternary checkpoint on
//! instruction data, with the loss on assistant tokens only.
//!
//! Flow: config → base checkpoint (+ chat markers added to the tokenizer and embedding if missing)
//! → examples rendered by the chat template and tokenized with a loss mask (optionally packed
//! several to a row, attention cut at their boundaries) → adapters on the chosen BitLinears, base
//! frozen → AdamW on the adapters, with held-out evaluation, metrics, a loss plot and atomic
//! checkpoints as in pretraining → the adapter (safetensors + JSON), a final checkpoint, and with
//! `merge` the adapter folded into a re-quantized checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use tritium_model::burn::module::Param;
use tritium_model::burn::optim::GradientsParams;
use tritium_model::burn::prelude::*;
use tritium_model::burn::tensor::activation::log_softmax;
use tritium_model::{Backend, Transformer};

use crate::chat::{self, Template};
use crate::checkpoint::{self, LoraLayout, State};
use crate::instruct;
use crate::metrics::{self, Row};
use crate::optim::{AdamW, AdamWConfig, grad_norm, param_sizes};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Lora,
    Full,
}

pub const TARGETS: [&str; 7] = Transformer::PROJECTIONS;

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
fn d_targets() -> Vec<String> {
    TARGETS.iter().map(|s| s.to_string()).collect()
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
    pub target: Vec<String>,
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
    /// Held-out response loss every N steps (and at the end).
    #[serde(default = "d_eval")]
    pub eval_every: usize,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    finetune: FinetuneConfig,
}

impl FinetuneConfig {
    pub fn load(path: &Path) -> Result<Self, FinetuneError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FinetuneError::Config(format!("{}: {e}", path.display())))?;
        let f: File = toml::from_str(&text)
            .map_err(|e| FinetuneError::Config(format!("{}: {e}", path.display())))?;
        f.finetune
            .validate()
            .map_err(|e| FinetuneError::Config(format!("{}: {e}", path.display())))?;
        Ok(f.finetune)
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(t) = self.target.iter().find(|t| !TARGETS.contains(&t.as_str())) {
            return Err(format!("target {t:?} is not one of {TARGETS:?}"));
        }
        if self.rank == 0
            || self.batch_size == 0
            || self.seq_len < 2
            || self.steps == 0
            || !(0.0..1.0).contains(&self.dropout)
        {
            return Err(
                "rank, batch_size and steps must be ≥ 1, seq_len ≥ 2, dropout in [0, 1)".into(),
            );
        }
        Ok(())
    }

    fn layout(&self) -> LoraLayout {
        LoraLayout {
            rank: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
            target: self.target.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Data(#[from] instruct::InstructError),
    #[error(transparent)]
    Model(#[from] tritium_model::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FinetuneError {
    let path = path.to_path_buf();
    move |source| FinetuneError::Io { path, source }
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
    pub fn read(out: &Path) -> Result<Self, FinetuneError> {
        let p = out.join("finetune.json");
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        serde_json::from_str(&text)
            .map_err(|e| FinetuneError::Config(format!("{}: {e}", p.display())))
    }
}

pub struct FinetuneOptions {
    pub spec: RunSpec,
    pub out: PathBuf,
    /// Continue `out` from its latest checkpoint.
    pub resume: bool,
    /// Set by a Ctrl-C handler: checkpoint and return at the next step boundary.
    pub stop: Arc<AtomicBool>,
}

#[derive(Debug, Serialize)]
pub struct FinetuneSummary {
    pub examples: usize,
    pub held_out: usize,
    /// Training rows after packing (= `examples` without packing).
    pub rows: usize,
    pub skipped: usize,
    pub truncated: usize,
    pub dropped_no_target: usize,
    pub trainable_params: usize,
    pub total_params: usize,
    pub base_val_loss: f64,
    pub final_val_loss: f64,
    /// Held-out loss after folding the adapter into the ternary weights (`merge`).
    pub merged_val_loss: Option<f64>,
    pub added_tokens: Vec<String>,
    /// The step the run stopped at; below `steps` when interrupted.
    pub step: usize,
    pub interrupted: bool,
    /// SHA-256 of the base's `model.bpk` that the adapter belongs to.
    pub base_hash: String,
    /// The checkpoint an adapter applies to (the given base, or `out/base` when tokens were added).
    pub adapter_base: PathBuf,
    pub seconds: f64,
}

pub enum FtEvent<'a> {
    Start(&'a FinetuneSummary),
    Step { step: usize, loss: f32, lr: f64 },
    Eval { step: usize, val_loss: f64 },
    Checkpoint { step: usize, path: &'a Path },
}

/// A tokenized training row: ids; per input position whether its next token is trained on, and
/// which example it belongs to (several when packed).
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    ids: Vec<u32>,
    mask: Vec<bool>,
    seg: Vec<u32>,
}

/// Parameters an adapter set adds: `r·(d_in + d_out)` per adapted projection.
pub fn lora_param_count(m: &tritium_model::ModelConfig, rank: usize, targets: &[String]) -> usize {
    let (d, f, kv) = (m.d_model, m.d_ff, m.kv_heads() * m.head_dim());
    let per = |t: &str| match t {
        "q" | "o" => d + d,
        "k" | "v" => d + kv,
        "gate" | "up" | "down" => d + f,
        _ => 0,
    };
    m.n_layers * rank * targets.iter().map(|t| per(t)).sum::<usize>()
}

/// Adds the chat markers the template needs to the tokenizer and grows the embedding by as many
/// rows, each initialised to the mean embedding (a neutral start, as PEFT/HF's resize does).
fn add_markers(
    tok: &mut Tokenizer,
    model: Transformer,
    state: &mut State,
    device: &Device,
) -> (Transformer, Vec<String>) {
    let missing: Vec<String> = chat::MARKERS
        .iter()
        .filter(|m| tok.inner.token_to_id(m).is_none())
        .map(|m| m.to_string())
        .collect();
    if missing.is_empty() {
        return (model, missing);
    }
    let added: Vec<tokenizers::AddedToken> = missing
        .iter()
        .map(|m| tokenizers::AddedToken::from(m.clone(), true))
        .collect();
    tok.inner.add_special_tokens(&added);
    let want = tok.vocab_size().max(state.config.model.vocab_size);
    let mut model = model;
    let w = model.tok_embd.weight.val();
    let [v, _] = w.dims();
    if want > v {
        let mean = w.clone().mean_dim(0); // [1, D]
        let extra = mean.repeat_dim(0, want - v);
        model.tok_embd.weight =
            Param::from_tensor(Tensor::cat(vec![w, extra], 0).detach().to_device(device));
        state.config.model.vocab_size = want;
    }
    (model, missing)
}

fn samples(
    tok: &Tokenizer,
    tpl: &Template,
    examples: &[instruct::Example],
    seq: usize,
    truncated: &mut usize,
    dropped: &mut usize,
) -> Result<Vec<Sample>, FinetuneError> {
    let mut out = Vec::new();
    for ex in examples {
        let (mut ids, mut mask) = chat::tokenize(tok, tpl, ex).map_err(FinetuneError::Other)?;
        ids.insert(0, tok.eot_id); // a document start, as in pretraining
        mask.insert(0, false);
        if ids.len() > seq + 1 {
            ids.truncate(seq + 1);
            mask.truncate(seq + 1);
            *truncated += 1;
        }
        // Position i predicts token i + 1: train where the target is an assistant token.
        let target_mask: Vec<bool> = mask[1..].to_vec();
        if !target_mask.iter().any(|&m| m) {
            *dropped += 1;
            continue;
        }
        out.push(Sample {
            seg: vec![0; ids.len() - 1],
            ids,
            mask: target_mask,
        });
    }
    Ok(out)
}

/// Greedy packing in data order: each example joins the current row while the row stays within
/// `seq + 1` tokens. The position holding one example's last token would predict the next
/// example's first, so it is never a target, and attention never crosses examples.
fn pack(samples: Vec<Sample>, seq: usize) -> Vec<Sample> {
    let mut out: Vec<Sample> = Vec::new();
    for s in samples {
        match out.last_mut() {
            Some(row) if row.ids.len() + s.ids.len() <= seq + 1 => {
                let cur = *row.seg.last().expect("rows are never empty");
                row.mask.push(false);
                row.seg.push(cur);
                row.mask.extend(&s.mask);
                row.seg
                    .extend(std::iter::repeat_n(cur + 1, s.ids.len() - 1));
                row.ids.extend(&s.ids);
            }
            _ => out.push(s),
        }
    }
    out
}

struct Batch {
    x: Tensor<2, Int>,
    y: Tensor<2, Int>,
    m: Tensor<2>,
    attn: Option<Tensor<4, Bool>>,
    tokens: usize,
}

/// Inputs, targets, loss mask and (for packed rows) attention mask, right-padded to the longest
/// row. Padding is its own segment, so no real token attends to it and no row is all-masked.
fn batch(s: &[&Sample], pad: u32, device: &Device) -> Batch {
    let t = s.iter().map(|x| x.ids.len() - 1).max().unwrap_or(1);
    let b = s.len();
    let (mut x, mut y, mut m) = (
        vec![pad as i64; b * t],
        vec![pad as i64; b * t],
        vec![0f32; b * t],
    );
    let mut segs = vec![vec![u32::MAX; t]; b];
    for (i, smp) in s.iter().enumerate() {
        for j in 0..smp.ids.len() - 1 {
            x[i * t + j] = smp.ids[j] as i64;
            y[i * t + j] = smp.ids[j + 1] as i64;
            m[i * t + j] = if smp.mask[j] { 1.0 } else { 0.0 };
            segs[i][j] = smp.seg[j];
        }
    }
    let packed = s.iter().any(|r| r.seg.last().is_some_and(|&g| g > 0));
    Batch {
        x: Tensor::<1, Int>::from_ints(x.as_slice(), device).reshape([b, t]),
        y: Tensor::<1, Int>::from_ints(y.as_slice(), device).reshape([b, t]),
        m: Tensor::<1>::from_floats(m.as_slice(), device).reshape([b, t]),
        attn: packed.then(|| tritium_model::segment_mask(&segs, device)),
        tokens: s.iter().map(|r| r.ids.len() - 1).sum(),
    }
}

/// Sum of masked token losses and the number of masked tokens.
fn masked_nll(model: &Transformer, b: Batch) -> (Tensor<1>, Tensor<1>) {
    let logits = model.head(model.hidden_masked(b.x, 1.0, b.attn.as_ref()));
    let [bs, t, v] = logits.dims();
    let logp = log_softmax(logits.reshape([bs * t, v]), 1);
    let picked = logp.gather(1, b.y.reshape([bs * t, 1])).reshape([bs * t]);
    let m = b.m.reshape([bs * t]);
    ((picked * m.clone()).sum().neg(), m.sum())
}

/// Token-weighted mean response loss over `set`.
fn response_loss(model: &Transformer, set: &[Sample], pad: u32, device: &Device, bs: usize) -> f64 {
    let (mut nll, mut n) = (0f64, 0f64);
    for chunk in set.chunks(bs) {
        let refs: Vec<&Sample> = chunk.iter().collect();
        let (l, c) = masked_nll(model, batch(&refs, pad, device));
        nll += l.into_scalar::<f32>() as f64;
        n += c.into_scalar::<f32>() as f64;
    }
    nll / n.max(1.0)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The training stream: epoch after epoch over the rows, each epoch in its own shuffled order.
/// A pure function of (seed, position), so a resumed run sees exactly the batches it would have.
struct Order {
    seed: u64,
    epoch: Option<u64>,
    perm: Vec<usize>,
}

impl Order {
    fn new(n: usize, seed: u64) -> Self {
        Order {
            seed,
            epoch: None,
            perm: (0..n).collect(),
        }
    }

    fn at(&mut self, k: usize) -> usize {
        let n = self.perm.len();
        let e = (k / n) as u64;
        if self.epoch != Some(e) {
            self.perm = (0..n).collect();
            let mut rng = splitmix(self.seed ^ splitmix(e));
            for i in (1..n).rev() {
                rng = splitmix(rng);
                self.perm.swap(i, (rng % (i as u64 + 1)) as usize);
            }
            self.epoch = Some(e);
        }
        self.perm[k % n]
    }
}

fn lr_at(c: &FinetuneConfig, step: usize) -> f64 {
    if step <= c.warmup_steps {
        c.lr * step as f64 / c.warmup_steps.max(1) as f64
    } else {
        let p = (step - c.warmup_steps) as f64 / (c.steps - c.warmup_steps).max(1) as f64;
        c.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
    }
}

pub fn finetune(
    o: FinetuneOptions,
    on_event: &mut dyn FnMut(FtEvent),
) -> Result<(Transformer, State, FinetuneSummary), FinetuneError> {
    let start = std::time::Instant::now();
    let spec = &o.spec;
    let c = &spec.config;
    c.validate().map_err(FinetuneError::Config)?;
    if spec.merge && c.method != Method::Lora {
        return Err(FinetuneError::Config(
            "merge folds a LoRA adapter into the weights; method = \"full\" has none".into(),
        ));
    }
    let out = &o.out;
    let device = Backend::Flex.device()?.autodiff();
    device.seed(c.seed);

    // Base model, tokenizer and template.
    let base_ckpt = checkpoint::resolve(&spec.base)?;
    let (model, mut state) = checkpoint::load_model(&base_ckpt, &device)?;
    if checkpoint::lora_layout(&base_ckpt)?.is_some() {
        return Err(FinetuneError::Config(format!(
            "{}: this checkpoint carries LoRA adapters; fine-tune from a plain (or merged) checkpoint",
            base_ckpt.display()
        )));
    }
    let tok_path = if base_ckpt.join("tokenizer.json").exists() {
        base_ckpt.join("tokenizer.json")
    } else {
        state.config.data.tokenizer.clone()
    };
    let mut tok = Tokenizer::load(&tok_path).map_err(|e| FinetuneError::Other(e.to_string()))?;
    let tpl_text = c.template.as_deref().unwrap_or(chat::DEFAULT_TEMPLATE);
    let tpl = Template::new(tpl_text).map_err(FinetuneError::Config)?;
    let (mut model, added) = if c.template.is_none() {
        add_markers(&mut tok, model, &mut state, &device)
    } else {
        (model, Vec::new())
    };

    // Data.
    if spec.data.is_empty() {
        return Err(FinetuneError::Config("no training data given".into()));
    }
    let mut train_set = instruct::Loaded::default();
    for p in &spec.data {
        let l = instruct::load(p, c.skip_invalid)?;
        train_set.examples.extend(l.examples);
        train_set.skipped.extend(l.skipped);
    }
    let mut skipped = train_set.skipped.len();
    let (mut train_ex, mut val_ex) = (Vec::new(), Vec::new());
    match &spec.eval_data {
        Some(p) => {
            let v = instruct::load(p, c.skip_invalid)?;
            skipped += v.skipped.len();
            train_ex = train_set.examples;
            val_ex = v.examples;
        }
        None => {
            for (i, e) in train_set.examples.into_iter().enumerate() {
                if c.holdout_every > 0 && i % c.holdout_every == c.holdout_every - 1 {
                    val_ex.push(e)
                } else {
                    train_ex.push(e)
                }
            }
        }
    }
    let (mut truncated, mut dropped) = (0, 0);
    let train = samples(
        &tok,
        &tpl,
        &train_ex,
        c.seq_len,
        &mut truncated,
        &mut dropped,
    )?;
    let val = samples(&tok, &tpl, &val_ex, c.seq_len, &mut truncated, &mut dropped)?;
    if train.is_empty() || val.is_empty() {
        return Err(FinetuneError::Other(format!(
            "{} training and {} held-out examples after tokenization: need at least one of each",
            train.len(),
            val.len()
        )));
    }
    let n_examples = train.len();
    let train = if c.packing {
        pack(train, c.seq_len)
    } else {
        train
    };

    // Model: adapters on a frozen base, or everything trainable.
    let total_params = model.num_params();
    if c.method == Method::Lora {
        model.attach_lora(c.rank, c.alpha, c.dropout, &c.target, &device);
    }

    // The run directory: a fresh one, or the checkpoint to continue from.
    let metrics_path = out.join("metrics.jsonl");
    let (mut optim, first_step) = if o.resume {
        let ckpt = checkpoint::latest(out)?;
        model = checkpoint::load_weights(model, &ckpt.join("model.bpk"))?;
        let optim = AdamW::load(
            AdamWConfig::default(),
            &ckpt.join("optim.bin"),
            &param_sizes(&model),
            &device,
        )
        .map_err(|msg| {
            FinetuneError::Other(format!("{}: {msg}", ckpt.join("optim.bin").display()))
        })?;
        let step = checkpoint::read_state(&ckpt)?.step;
        metrics::truncate_after(&metrics_path, step).map_err(io(&metrics_path))?;
        (optim, step + 1)
    } else {
        checkpoint::ensure_fresh(out)?;
        std::fs::create_dir_all(out).map_err(io(out))?;
        let _ = std::fs::remove_file(&metrics_path);
        let spec_path = out.join("finetune.json");
        crate::fsutil::write_atomic(
            &spec_path,
            serde_json::to_string_pretty(spec)
                .expect("spec serializes")
                .as_bytes(),
        )
        .map_err(io(&spec_path))?;
        (AdamW::new(AdamWConfig::default()), 1)
    };
    if c.method == Method::Lora {
        model = model.freeze_base();
    }
    // The tokenizer (with any added markers) travels with every checkpoint of this run.
    let tok_json = tok
        .inner
        .to_string(false)
        .map_err(|e| FinetuneError::Other(e.to_string()))?;
    let tok_out = out.join("tokenizer.json");
    crate::fsutil::write_atomic(&tok_out, tok_json.as_bytes()).map_err(io(&tok_out))?;
    state.config.data.tokenizer = tok_out;
    state.tokenizer_hash = crate::tokenizer::hash_bytes(tok_json.as_bytes());
    state.best_val_loss = None;

    let trainable = match c.method {
        Method::Lora => lora_param_count(&state.config.model, c.rank, &c.target),
        Method::Full => total_params,
    };
    let pad = tok.eot_id;
    let eval_device = device.clone().inner();
    let evaluate =
        |m: &Transformer| response_loss(&m.valid(), &val, pad, &eval_device, c.batch_size);
    let logged_base = metrics::read(&metrics_path)
        .iter()
        .find(|r| r.step == 0)
        .and_then(|r| r.val_loss);
    let base_val = match logged_base {
        Some(v) => v,
        None => evaluate(&model),
    };
    let mut summary = FinetuneSummary {
        examples: n_examples,
        held_out: val.len(),
        rows: train.len(),
        skipped,
        truncated,
        dropped_no_target: dropped,
        trainable_params: trainable,
        total_params: total_params
            + if c.method == Method::Lora {
                trainable
            } else {
                0
            },
        base_val_loss: base_val,
        final_val_loss: f64::NAN,
        merged_val_loss: None,
        added_tokens: added,
        step: first_step - 1,
        interrupted: false,
        base_hash: checkpoint::model_hash(&base_ckpt)?,
        adapter_base: base_ckpt.clone(),
        seconds: 0.0,
    };
    on_event(FtEvent::Start(&summary));
    let val_row = |step: usize, tokens: u64, v: f64| Row {
        step,
        tokens,
        loss: None,
        lr: None,
        grad_norm: None,
        tokens_per_s: None,
        val_loss: Some(v),
    };
    if logged_base.is_none() {
        metrics::append(&metrics_path, &val_row(0, 0, base_val)).map_err(io(&metrics_path))?;
        on_event(FtEvent::Eval {
            step: 0,
            val_loss: base_val,
        });
    }

    // Every checkpoint of the run carries its chat template, which export writes into the GGUF
    // as `tokenizer.chat_template`; LoRA checkpoints also carry their adapter layout.
    let template = (checkpoint::CHAT_TEMPLATE, tpl_text.as_bytes().to_vec());
    let mut extra = vec![template.clone()];
    if c.method == Method::Lora {
        let layout = serde_json::to_vec_pretty(&c.layout()).expect("layout serializes");
        extra.push(("lora.json", layout));
    }
    let save = |model: &Transformer, optim: &AdamW, state: &State| {
        checkpoint::save_with(out, model, optim, state, c.keep_checkpoints, &extra)
    };
    let mut order = Order::new(train.len(), c.seed);
    let mut tokens = 0u64;
    let mut last_val = None;
    let mut step_start = std::time::Instant::now();
    for step in first_step..=c.steps {
        if o.stop.load(Ordering::SeqCst) {
            state.step = step - 1;
            let p = save(&model, &optim, &state)?;
            on_event(FtEvent::Checkpoint {
                step: step - 1,
                path: &p,
            });
            summary.interrupted = true;
            summary.step = step - 1;
            summary.seconds = start.elapsed().as_secs_f64();
            return Ok((model, state, summary));
        }
        // Dropout masks depend only on the step, so a resumed run continues bit for bit.
        device.seed(c.seed ^ splitmix(step as u64));
        let picked: Vec<&Sample> = (0..c.batch_size)
            .map(|j| &train[order.at((step - 1) * c.batch_size + j)])
            .collect();
        let lr = lr_at(c, step);
        let b = batch(&picked, pad, &device);
        tokens += b.tokens as u64;
        let batch_tokens = b.tokens;
        let (nll, n) = masked_nll(&model, b);
        let loss = nll / n.clamp_min(1.0);
        let value = loss.clone().inner().into_scalar::<f32>();
        if !value.is_finite() {
            return Err(FinetuneError::Other(format!(
                "loss became {value} at step {step}; lower lr (the last checkpoint is kept)"
            )));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let norm = grad_norm(&model, &grads);
        let clip = if c.grad_clip > 0.0 && norm > c.grad_clip {
            c.grad_clip / norm
        } else {
            1.0
        };
        model = optim.step(model, grads, lr, c.weight_decay, clip);
        if step % c.log_every.max(1) == 0 || step == c.steps {
            let row = Row {
                step,
                tokens,
                loss: Some(value as f64),
                lr: Some(lr),
                grad_norm: Some(norm as f64),
                tokens_per_s: Some(batch_tokens as f64 / step_start.elapsed().as_secs_f64()),
                val_loss: None,
            };
            metrics::append(&metrics_path, &row).map_err(io(&metrics_path))?;
            on_event(FtEvent::Step {
                step,
                loss: value,
                lr,
            });
        }
        if (c.eval_every > 0 && step % c.eval_every == 0) || step == c.steps {
            let v = evaluate(&model);
            last_val = Some(v);
            metrics::append(&metrics_path, &val_row(step, tokens, v)).map_err(io(&metrics_path))?;
            let svg = out.join("loss.svg");
            crate::fsutil::write_atomic(
                &svg,
                metrics::plot_svg(&metrics::read(&metrics_path)).as_bytes(),
            )
            .map_err(io(&svg))?;
            on_event(FtEvent::Eval { step, val_loss: v });
        }
        if (c.checkpoint_every > 0 && step % c.checkpoint_every == 0) || step == c.steps {
            state.step = step;
            state.tokens = tokens;
            let p = save(&model, &optim, &state)?;
            on_event(FtEvent::Checkpoint { step, path: &p });
        }
        step_start = std::time::Instant::now();
    }
    summary.step = c.steps;
    summary.final_val_loss = match last_val {
        Some(v) => v,
        None => evaluate(&model), // resumed after the final step: nothing trained, measure again
    };

    // Outputs.
    if c.method == Method::Lora {
        if !summary.added_tokens.is_empty() {
            // The base gained token rows: save it, so it exports to the GGUF the adapter fits.
            let base_run = out.join("base");
            let mut base_state = state.clone();
            base_state.step = 0;
            let p = checkpoint::save_with(
                &base_run,
                &without_adapters(&model),
                &AdamW::new(AdamWConfig::default()),
                &base_state,
                1,
                std::slice::from_ref(&template),
            )?;
            summary.base_hash = checkpoint::model_hash(&p)?;
            summary.adapter_base = p;
        }
        save_adapter(&model, c, &summary.adapter_base, &summary.base_hash, out)?;
        if spec.merge {
            let merged = model.clone().merge_lora();
            summary.merged_val_loss = Some(evaluate(&merged));
            let mut st = state.clone();
            st.step = c.steps;
            checkpoint::save_with(
                &out.join("merged"),
                &merged,
                &AdamW::new(AdamWConfig::default()),
                &st,
                1,
                std::slice::from_ref(&template),
            )?;
        }
    }
    summary.seconds = start.elapsed().as_secs_f64();
    let p = out.join("summary.json");
    crate::fsutil::write_atomic(
        &p,
        serde_json::to_string_pretty(&summary)
            .unwrap_or_default()
            .as_bytes(),
    )
    .map_err(io(&p))?;
    Ok((model, state, summary))
}

/// One adapted projection: GGUF base name, `A` shape and values, `B` shape and values, alpha.
pub type AdapterTensors = (String, Vec<usize>, Vec<f32>, Vec<usize>, Vec<f32>, f32);

/// The adapters of `model` by GGUF base name: (`A` `[r, in]`, `B` `[out, r]`, alpha).
pub fn adapters(model: &Transformer) -> Vec<AdapterTensors> {
    let mut out = Vec::new();
    for (i, b) in model.blocks.iter().enumerate() {
        for (stem, l) in tritium_engine::lora::PROJECTIONS
            .iter()
            .zip(b.projections())
        {
            if let Some(lo) = &l.lora {
                let v = |t: Tensor<2>| -> Vec<f32> {
                    t.into_data().convert::<f32>().iter::<f32>().collect()
                };
                out.push((
                    format!("blk.{i}.{stem}.weight"),
                    lo.a.dims().to_vec(),
                    v(lo.a.val()),
                    lo.b.dims().to_vec(),
                    v(lo.b.val()),
                    lo.alpha,
                ));
            }
        }
    }
    out
}

/// The model with every adapter removed (the base, e.g. after tokens were added to it).
pub fn without_adapters(model: &Transformer) -> Transformer {
    let mut base = model.clone();
    for b in base.blocks.iter_mut() {
        for l in b.projections_mut() {
            l.lora = None;
        }
    }
    base
}

/// Saves the adapters as `adapter.safetensors` (tensors `<base>.lora_a` / `.lora_b`, PyTorch
/// orientation) and `adapter.json` (rank, alpha, targets, base checkpoint).
pub fn save_adapter(
    model: &Transformer,
    cfg: &FinetuneConfig,
    base: &Path,
    base_hash: &str,
    dir: &Path,
) -> Result<PathBuf, FinetuneError> {
    let list = adapters(model);
    let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, ad, a, bd, b, _) in &list {
        bytes.push((
            format!("{name}.lora_a"),
            ad.clone(),
            a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        bytes.push((
            format!("{name}.lora_b"),
            bd.clone(),
            b.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .expect("shape matches data"),
            )
        })
        .collect();
    let mut meta = HashMap::new();
    meta.insert("alpha".to_string(), cfg.alpha.to_string());
    meta.insert("base_hash".to_string(), base_hash.to_string());
    let data = safetensors::serialize(views, Some(meta))
        .map_err(|e| FinetuneError::Other(e.to_string()))?;
    let st = dir.join("adapter.safetensors");
    crate::fsutil::write_atomic(&st, &data)
        .map_err(|e| FinetuneError::Other(format!("{}: {e}", st.display())))?;
    let json = serde_json::json!({ "rank": cfg.rank, "alpha": cfg.alpha, "target": cfg.target, "dropout": cfg.dropout, "base": base.display().to_string(), "base_hash": base_hash, "tensors": list.len() * 2 });
    crate::fsutil::write_atomic(
        &dir.join("adapter.json"),
        serde_json::to_string_pretty(&json)
            .unwrap_or_default()
            .as_bytes(),
    )
    .map_err(|e| FinetuneError::Other(e.to_string()))?;
    Ok(st)
}

/// Reads an adapter written by [`save_adapter`] (or any safetensors file with `<base>.lora_a`
/// `[r, in]` / `<base>.lora_b` `[out, r]` F32 pairs and an `alpha` in its metadata, or
/// `adapter.json` beside it). Returns the adapters in [`adapters`]' form and the base hash, if
/// recorded.
pub fn read_adapter(path: &Path) -> Result<(Vec<AdapterTensors>, Option<String>), FinetuneError> {
    let bad = |msg: String| FinetuneError::Other(format!("{}: {msg}", path.display()));
    let bytes = std::fs::read(path).map_err(io(path))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let info = meta.metadata().clone().unwrap_or_default();
    // adapter.json beside the file fills in what the metadata lacks.
    let side: serde_json::Value = path
        .parent()
        .map(|d| d.join("adapter.json"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let alpha: f32 = match info.get("alpha") {
        Some(a) => a
            .parse()
            .map_err(|_| bad(format!("metadata alpha = {a:?} is not a number")))?,
        None => side["alpha"]
            .as_f64()
            .ok_or_else(|| bad("no alpha in the metadata or in adapter.json".into()))?
            as f32,
    };
    let base_hash = info
        .get("base_hash")
        .cloned()
        .or_else(|| side["base_hash"].as_str().map(String::from));
    let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>), FinetuneError> {
        let t = st
            .tensor(name)
            .map_err(|_| bad(format!("tensor {name} is missing")))?;
        if t.dtype() != safetensors::Dtype::F32 || t.shape().len() != 2 {
            return Err(bad(format!(
                "tensor {name}: {:?} {:?}, expected a 2-D F32 matrix",
                t.dtype(),
                t.shape()
            )));
        }
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((t.shape().to_vec(), v))
    };
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut out = Vec::new();
    for n in &names {
        let Some(base) = n.strip_suffix(".lora_a") else {
            if n.ends_with(".lora_b") {
                continue;
            }
            return Err(bad(format!(
                "tensor {n} is neither <base>.lora_a nor <base>.lora_b"
            )));
        };
        let (ad, a) = read(n)?;
        let (bd, b) = read(&format!("{base}.lora_b"))?;
        if ad[0] != bd[1] {
            return Err(bad(format!(
                "{base}: lora_a is {ad:?} and lora_b {bd:?}; their ranks differ"
            )));
        }
        out.push((base.to_string(), ad, a, bd, b, alpha));
    }
    if out.is_empty() {
        return Err(bad("holds no <base>.lora_a tensors".into()));
    }
    if let Some(orphan) = names.iter().find(|n| {
        n.strip_suffix(".lora_b")
            .is_some_and(|b| !out.iter().any(|t| t.0 == b))
    }) {
        return Err(bad(format!("tensor {orphan} has no matching .lora_a")));
    }
    Ok((out, base_hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tritium_model::{FfnAct, ModelConfig, Quant};

    fn sample(ids: &[u32], mask: &[bool]) -> Sample {
        Sample {
            ids: ids.to_vec(),
            mask: mask.to_vec(),
            seg: vec![0; ids.len() - 1],
        }
    }

    #[test]
    fn packing_joins_examples_and_never_trains_across_a_boundary() {
        let a = sample(&[0, 11, 12, 13], &[false, true, true]);
        let b = sample(&[0, 21, 22], &[false, true]);
        let c = sample(&[0, 31, 32, 33, 34], &[false, false, true, true]);
        // Room for a + b (7 tokens) in a row of seq 6 + 1, not for c as well.
        let rows = pack(vec![a, b, c.clone()], 6);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].ids, [0, 11, 12, 13, 0, 21, 22]);
        // Input 3 (token 13) would predict b's first token: not a target.
        assert_eq!(rows[0].mask, [false, true, true, false, false, true]);
        assert_eq!(rows[0].seg, [0, 0, 0, 0, 1, 1]);
        assert_eq!(rows[1], c);
    }

    #[test]
    fn the_training_order_is_a_fresh_permutation_each_epoch_and_reproducible() {
        let n = 7;
        let mut o = Order::new(n, 42);
        let stream: Vec<usize> = (0..3 * n).map(|k| o.at(k)).collect();
        for e in 0..3 {
            let mut ep = stream[e * n..(e + 1) * n].to_vec();
            ep.sort();
            assert_eq!(ep, (0..n).collect::<Vec<_>>(), "epoch {e} is a permutation");
        }
        assert_ne!(stream[..n], stream[n..2 * n], "epochs are reshuffled");
        // Any position, asked cold (as after a resume), gives the same row.
        for k in [0, 5, 9, 20] {
            assert_eq!(Order::new(n, 42).at(k), stream[k]);
        }
    }

    /// The loss of two examples packed into one row (attention cut between them) equals the sum
    /// of their losses run one by one: the boundary leaks nothing and loses nothing.
    #[test]
    fn packed_loss_equals_the_examples_run_separately() {
        let device = Backend::Flex.device().unwrap();
        device.seed(5);
        let cfg = ModelConfig {
            vocab_size: 40,
            d_model: 32,
            n_layers: 2,
            n_heads: 2,
            n_kv_heads: Some(1),
            d_ff: 64,
            ffn_act: FfnAct::Silu,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            max_seq_len: 32,
            quant: Quant::Ternary,
            quant_warmup_steps: 0,
        };
        let model = Transformer::new(&cfg, &device);
        let a = sample(&[0, 5, 9, 14, 3, 7], &[false, false, true, true, true]);
        let b = sample(&[0, 8, 2, 30, 31], &[false, true, false, true]);
        let one = |s: &[&Sample]| {
            let (l, n) = masked_nll(&model, batch(s, 0, &device));
            (l.into_scalar::<f32>(), n.into_scalar::<f32>())
        };
        let (la, na) = one(&[&a]);
        let (lb, nb) = one(&[&b]);
        let packed = pack(vec![a.clone(), b.clone()], 20);
        assert_eq!(packed.len(), 1);
        let (lp, np) = one(&[&packed[0]]);
        assert_eq!(np, na + nb);
        assert!(
            (lp - (la + lb)).abs() <= 1e-4 * (la + lb),
            "packed {lp} vs separate {}",
            la + lb
        );
        // In a batch beside a shorter, padded row, the packed row's loss is unchanged too.
        let (lpb, npb) = one(&[&packed[0], &b]);
        assert_eq!(npb, na + 2.0 * nb);
        assert!((lpb - (la + 2.0 * lb)).abs() <= 1e-4 * lpb);
    }

    #[test]
    fn malformed_adapters_are_errors_that_name_the_file_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"not a safetensors file at all").unwrap();
        let e = read_adapter(&junk).unwrap_err().to_string();
        assert!(
            e.contains("junk.safetensors") && e.contains("not a safetensors"),
            "{e}"
        );

        // A lora_a without its lora_b, and no alpha anywhere.
        let write = |name: &str, tensors: Vec<(&str, Vec<usize>)>, alpha: Option<&str>| {
            let bufs: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
                .into_iter()
                .map(|(n, shape)| {
                    let len = shape.iter().product::<usize>() * 4;
                    (n.to_string(), shape, vec![0u8; len])
                })
                .collect();
            let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
                .iter()
                .map(|(n, sh, b)| {
                    let v = safetensors::tensor::TensorView::new(
                        safetensors::Dtype::F32,
                        sh.clone(),
                        b,
                    )
                    .unwrap();
                    (n.clone(), v)
                })
                .collect();
            let meta = alpha.map(|a| HashMap::from([("alpha".to_string(), a.to_string())]));
            let p = dir.path().join(name);
            std::fs::write(&p, safetensors::serialize(views, meta).unwrap()).unwrap();
            p
        };
        let p = write(
            "no-alpha.safetensors",
            vec![("blk.0.attn_q.weight.lora_a", vec![2, 4])],
            None,
        );
        let e = read_adapter(&p).unwrap_err().to_string();
        assert!(e.contains("no alpha"), "{e}");
        let p = write(
            "orphan.safetensors",
            vec![("blk.0.attn_q.weight.lora_a", vec![2, 4])],
            Some("4"),
        );
        let e = read_adapter(&p).unwrap_err().to_string();
        assert!(e.contains("blk.0.attn_q.weight.lora_b is missing"), "{e}");
        let p = write(
            "ranks.safetensors",
            vec![
                ("blk.0.attn_q.weight.lora_a", vec![2, 4]),
                ("blk.0.attn_q.weight.lora_b", vec![4, 3]),
            ],
            Some("4"),
        );
        let e = read_adapter(&p).unwrap_err().to_string();
        assert!(e.contains("ranks differ"), "{e}");
    }
}
