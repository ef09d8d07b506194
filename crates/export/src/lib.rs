//! Checkpoint → GGUF for llama.cpp's `bitnet` architecture.
//!
//! [`export`] loads a checkpoint, ternarizes every BitLinear weight with the model's own quantizer
//! (so the stored trits are exactly those the trained model computed with), packs them as TQ2_0,
//! TQ1_0 or I2_S, and writes the embedding, norms, architecture keys and tokenizer through
//! `tritium_gguf::Writer`, to a temporary file renamed into place.
//!
//! The per-tensor scale `s = mean|W|` is stored exactly by default: TQ blocks hold the trits with
//! d = 1 and an F32 `blk.N.*.scale` tensor holds `s` (llama.cpp multiplies it in after the matmul).
//! `ScaleMode::Folded` instead puts fp16(s) into every block's `d` (no extra tensors; 11-bit
//! mantissa, so within 4.9e-4 relative).

pub mod hf;
pub mod lora;
pub mod tokenizer;

pub use lora::{BaseScales, export_lora};

use std::path::{Path, PathBuf};
use std::time::Instant;

use tritium_checkpoint::fsutil::{check_output, write_atomic};
use tritium_checkpoint::{Checkpoint, CheckpointError};
use tritium_gguf::blocks::{
    encode_f16, encode_f32, quantize_i2_s, quantize_q8_0, quantize_tq1_0, quantize_tq2_0,
};
use tritium_gguf::names::{self, BlockNorm, Projection, arch, general, tokenizer as tok_keys};
use tritium_gguf::{GgmlType, Value, Writer};
use tritium_model::burn::prelude::*;
use tritium_model::quant::weight_scale;
use tritium_model::{Backend, BitLinear, FfnAct};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Model(#[from] tritium_model::Error),
    #[error("{path}: tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error(
        "tensor {tensor}: rows of {row} weights are not a multiple of 256, which {ty} needs; export with --type i2_s, or make d_model and d_ff multiples of 256"
    )]
    RowLength {
        tensor: String,
        row: usize,
        ty: &'static str,
    },
    #[error("tensor {tensor}: {n} weights is not a multiple of 128, which I2_S packs")]
    I2sLength { tensor: String, n: usize },
    #[error("LoRA export: {0}")]
    Lora(String),
    /// The output path is one of the inputs.
    #[error("{0}")]
    Output(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightType {
    Tq2_0,
    Tq1_0,
    I2S,
}

/// `FromStr` for an option enum from its `(name, value)` table, with an error that lists the
/// names (what `--type`, `--scale` and `--embd` accept).
macro_rules! named {
    ($t:ty, $what:literal, [$(($name:literal, $v:expr)),+ $(,)?]) => {
        impl $t {
            pub const NAMES: &'static [&'static str] = &[$($name),+];
        }
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok($v),)+
                    _ => Err(format!(
                        "{} {s:?}: expected one of {}",
                        $what,
                        Self::NAMES.join(", ")
                    )),
                }
            }
        }
    };
}

#[rustfmt::skip]
mod option_names {
    use super::{EmbdType::*, ScaleMode::*, WeightType::*, *};
    named!(WeightType, "weight type", [("tq2_0", Tq2_0), ("tq1_0", Tq1_0), ("i2_s", I2S)]);
    named!(ScaleMode, "scale mode", [("exact", Exact), ("folded", Folded)]);
    named!(EmbdType, "embedding type", [("f16", F16), ("f32", F32), ("q8_0", Q8_0)]);
}

