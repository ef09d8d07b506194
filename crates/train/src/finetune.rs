//! `tritium finetune`: LoRA (or full) fine-tuning of a pretrained ternary checkpoint on
//! instruction data, with the loss on assistant tokens only.
//!
//! Flow: config → base checkpoint (+ chat markers added to the tokenizer and embedding if missing)
//! → examples rendered by the chat template and tokenized with a loss mask → adapters on the chosen
//! BitLinears, base frozen → AdamW on the adapters → held-out response loss before/after → the
//! adapter (safetensors + JSON), or for `method = "full"` a checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tritium_model::bitlinear::Lora;
use tritium_model::burn::module::Param;
use tritium_model::burn::optim::GradientsParams;
use tritium_model::burn::prelude::*;
use tritium_model::burn::tensor::activation::log_softmax;
use tritium_model::{Backend, Transformer};

use crate::chat::{self, Template};
use crate::checkpoint::{self, State};
use crate::instruct;
use crate::optim::{AdamW, AdamWConfig, grad_norm};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Lora,
    Full,
}

pub const TARGETS: [&str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];

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

/// The `[finetune]` table of a fine-tuning config.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    #[serde(default = "d_seq")]
    pub seq_len: usize,
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
        let c = f.finetune;
        if let Some(t) = c.target.iter().find(|t| !TARGETS.contains(&t.as_str())) {
            return Err(FinetuneError::Config(format!(
                "{}: target {t:?} is not one of {TARGETS:?}",
                path.display()
            )));
        }
        if c.rank == 0 || c.batch_size == 0 || c.seq_len < 2 || !(0.0..1.0).contains(&c.dropout) {
            return Err(FinetuneError::Config(format!(
                "{}: rank, batch_size must be ≥ 1, seq_len ≥ 2, dropout in [0, 1)",
                path.display()
            )));
        }
        Ok(c)
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
    #[error("{0}")]
    Other(String),
}

pub struct FinetuneOptions {
    pub config: FinetuneConfig,
    pub base: PathBuf,
    pub data: PathBuf,
    pub eval_data: Option<PathBuf>,
    pub out: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct FinetuneSummary {
    pub examples: usize,
    pub held_out: usize,
    pub skipped: usize,
    pub truncated: usize,
    pub dropped_no_target: usize,
    pub trainable_params: usize,
    pub total_params: usize,
    pub base_val_loss: f64,
    pub final_val_loss: f64,
    pub added_tokens: Vec<String>,
    pub seconds: f64,
}

pub enum FtEvent<'a> {
    Start(&'a FinetuneSummary),
    Step { step: usize, loss: f32, lr: f64 },
    Eval { step: usize, val_loss: f64 },
}

/// A tokenized example: ids and, per position, whether predicting the next token is trained on.
struct Sample {
    ids: Vec<u32>,
    mask: Vec<bool>,
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
    let [v, d] = w.dims();
    if want > v {
        let mean = w.clone().mean_dim(0); // [1, D]
        let extra = mean.repeat_dim(0, want - v);
        model.tok_embd.weight =
            Param::from_tensor(Tensor::cat(vec![w, extra], 0).detach().to_device(device));
        state.config.model.vocab_size = want;
        let _ = d;
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
            ids,
            mask: target_mask,
        });
    }
    Ok(out)
}

/// Inputs, targets and mask tensors for a batch, right-padded to the longest sample.
fn batch(s: &[&Sample], pad: u32, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2>) {
    let t = s.iter().map(|x| x.ids.len() - 1).max().unwrap_or(1);
    let b = s.len();
    let (mut x, mut y, mut m) = (
        vec![pad as i64; b * t],
        vec![pad as i64; b * t],
        vec![0f32; b * t],
    );
    for (i, smp) in s.iter().enumerate() {
        for j in 0..smp.ids.len() - 1 {
            x[i * t + j] = smp.ids[j] as i64;
            y[i * t + j] = smp.ids[j + 1] as i64;
            m[i * t + j] = if smp.mask[j] { 1.0 } else { 0.0 };
        }
    }
    (
        Tensor::<1, Int>::from_ints(x.as_slice(), device).reshape([b, t]),
        Tensor::<1, Int>::from_ints(y.as_slice(), device).reshape([b, t]),
        Tensor::<1>::from_floats(m.as_slice(), device).reshape([b, t]),
    )
}

/// Sum of masked token losses and the number of masked tokens.
fn masked_nll(
    model: &Transformer,
    x: Tensor<2, Int>,
    y: Tensor<2, Int>,
    m: Tensor<2>,
) -> (Tensor<1>, Tensor<1>) {
    let logits = model.forward(x);
    let [b, t, v] = logits.dims();
    let logp = log_softmax(logits.reshape([b * t, v]), 1);
    let picked = logp.gather(1, y.reshape([b * t, 1])).reshape([b * t]);
    let m = m.reshape([b * t]);
    ((picked * m.clone()).sum().neg(), m.sum())
}

/// Token-weighted mean response loss over `set`.
fn response_loss(model: &Transformer, set: &[Sample], pad: u32, device: &Device, bs: usize) -> f64 {
    let (mut nll, mut n) = (0f64, 0f64);
    for chunk in set.chunks(bs) {
        let refs: Vec<&Sample> = chunk.iter().collect();
        let (x, y, m) = batch(&refs, pad, device);
        let (l, c) = masked_nll(model, x, y, m);
        nll += l.into_scalar::<f32>() as f64;
        n += c.into_scalar::<f32>() as f64;
    }
    nll / n.max(1.0)
}

