//! `ModelConfig`: the hyperparameters of a BitNet b1.58 decoder, read from the `[model]` table of a TOML
//! run config, validated once, plus the parameter and memory arithmetic `tritium info` prints.

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::Error;

/// Activation of the gated feed-forward network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FfnAct {
    /// `silu(gate) * up`, what llama.cpp's `bitnet` architecture runs.
    #[default]
    Silu,
    /// `relu(gate)^2 * up`, the BitNet b1.58 2B4T choice (our engine runs it; upstream llama.cpp does not).
    Relu2,
}

/// What `BitLinear` does to its weights and inputs in the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    /// BitNet b1.58: absmean ternary weights, per-token absmax int8 activations, straight-through gradients.
    #[default]
    Ternary,
    /// A plain full-precision linear layer: the float twin used for comparisons.
    None,
}

/// Hyperparameters of the decoder. Field names follow llama.cpp's `bitnet` GGUF keys where one exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Rows of the token embedding (and of the tied LM head).
    pub vocab_size: usize,
    /// Width of the residual stream (`bitnet.embedding_length`).
    pub d_model: usize,
    /// Number of transformer blocks (`bitnet.block_count`).
    pub n_layers: usize,
    /// Query heads (`bitnet.attention.head_count`).
    pub n_heads: usize,
    /// Key/value heads; must divide `n_heads` (grouped-query attention). Defaults to `n_heads`.
    #[serde(default)]
    pub n_kv_heads: Option<usize>,
    /// Hidden width of the feed-forward network (`bitnet.feed_forward_length`).
    pub d_ff: usize,
    /// Feed-forward activation.
    #[serde(default)]
    pub ffn_act: FfnAct,
    /// RoPE base frequency (`bitnet.rope.freq_base`).
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    /// RMSNorm epsilon (`bitnet.attention.layer_norm_rms_epsilon`).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f32,
    /// Longest sequence the model is trained for (`bitnet.context_length`).
    pub max_seq_len: usize,
    /// Ternary BitNet layers, or the full-precision twin.
    #[serde(default)]
    pub quant: Quant,
    /// Steps over which quantization is blended in (λ ramps 0 → 1); 0 quantizes from the first step.
    /// Used to convert full-precision models to ternary without a loss spike.
    #[serde(default)]
    pub quant_warmup_steps: usize,
}

fn default_rope_theta() -> f32 {
    10_000.0
}

fn default_norm_eps() -> f32 {
    1e-5
}

/// GGUF's ternary block types (TQ1_0, TQ2_0) pack 256 weights per block along each row.
pub const GGUF_BLOCK: usize = 256;

/// How many parameters a model has, split by how they are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCount {
    /// Weights of the `BitLinear` layers (ternary when exported).
    pub ternary: usize,
    /// Embedding (tied with the LM head) and RMSNorm gains, kept in full precision.
    pub full_precision: usize,
}

impl ParamCount {
    pub fn total(&self) -> usize {
        self.ternary + self.full_precision
    }
}

/// Deserializes a TOML value; a failure comes with the dotted path of the key at fault ("." for
/// the value itself) and the message, so every config error can name its key.
pub fn from_toml<T: serde::de::DeserializeOwned>(
    value: toml::Value,
) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(
        |e: serde_path_to_error::Error<toml::de::Error>| {
            (e.path().to_string(), e.inner().message().to_string())
        },
    )
}