impl WeightType {
    pub fn ggml(self) -> GgmlType {
        match self {
            Self::Tq2_0 => GgmlType::Tq2_0,
            Self::Tq1_0 => GgmlType::Tq1_0,
            Self::I2S => GgmlType::I2S,
        }
    }
    /// `general.file_type`: llama.cpp's MOSTLY_TQ1_0 = 36, MOSTLY_TQ2_0 = 37; bitnet.cpp's I2_S = 40.
    fn file_type(self) -> u32 {
        match self {
            Self::Tq1_0 => 36,
            Self::Tq2_0 => 37,
            Self::I2S => 40,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleMode {
    /// Trits with d = 1 plus an exact F32 `.scale` tensor per projection.
    Exact,
    /// fp16 scale in every block; no extra tensors.
    Folded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbdType {
    F16,
    F32,
    Q8_0,
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub weights: WeightType,
    pub scale: ScaleMode,
    pub embd: EmbdType,
    /// Where the checkpoint's model runs (ternarization is Burn ops, as training computes it).
    pub device: Backend,
}

#[derive(Debug)]
pub struct ExportReport {
    pub checkpoint: PathBuf,
    pub file_bytes: usize,
    pub ternary_weights: usize,
    pub ternary_bytes: usize,
    pub total_params: usize,
    pub seconds: f64,
    pub warnings: Vec<String>,
}

impl ExportReport {
    pub fn ternary_bpw(&self) -> f64 {
        self.ternary_bytes as f64 * 8.0 / self.ternary_weights as f64
    }
    pub fn file_bpw(&self) -> f64 {
        self.file_bytes as f64 * 8.0 / self.total_params as f64
    }
}

/// Ternary trits (row-major `[out, in]`) and the scale of one BitLinear, computed by the same Burn
/// ops the forward pass uses.
pub fn ternarize(layer: &BitLinear) -> (Vec<i8>, f32) {
    if let Some(p) = &layer.packed {
        // Already ternarized, by the same rule: the codes and scale the forward pass uses.
        return ((0..p.rows).flat_map(|r| p.row(r)).collect(), p.scale);
    }
    let w = layer.weight.val();
    let g = weight_scale(&w);
    let q = (w / g.clone()).round().clamp(-1.0, 1.0);
    let q: Vec<i8> = q
        .into_data()
        .convert::<f32>()
        .iter::<f32>()
        .map(|v| v as i8)
        .collect();
    let g = g.into_data().iter::<f32>().next().expect("one scale");
    (q, g)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().iter::<f32>().collect()
}

/// Writes the checkpoint `ckpt_or_run` (a run directory or a `step-N` directory) as a GGUF at
/// `out`.
pub fn export(
    ckpt_or_run: &Path,
    opts: &ExportOptions,
    out: &Path,
) -> Result<ExportReport, ExportError> {
    let start = Instant::now();
    let ckpt = Checkpoint::open(ckpt_or_run)?;
    let mut inputs = tritium_checkpoint::parts(&ckpt.dir);
    inputs.extend(ckpt.state.provenance.tokenizer.clone());
    check_output(out, &inputs).map_err(ExportError::Output)?;
    let device = opts.device.device()?;
    let model = ckpt.load_model(&device)?;
    let cfg = ckpt.model_config();
    let mut warnings = Vec::new();
    if ckpt.lora_layout()?.is_some() {
        warnings.push("this fine-tuning checkpoint carries LoRA adapters: the GGUF holds the base alone; export the adapter with --lora, or fine-tune with --merge".into());
    }
    if cfg.ffn_act == FfnAct::Relu2 {
        warnings.push(format!(
            "ffn_act = relu2: upstream llama.cpp's bitnet architecture always runs SiLU and will compute wrong logits; tritium's engine reads {} = \"relu2\"",
            arch::FFN_ACT
        ));
    }
    let vocab = tokenizer::read(&ckpt.tokenizer_path()?, cfg.vocab_size)?;

    let mut w = Writer::new();
    w.kv(general::ARCHITECTURE, Value::String(names::ARCH.into()))
        .kv(general::TYPE, Value::String("model".into()))
        .kv(
            general::NAME,
            Value::String(format!("tritium {}", ckpt.dir.display())),
        )
        .kv(general::FILE_TYPE, Value::U32(opts.weights.file_type()))
        .kv(names::BASE_HASH, Value::String(ckpt.model_hash()?))
        .kv(general::QUANTIZATION_VERSION, Value::U32(2))
        .kv(arch::CONTEXT_LENGTH, Value::U32(cfg.max_seq_len as u32))
        .kv(arch::EMBEDDING_LENGTH, Value::U32(cfg.d_model as u32))
        .kv(arch::BLOCK_COUNT, Value::U32(cfg.n_layers as u32))
        .kv(arch::FEED_FORWARD_LENGTH, Value::U32(cfg.d_ff as u32))
        .kv(arch::HEAD_COUNT, Value::U32(cfg.n_heads as u32))
        .kv(arch::HEAD_COUNT_KV, Value::U32(cfg.kv_heads() as u32))
        .kv(arch::ROPE_FREQ_BASE, Value::F32(cfg.rope_theta))
        .kv(
            arch::ROPE_DIMENSION_COUNT,
            Value::U32(cfg.head_dim() as u32),
        )
        .kv(arch::RMS_EPS, Value::F32(cfg.norm_eps))
        .kv(arch::VOCAB_SIZE, Value::U32(cfg.vocab_size as u32))
        .kv(
            arch::FFN_ACT,
            Value::String(match cfg.ffn_act {
                FfnAct::Silu => "silu".into(),
                FfnAct::Relu2 => "relu2".into(),
            }),
        );
    for (k, v) in vocab.metadata() {
        w.kv(k, v);
    }
    if let Some(t) = ckpt.chat_template()? {
        w.kv(tok_keys::CHAT_TEMPLATE, Value::String(t));
    }

    let embd = values(model.tok_embd.weight.val());
    let embd_dims = [cfg.d_model as u64, cfg.vocab_size as u64];
    match opts.embd {
        EmbdType::F16 => w.tensor(
            names::TOKEN_EMBD,
            &embd_dims,
            GgmlType::F16,
            encode_f16(&embd),
        ),
        EmbdType::F32 => w.tensor(
            names::TOKEN_EMBD,
            &embd_dims,
            GgmlType::F32,
            encode_f32(&embd),
        ),
        EmbdType::Q8_0 => w.tensor(
            names::TOKEN_EMBD,
            &embd_dims,
            GgmlType::Q8_0,
            quantize_q8_0(&embd),
        ),
    };
    let norm = |w: &mut Writer, name: &str, t: Tensor<1>| {
        let v = values(t);
        w.tensor(name, &[v.len() as u64], GgmlType::F32, encode_f32(&v));
    };
    norm(&mut w, names::OUTPUT_NORM, model.output_norm.gamma.val());

    let (mut ternary_weights, mut ternary_bytes) = (0, 0);
    for (n, b) in model.blocks.iter().enumerate() {
        for (which, g) in BlockNorm::ALL.into_iter().zip(b.norms()) {
            norm(&mut w, &which.weight(n), g.gamma.val());
        }
        for (p, layer) in Projection::ALL.into_iter().zip(b.projections()) {
            let name = p.weight(n);
            let [rows, cols] = layer.weight.dims();
            let (q, s) = ternarize(layer);
            let bytes = match opts.weights {
                WeightType::Tq2_0 | WeightType::Tq1_0 => {
                    if cols % 256 != 0 {
                        let ty = opts.weights.ggml().name();
                        return Err(ExportError::RowLength {
                            tensor: name,
                            row: cols,
                            ty,
                        });
                    }
                    let x: Vec<f32> = match opts.scale {
                        ScaleMode::Exact => q.iter().map(|&v| v as f32).collect(),
                        ScaleMode::Folded => q.iter().map(|&v| v as f32 * s).collect(),
                    };
                    if opts.weights == WeightType::Tq2_0 {
                        quantize_tq2_0(&x)
                    } else {
                        quantize_tq1_0(&x)
                    }
                }
                WeightType::I2S => {
                    if q.len() % 128 != 0 {
                        return Err(ExportError::I2sLength {
                            tensor: name,
                            n: q.len(),
                        });
                    }
                    quantize_i2_s(&q, s)
                }
            };
            ternary_weights += q.len();
            ternary_bytes += bytes.len();
            w.tensor(
                &name,
                &[cols as u64, rows as u64],
                opts.weights.ggml(),
                bytes,
            );
            if opts.weights != WeightType::I2S && opts.scale == ScaleMode::Exact {
                w.tensor(&p.scale(n), &[1], GgmlType::F32, encode_f32(&[s]));
            }
        }
    }

    let bytes = w.to_bytes();
    // Temp file + rename: a failed or interrupted export never leaves a partial file under `out`.
    write_atomic(out, &bytes).map_err(|source| ExportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(ExportReport {
        checkpoint: ckpt.dir.clone(),
        file_bytes: bytes.len(),
        ternary_weights,
        ternary_bytes,
        total_params: cfg.param_count().total(),
        seconds: start.elapsed().as_secs_f64(),
        warnings,
    })
}