pub fn finetune(
    o: FinetuneOptions,
    on_event: &mut dyn FnMut(FtEvent),
) -> Result<(Transformer, State, FinetuneSummary), FinetuneError> {
    let start = std::time::Instant::now();
    let c = &o.config;
    let device = Backend::Flex.device()?.autodiff();
    device.seed(c.seed);
    let ckpt = checkpoint::resolve(&o.base)?;
    let (model, mut state) = checkpoint::load_model(&ckpt, &device)?;
    let tok_path = if ckpt.join("tokenizer.json").exists() {
        ckpt.join("tokenizer.json")
    } else {
        state.config.data.tokenizer.clone()
    };
    let mut tok = Tokenizer::load(&tok_path).map_err(|e| FinetuneError::Other(e.to_string()))?;
    let tpl = Template::new(c.template.as_deref().unwrap_or(chat::DEFAULT_TEMPLATE))
        .map_err(FinetuneError::Config)?;
    let (mut model, added) = if c.template.is_none() {
        add_markers(&mut tok, model, &mut state, &device)
    } else {
        (model, Vec::new())
    };

    // Data.
    let train_set = instruct::load(&o.data, c.skip_invalid)?;
    let mut skipped = train_set.skipped.len();
    let (mut train_ex, mut val_ex) = (Vec::new(), Vec::new());
    match &o.eval_data {
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

    // Model: adapters on a frozen base, or everything trainable.
    let total_params = model.num_params();
    if c.method == Method::Lora {
        model = model.no_grad();
        let mcfg = state.config.model.clone();
        for b in model.blocks.iter_mut() {
            for (name, layer) in TARGETS.into_iter().zip(b.projections_mut()) {
                if c.target.iter().any(|t| t == name) {
                    let [d_out, d_in] = layer.weight.dims();
                    layer.lora = Some(Lora::new(d_in, d_out, c.rank, c.alpha, c.dropout, &device));
                }
            }
        }
        let _ = mcfg;
    }
    let trainable = match c.method {
        Method::Lora => lora_param_count(&state.config.model, c.rank, &c.target),
        Method::Full => total_params,
    };
    let pad = tok.eot_id;
    let base_val = response_loss(
        &model.valid(),
        &val,
        pad,
        &device.clone().inner(),
        c.batch_size,
    );
    let mut summary = FinetuneSummary {
        examples: train.len(),
        held_out: val.len(),
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
        added_tokens: added,
        seconds: 0.0,
    };
    on_event(FtEvent::Start(&summary));
    on_event(FtEvent::Eval {
        step: 0,
        val_loss: base_val,
    });

    let mut optim = AdamW::new(AdamWConfig::default());
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = c.seed ^ 0x5DEE_CE66_D1CE_4E5B;
    let mut cursor = order.len();
    for step in 1..=c.steps {
        let mut picked = Vec::with_capacity(c.batch_size);
        while picked.len() < c.batch_size {
            if cursor == order.len() {
                // A new epoch in a new order (Fisher–Yates with splitmix64).
                for i in (1..order.len()).rev() {
                    rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = rng;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    order.swap(i, ((z ^ (z >> 31)) % (i as u64 + 1)) as usize);
                }
                cursor = 0;
            }
            picked.push(&train[order[cursor]]);
            cursor += 1;
        }
        let lr = if step <= c.warmup_steps {
            c.lr * step as f64 / c.warmup_steps.max(1) as f64
        } else {
            let p = (step - c.warmup_steps) as f64 / (c.steps - c.warmup_steps).max(1) as f64;
            c.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
        };
        let (x, y, m) = batch(&picked, pad, &device);
        let (nll, n) = masked_nll(&model, x, y, m);
        let loss = nll / n.clamp_min(1.0);
        let value = loss.clone().inner().into_scalar::<f32>();
        if !value.is_finite() {
            return Err(FinetuneError::Other(format!(
                "loss became {value} at step {step}; lower lr"
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
            on_event(FtEvent::Step {
                step,
                loss: value,
                lr,
            });
        }
    }
    let final_val = response_loss(
        &model.valid(),
        &val,
        pad,
        &device.clone().inner(),
        c.batch_size,
    );
    on_event(FtEvent::Eval {
        step: c.steps,
        val_loss: final_val,
    });
    summary.final_val_loss = final_val;
    summary.seconds = start.elapsed().as_secs_f64();

    // Outputs.
    std::fs::create_dir_all(&o.out)
        .map_err(|e| FinetuneError::Other(format!("{}: {e}", o.out.display())))?;
    let tok_json = tok
        .inner
        .to_string(false)
        .map_err(|e| FinetuneError::Other(e.to_string()))?;
    let write = |name: &str, bytes: &[u8]| {
        crate::fsutil::write_atomic(&o.out.join(name), bytes)
            .map_err(|e| FinetuneError::Other(format!("{}: {e}", o.out.join(name).display())))
    };
    write("tokenizer.json", tok_json.as_bytes())?;
    write(
        "summary.json",
        serde_json::to_string_pretty(&summary)
            .unwrap_or_default()
            .as_bytes(),
    )?;
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
    let data = safetensors::serialize(views, Some(meta))
        .map_err(|e| FinetuneError::Other(e.to_string()))?;
    let st = dir.join("adapter.safetensors");
    crate::fsutil::write_atomic(&st, &data)
        .map_err(|e| FinetuneError::Other(format!("{}: {e}", st.display())))?;
    let json = serde_json::json!({ "rank": cfg.rank, "alpha": cfg.alpha, "target": cfg.target, "dropout": cfg.dropout, "base": base.display().to_string(), "tensors": list.len() * 2 });
    crate::fsutil::write_atomic(
        &dir.join("adapter.json"),
        serde_json::to_string_pretty(&json)
            .unwrap_or_default()
            .as_bytes(),
    )
    .map_err(|e| FinetuneError::Other(e.to_string()))?;
    Ok(st)
}