impl ModelConfig {
    /// Reads the `[model]` table of a TOML run config and validates it. Other tables are left to
    /// their owners (the training loop reads `[train]`), but unknown keys inside `[model]` are errors.
    pub fn from_toml_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| e.in_file(path))
    }

    /// As [`Self::from_toml_file`], from text.
    pub fn from_toml_str(text: &str) -> Result<Self, Error> {
        #[derive(Deserialize)]
        struct File {
            model: Option<toml::Value>,
        }
        let file: File = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        let model = file
            .model
            .ok_or_else(|| Error::Config("missing [model] table".into()))?;
        let cfg: ModelConfig = from_toml(model).map_err(|(key, msg)| {
            let at = if key == "." {
                "[model]".to_string()
            } else {
                format!("[model].{key}")
            };
            Error::Config(format!("{at}: {msg}"))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Key/value heads, with the default (no grouping) resolved.
    pub fn kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    /// The quantization blend λ at optimizer step `step` (0-based): ramps linearly from 0 to 1 over
    /// `quant_warmup_steps`, then stays at 1. Always 1 when there is no warm-up.
    pub fn quant_lambda(&self, step: usize) -> f32 {
        if self.quant_warmup_steps == 0 {
            1.0
        } else {
            (step as f32 / self.quant_warmup_steps as f32).min(1.0)
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Rejects shapes the model cannot be built with, naming the key and the fix.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |key: &str, why: String| Err(Error::Config(format!("[model].{key}: {why}")));
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("d_ff", self.d_ff),
            ("max_seq_len", self.max_seq_len),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        // Bounds far above any real model, so that size arithmetic cannot overflow.
        for (key, v, max) in [
            ("vocab_size", self.vocab_size, 1usize << 32),
            ("d_model", self.d_model, 1 << 20),
            ("n_layers", self.n_layers, 1 << 12),
            ("d_ff", self.d_ff, 1 << 22),
            ("max_seq_len", self.max_seq_len, 1 << 24),
        ] {
            if v > max {
                return bad(
                    key,
                    format!("{v} is beyond any model this tool can hold (at most {max})"),
                );
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return bad(
                "d_model",
                format!(
                    "{} is not divisible by n_heads = {}",
                    self.d_model, self.n_heads
                ),
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(
                "n_heads",
                format!(
                    "head_dim = d_model / n_heads = {} must be even for RoPE",
                    self.head_dim()
                ),
            );
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.n_heads.is_multiple_of(kv) {
            return bad(
                "n_kv_heads",
                format!(
                    "{kv} must divide n_heads = {} (grouped-query attention)",
                    self.n_heads
                ),
            );
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(
                "rope_theta",
                format!("{} must be a positive number", self.rope_theta),
            );
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return bad(
                "norm_eps",
                format!("{} must be a positive number", self.norm_eps),
            );
        }
        Ok(())
    }

    /// Non-fatal advice: shapes that train fine but cannot be exported to GGUF's TQ1_0/TQ2_0 types,
    /// whose rows are packed in blocks of 256.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, v) in [("d_model", self.d_model), ("d_ff", self.d_ff)] {
            if v % GGUF_BLOCK != 0 {
                out.push(format!(
                    "[model].{key} = {v} is not a multiple of {GGUF_BLOCK}: TQ1_0/TQ2_0 export will refuse it \
                     (use i2_s, or round {key} to {})",
                    v.div_ceil(GGUF_BLOCK) * GGUF_BLOCK
                ));
            }
        }
        out
    }

    /// Parameter count. Per block: q and o are d×d, k and v are d×(kv_heads·head_dim), gate/up/down are
    /// d×d_ff each, and four RMSNorm gains (attn_norm, attn_sub_norm, ffn_norm: d; ffn_sub_norm: d_ff).
    /// Outside the blocks: the embedding (vocab×d, tied with the head) and output_norm (d).
    pub fn param_count(&self) -> ParamCount {
        let d = self.d_model;
        let kv_dim = self.kv_heads() * self.head_dim();
        let per_block_ternary = 2 * d * d + 2 * d * kv_dim + 3 * d * self.d_ff;
        let per_block_norms = 3 * d + self.d_ff;
        ParamCount {
            ternary: self.n_layers * per_block_ternary,
            full_precision: self.vocab_size * d + d + self.n_layers * per_block_norms,
        }
    }

    /// Estimated bytes a training step holds at `batch × seq` tokens with AdamW, f32 throughout:
    /// the weights, their gradients and two moments (16 bytes per parameter), plus activations.
    ///
    /// Activations are counted from what the forward pass keeps for the backward pass, per token and
    /// layer: each BitLinear keeps its input and the quantized copy (q/k/v share theirs), RMSNorms keep
    /// input and output, attention keeps q, k, v, its output and (unfused) the softmax scores and
    /// probabilities (2·H·T per token), the FFN keeps gate, up, act(gate), their product. The head keeps
    /// logits and log-probabilities (2·V per token). It is an estimate: the allocator's slack and
    /// temporaries come on top (the training benchmark reports measured peak RSS next to it).
    pub fn train_step_bytes(&self, batch: usize, seq: usize) -> TrainMemory {
        self.train_step_bytes_checkpointed(batch, seq, 0)
    }

    /// As [`Self::train_step_bytes`] with the first `recompute` blocks checkpointed
    /// (`gradient_checkpointing`): they keep only their input, and one of them at a time holds
    /// its activations again in the backward pass, after the kept blocks' graph is gone.
    pub fn train_step_bytes_checkpointed(
        &self,
        batch: usize,
        seq: usize,
        recompute: usize,
    ) -> TrainMemory {
        // In u128, saturating at the end: a huge batch or sequence must read as huge, not wrap.
        let p = self.param_count().total() as u128;
        let d = self.d_model as u128;
        let f = self.d_ff as u128;
        let h = self.n_heads as u128;
        let seq_len = seq as u128;
        let kv_dim = (self.kv_heads() * self.head_dim()) as u128;
        let per_token_layer = 2 * d // attn_norm in/out
            + 2 * d                   // shared q/k/v input + quantized copy
            + d + 2 * kv_dim          // q, k, v (before RoPE)
            + d + 2 * kv_dim          // after RoPE / GQA repeat (upper bound)
            + 2 * h * seq_len         // attention scores and probabilities
            + 2 * d                   // attention output, sub-norm output
            + 2 * d                   // o-proj input + quantized copy
            + 2 * d                   // ffn_norm in/out
            + 2 * d                   // gate/up shared input + quantized copy
            + 4 * f                   // gate, up, act(gate), product
            + 2 * f                   // ffn_sub_norm output + quantized copy
            + d; // residual
        let tokens = (batch as u128).saturating_mul(seq_len);
        let recompute = recompute.min(self.n_layers) as u128;
        let kept = self.n_layers as u128 - recompute;
        let live_layers = if recompute > 0 { kept.max(1) } else { kept };
        let per_token =
            live_layers * per_token_layer + recompute * d + 2 * self.vocab_size as u128 + 2 * d;
        let activations = tokens.saturating_mul(4 * per_token);
        let clamp = |v: u128| v.min(usize::MAX as u128) as usize;
        TrainMemory {
            weights_and_optimizer: clamp(16 * p),
            activations: clamp(activations),
        }
    }
}

/// The parts of [`ModelConfig::train_step_bytes`].
#[derive(Debug, Clone, Copy)]
pub struct TrainMemory {
    /// Weights, gradients and AdamW's two moments.
    pub weights_and_optimizer: usize,
    /// Tensors the forward pass keeps for the backward pass.
    pub activations: usize,
}

impl TrainMemory {
    pub fn total(&self) -> usize {
        self.weights_and_optimizer.saturating_add(self.activations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<ModelConfig, Error> {
        ModelConfig::from_toml_str(text)
    }

    const TINY: &str = "[model]\nvocab_size = 64\nd_model = 32\nn_layers = 2\nn_heads = 4\nd_ff = 48\nmax_seq_len = 16\n";

    /// Checkpointing keeps each recomputed block's input and, at a time, one block's
    /// activations: against the plain estimate, recomputing 1 of 2 blocks saves one layer's
    /// activations less one input; recomputing both keeps one more input.
    #[test]
    fn checkpointing_shrinks_the_activation_estimate_by_the_blocks_it_recomputes() {
        let c = cfg(TINY).unwrap();
        let bytes = |r: usize| c.train_step_bytes_checkpointed(2, 16, r).activations;
        let plain = c.train_step_bytes(2, 16).activations;
        assert_eq!(bytes(0), plain);
        let unit = 2 * 16 * 4; // tokens × f32
        let d = c.d_model;
        // One layer's activations per token, from the plain estimate of 1 and 2 layers.
        let one_layer = cfg(&TINY.replace("n_layers = 2", "n_layers = 1")).unwrap();
        let layer = (plain - one_layer.train_step_bytes(2, 16).activations) / unit;
        assert!(layer > d);
        assert_eq!(plain - bytes(1), (layer - d) * unit);
        assert_eq!(bytes(2), bytes(1) + d * unit);
        assert_eq!(bytes(usize::MAX), bytes(2));
    }

    #[test]
    fn defaults_fill_optional_keys() {
        let c = cfg(TINY).unwrap();
        assert_eq!(c.kv_heads(), 4);
        assert_eq!(c.ffn_act, FfnAct::Silu);
        assert_eq!(c.quant, Quant::Ternary);
        assert_eq!(c.rope_theta, 10_000.0);
        assert_eq!(c.head_dim(), 8);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = cfg(&format!("{TINY}d_modle = 3\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("d_modle"), "{e}");
    }

    #[test]
    fn indivisible_heads_are_refused() {
        let e = cfg(&TINY.replace("n_heads = 4", "n_heads = 5"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[model].d_model") && e.contains("n_heads = 5"),
            "{e}"
        );
        let e = cfg(&format!("{TINY}n_kv_heads = 3\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[model].n_kv_heads"), "{e}");
        let e = cfg(&TINY.replace("n_layers = 2", "n_layers = 0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[model].n_layers"), "{e}");
    }

    #[test]
    fn missing_table_and_bad_enum() {
        assert!(
            cfg("[train]\nlr = 1.0\n")
                .unwrap_err()
                .to_string()
                .contains("[model]")
        );
        let e = cfg(&format!("{TINY}ffn_act = \"gelu\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gelu"), "{e}");
    }

    #[test]
    fn warns_on_shapes_gguf_cannot_pack() {
        let c = cfg(TINY).unwrap();
        let w = c.warnings();
        assert_eq!(w.len(), 2);
        assert!(w[0].contains("d_model = 32") && w[0].contains("256"));
    }

    #[test]
    fn bitnet_125m_has_124m_parameters() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/bitnet-125m.toml");
        let c = ModelConfig::from_toml_file(&path).unwrap();
        // Per block: 4·d² (q, k, v, o; no GQA) + 3·d·d_ff (gate, up, down) + 3·d + d_ff (norm gains);
        // plus vocab·d (embedding, tied head) and d (output norm).
        let (d, f, v, l) = (768usize, 2048usize, 50257usize, 12usize);
        let formula = l * (4 * d * d + 3 * d * f + 3 * d + f) + v * d + d;
        assert_eq!(formula, 123_585_024); // also what PyTorch's anchor counts for this shape
        assert_eq!(c.param_count().total(), formula);
        assert!((c.param_count().total() as i64 - 124_000_000).abs() <= 2_000_000);
        assert_eq!(c.param_count().ternary, l * (4 * d * d + 3 * d * f));
    }

    #[test]
    fn quant_lambda_ramps() {
        let mut c = cfg(TINY).unwrap();
        assert_eq!(c.quant_lambda(0), 1.0);
        c.quant_warmup_steps = 4;
        let l: Vec<f32> = (0..6).map(|s| c.quant_lambda(s)).collect();
        assert_eq!(l, vec![0.0, 0.25, 0.5, 0.75, 1.0, 1.0]);
    }

    #[test]
    fn param_count_by_hand() {
        // d=32, kv=4 heads of 8 (=32), d_ff=48, 2 layers, vocab 64:
        // ternary per block = 4·32·32 + 3·32·48 = 4096 + 4608 = 8704; ×2 = 17408
        // full precision = 64·32 + 32 + 2·(3·32 + 48) = 2048 + 32 + 288 = 2368
        let c = cfg(TINY).unwrap();
        assert_eq!(
            c.param_count(),
            ParamCount {
                ternary: 17408,
                full_precision: 2368
            }
        );
        // GQA with 2 KV heads: k and v shrink to 32×16 each: 2·32·32 + 2·32·16 + 4608 = 7680 per block.
        let g = cfg(&format!("{TINY}n_kv_heads = 2\n")).unwrap();
        assert_eq!(g.param_count().ternary, 2 * 7680);
    }
}
