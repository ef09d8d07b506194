//! The `bitnet` architecture's hyperparameters, from a GGUF's `bitnet.*` keys: one reader for the
//! engine, which runs such files, and the importer, which turns them into checkpoints.

use crate::Gguf;
use crate::names::{self, Projection, arch, general};
use crate::types::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Silu,
    Relu2,
}

/// The architecture's hyperparameters.
#[derive(Debug, Clone)]
pub struct Hparams {
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_ff: usize,
    pub vocab: usize,
    pub ctx: usize,
    pub rope_theta: f32,
    pub eps: f32,
    pub act: Act,
}

impl Hparams {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }
    /// `(in, out)` of a projection: the GGUF tensor's `[cols, rows]`.
    pub fn projection_shape(&self, p: Projection) -> (usize, usize) {
        p.dims(self.d_model, self.kv_dim(), self.d_ff)
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim()
    }
}

/// Reads and checks the hyperparameters (architecture name, sizes, RoPE, activation).
pub fn read(g: &Gguf) -> Result<Hparams, String> {
    // llama.cpp's `bitnet`, or bitnet.cpp's names for the same graph with ReLU² built in.
    let name = match g.get(general::ARCHITECTURE).and_then(Value::as_str) {
        Some(a) if a == names::ARCH || arch::BITNET_CPP.contains(&a) => a.to_string(),
        Some(a) => {
            return Err(format!(
                "{} is {a:?}; tritium runs {:?} models (and bitnet.cpp's {:?})",
                general::ARCHITECTURE,
                names::ARCH,
                arch::BITNET_CPP
            ));
        }
        None => return Err(format!("{} is missing", general::ARCHITECTURE)),
    };
    let key = |k: &str| arch::under(&name, k);
    let u = |k: &str| -> Result<usize, String> {
        let v = g.get(k).ok_or_else(|| format!("{k} is missing"))?;
        let n = v
            .as_u32()
            .ok_or_else(|| format!("{k} = {} is not an unsigned integer", v.display()))?
            as usize;
        if n == 0 {
            return Err(format!("{k} is 0"));
        }
        Ok(n)
    };
    let f = |k: &str, default: f32| -> Result<f32, String> {
        match g.get(k) {
            None => Ok(default),
            Some(v) => v
                .as_f32()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| format!("{k} = {} is not a positive float", v.display())),
        }
    };
    let d_model = u(&key(arch::EMBEDDING_LENGTH))?;
    let n_heads = u(&key(arch::HEAD_COUNT))?;
    let n_kv_heads = match g.get(&key(arch::HEAD_COUNT_KV)) {
        None => n_heads,
        Some(_) => u(&key(arch::HEAD_COUNT_KV))?,
    };
    let vocab = match g.tensor(names::TOKEN_EMBD) {
        Some(t) if t.dims.len() == 2 => t.dims[1] as usize,
        _ => {
            return Err(format!(
                "tensor {} is missing or not 2-D",
                names::TOKEN_EMBD
            ));
        }
    };
    let cfg = Hparams {
        d_model,
        n_layers: u(&key(arch::BLOCK_COUNT))?,
        n_heads,
        n_kv_heads,
        d_ff: u(&key(arch::FEED_FORWARD_LENGTH))?,
        vocab,
        ctx: u(&key(arch::CONTEXT_LENGTH))?,
        rope_theta: f(&key(arch::ROPE_FREQ_BASE), 10000.0)?,
        eps: f(&key(arch::RMS_EPS), 1e-5)?,
        act: match g.get(arch::FFN_ACT).map(|v| v.as_str()) {
            _ if name != names::ARCH => Act::Relu2,
            None | Some(Some("silu")) => Act::Silu,
            Some(Some("relu2")) => Act::Relu2,
            Some(v) => {
                return Err(format!(
                    "{} = {v:?}: expected \"silu\" or \"relu2\"",
                    arch::FFN_ACT
                ));
            }
        },
    };
    if !d_model.is_multiple_of(n_heads)
        || !n_heads.is_multiple_of(n_kv_heads)
        || !cfg.head_dim().is_multiple_of(2)
    {
        return Err(format!(
            "embedding_length {d_model}, head_count {n_heads}, head_count_kv {n_kv_heads}: heads must divide the width evenly into even head sizes, and KV heads the heads"
        ));
    }
    if let Some(v) = g.get(&key(arch::ROPE_DIMENSION_COUNT))
        && v.as_u32() != Some(cfg.head_dim() as u32)
    {
        return Err(format!(
            "{} = {} but the head size is {}; partial RoPE is not supported",
            key(arch::ROPE_DIMENSION_COUNT),
            v.display(),
            cfg.head_dim()
        ));
    }
    if let Some(v) = g.get(&key(arch::VOCAB_SIZE))
        && v.as_u32() != Some(vocab as u32)
    {
        return Err(format!(
            "{} = {} but {} has {vocab} rows",
            key(arch::VOCAB_SIZE),
            v.display(),
            names::TOKEN_EMBD
        ));
    }
    if cfg.n_layers > 4096 {
        return Err(format!(
            "{} = {} is absurd",
            key(arch::BLOCK_COUNT),
            cfg.n_layers
        ));
    }
    Ok(cfg)
}
