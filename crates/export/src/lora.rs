//! Adapters → a llama.cpp LoRA-adapter GGUF that means, on its base GGUF, exactly what the
//! fine-tuned model computed.
//!
//! A model exported with exact scales carries `blk.N.*.scale` tensors, and llama.cpp multiplies
//! the `ffn_gate` and `ffn_up` adapter branches by them as well as the ternary products
//! ([`Projection::lora_branch_scaled`]): `(W·x + c·B·A·x)·s`. Trained adapters were added beside
//! `s·W·x`, so for those projections the file holds `B/s`; elsewhere, and on a base whose scales
//! are folded into its blocks, it holds `B` as trained. The engine applies the same rule, so one
//! file runs the same in `tritium run --lora` and in llama.cpp.

use std::collections::HashMap;
use std::path::Path;

use tritium_checkpoint::AdapterSet;
use tritium_checkpoint::fsutil::write_atomic;
use tritium_gguf::blocks::encode_f32;
use tritium_gguf::names::{self, Projection, adapter, general};
use tritium_gguf::{GgmlType, Gguf, Value, Writer};
use tritium_model::Transformer;

use crate::{ExportError, ternarize};

/// The `.scale` values of a base GGUF, by (block, projection); empty for folded scales.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BaseScales {
    scales: HashMap<(usize, Projection), f32>,
    /// The base's `tritium.base_hash`, when read from a file.
    pub base_hash: Option<String>,
}

impl BaseScales {
    /// A base whose scales live in its blocks (`--scale folded`, or I2_S): nothing to divide.
    pub fn folded() -> BaseScales {
        BaseScales::default()
    }

    /// The scales `export` writes for `model` with exact scales (the default): `mean|W|` of each
    /// projection, as the model's own quantizer computes it.
    pub fn exact(model: &Transformer) -> BaseScales {
        let mut scales = HashMap::new();
        for (n, b) in model.blocks.iter().enumerate() {
            for (p, layer) in Projection::ALL.into_iter().zip(b.projections()) {
                scales.insert((n, p), ternarize(layer).1);
            }
        }
        BaseScales {
            scales,
            base_hash: None,
        }
    }

    /// The base export these scales describe, as [`names::LORA_BASE_SCALES`] records it.
    pub fn kind(&self) -> &'static str {
        if self.scales.is_empty() {
            "folded"
        } else {
            "exact"
        }
    }

    /// The `.scale` tensors of the base GGUF at `path`, and its base hash.
    pub fn from_gguf(path: &Path) -> Result<BaseScales, ExportError> {
        let io = |source| ExportError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = std::fs::read(path).map_err(io)?;
        let bad = |msg: String| ExportError::Lora(format!("{}: {msg}", path.display()));
        let g = Gguf::parse(&bytes).map_err(|e| bad(e.to_string()))?;
        if g.get(general::TYPE).and_then(Value::as_str) == Some("adapter") {
            return Err(bad("is an adapter, not a base model GGUF".into()));
        }
        let mut scales = HashMap::new();
        for t in &g.tensors {
            let Some(stem) = t.name.strip_suffix(".scale") else {
                continue;
            };
            if let Some((n, p)) = names::parse_projection(&format!("{stem}.weight")) {
                if t.ty != GgmlType::F32 || t.dims != [1] {
                    return Err(bad(format!("tensor {} is not one F32 value", t.name)));
                }
                let s = g.dequantize(t)[0];
                if !(s.is_finite() && s > 0.0) {
                    return Err(bad(format!(
                        "tensor {} = {s} is not a positive scale",
                        t.name
                    )));
                }
                scales.insert((n, p), s);
            }
        }
        let base_hash = g
            .get(names::BASE_HASH)
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(BaseScales { scales, base_hash })
    }

    /// What the branch of projection `p` of block `n` is multiplied by in llama.cpp besides
    /// `alpha/r`.
    fn branch(&self, n: usize, p: Projection) -> f32 {
        match self.scales.get(&(n, p)) {
            Some(&s) if p.lora_branch_scaled() => s,
            _ => 1.0,
        }
    }
}

/// Writes adapters as a llama.cpp LoRA-adapter GGUF for a base with `scales`:
/// `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha`, and per adapted
/// projection `<base>.lora_a` (ggml `[in, r]`) and `<base>.lora_b` (`[r, out]`), F32, `B` divided
/// by the branch scale llama.cpp applies (see the module docs). The set's base hash (the base
/// checkpoint's) is written as `tritium.base_hash`, which the engine compares with the base GGUF's;
/// llama.cpp ignores it. Returns the number of adapted projections.
pub fn export_lora(
    set: &AdapterSet,
    scales: &BaseScales,
    out: &Path,
) -> Result<usize, ExportError> {
    let list = &set.adapters;
    let Some(alpha) = list.first().map(|t| t.alpha) else {
        return Err(ExportError::Lora("the model has no LoRA adapters".into()));
    };
    if list.iter().any(|t| t.alpha != alpha) {
        return Err(ExportError::Lora(format!(
            "adapters with different alphas cannot share one GGUF (llama.cpp has one {})",
            adapter::LORA_ALPHA
        )));
    }
    if let (Some(want), Some(have)) = (&set.base_hash, &scales.base_hash)
        && want != have
    {
        return Err(ExportError::Lora(format!(
            "the adapter was trained on base {}…, the given base GGUF is {}…: wrong base model",
            want.get(..12).unwrap_or(want),
            have.get(..12).unwrap_or(have)
        )));
    }
    let mut w = Writer::new();
    w.kv(general::ARCHITECTURE, Value::String(names::ARCH.into()))
        .kv(general::TYPE, Value::String("adapter".into()))
        .kv(adapter::TYPE, Value::String("lora".into()))
        .kv(adapter::LORA_ALPHA, Value::F32(alpha))
        .kv(names::LORA_BASE_SCALES, Value::String(scales.kind().into()));
    if let Some(h) = &set.base_hash {
        w.kv(names::BASE_HASH, Value::String(h.clone()));
    }
    for ad in list {
        let base = ad.base_name();
        let branch = scales.branch(ad.layer, ad.target);
        let b: Vec<f32> = ad.b.iter().map(|v| v / branch).collect();
        // ggml lists dimensions fastest first: A [r, in] row-major is ggml [in, r].
        w.tensor(
            &names::lora_a(&base),
            &[ad.d_in as u64, ad.rank as u64],
            GgmlType::F32,
            encode_f32(&ad.a),
        );
        w.tensor(
            &names::lora_b(&base),
            &[ad.rank as u64, ad.d_out as u64],
            GgmlType::F32,
            encode_f32(&b),
        );
    }
    write_atomic(out, &w.to_bytes()).map_err(|source| ExportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(list.len())
}
