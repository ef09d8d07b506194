//! The decoder: token embedding → blocks → final RMSNorm → LM head tied to the embedding.
//! Each block is two residual lines, as in nanoGPT, with BitNet's sub-norms inside the branches.

use burn::nn::{Embedding, EmbeddingConfig, Initializer, RmsNorm, RmsNormConfig};
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use tritium_gguf::names::Projection;
use tritium_kernels::dense::Precision;

use crate::attention::Attention;
use crate::bitlinear::{BitLinear, product};
use crate::config::ModelConfig;
use crate::ffn::FeedForward;
use crate::fused::{cross_entropy as fused_cross_entropy, norm};

#[derive(Module, Debug)]
pub struct Block {
    pub attn_norm: RmsNorm,
    pub attn: Attention,
    pub ffn_norm: RmsNorm,
    pub ffn: FeedForward,
    #[module(skip)]
    pub(crate) fused: bool,
}

impl Block {
    /// The seven BitLinears in GGUF order: q, k, v, o, gate, up, down.
    pub fn projections(&self) -> [&BitLinear; 7] {
        let (a, f) = (&self.attn, &self.ffn);
        [&a.wq, &a.wk, &a.wv, &a.wo, &f.gate, &f.up, &f.down]
    }

    /// The four RMSNorms of a block: before attention, inside it, before the FFN, inside it.
    pub fn norms(&self) -> [&RmsNorm; 4] {
        [
            &self.attn_norm,
            &self.attn.sub_norm,
            &self.ffn_norm,
            &self.ffn.sub_norm,
        ]
    }

    /// As [`Self::projections`], mutable (attaching or removing adapters).
    pub fn projections_mut(&mut self) -> [&mut BitLinear; 7] {
        let (a, f) = (&mut self.attn, &mut self.ffn);
        [
            &mut a.wq,
            &mut a.wk,
            &mut a.wv,
            &mut a.wo,
            &mut f.gate,
            &mut f.up,
            &mut f.down,
        ]
    }

    fn new(c: &ModelConfig, device: &Device) -> Self {
        let norm = |d: usize| {
            RmsNormConfig::new(d)
                .with_epsilon(c.norm_eps as f64)
                .init(device)
        };
        Self {
            attn_norm: norm(c.d_model),
            attn: Attention::new(c, device),
            ffn_norm: norm(c.d_model),
            ffn: FeedForward::new(c, device),
            fused: true,
        }
    }

    pub fn forward(&self, x: Tensor<3>, lambda: f32, segments: Option<&Segments>) -> Tensor<3> {
        let fused = crate::fused::active(self.fused, &x.device());
        let x = x.clone()
            + self
                .attn
                .forward(norm(&self.attn_norm, x, fused), lambda, segments);
        x.clone() + self.ffn.forward(norm(&self.ffn_norm, x, fused), lambda)
    }
}

/// A BitNet b1.58 decoder, exactly llama.cpp's `bitnet` architecture.
#[derive(Module, Debug)]
pub struct Transformer {
    /// `[V, D]`, also the LM head.
    pub tok_embd: Embedding,
    pub blocks: Vec<Block>,
    pub output_norm: RmsNorm,
    /// Whether the layers run the fused CPU ops ([`crate::fused`]) where the device allows, or
    /// the plain tensor-op model (the reference, for comparisons and bisecting): a setting of
    /// this model, so two models in one process may differ. On by default.
    #[module(skip)]
    pub(crate) fused: bool,
    /// The arithmetic of the training step's matrix products (the BitLinear backward and the
    /// tied head); evaluation runs f32 whatever this says. F32 by default.
    #[module(skip)]
    pub(crate) precision: Precision,
}

impl Transformer {
    /// A fresh model drawn from `seed`, with the same weights on every device: each backend has
    /// its own random generator, so the CPU backend draws them and they are moved to `device`.
    pub fn seeded(c: &ModelConfig, seed: u64, device: &Device) -> Self {
        crate::device::seed(device, seed);
        crate::device::drawn_for(Self::new(c, &crate::device::init_device(device)), device)
    }

    /// A freshly initialised model: N(0, 0.02²) embedding and linear weights, unit norm gains.
    pub fn new(c: &ModelConfig, device: &Device) -> Self {
        Self {
            tok_embd: EmbeddingConfig::new(c.vocab_size, c.d_model)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device),
            blocks: (0..c.n_layers).map(|_| Block::new(c, device)).collect(),
            output_norm: RmsNormConfig::new(c.d_model)
                .with_epsilon(c.norm_eps as f64)
                .init(device),
            fused: true,
            precision: Precision::F32,
        }
    }

    /// Chooses the arithmetic of the fused ops' training products for every layer and the head:
    /// bf16 operands with f32 accumulation as PyTorch's autocast runs them (where the CPU has AMX
    /// or AVX512-BF16; f32 elsewhere, see [`Precision::effective`]), or f32. Latent weights,
    /// optimizer state, the loss and the int8 × ternary forward products are unchanged.
    pub fn set_precision(&mut self, p: Precision) {
        self.precision = p;
        for b in self.blocks.iter_mut() {
            for l in b.projections_mut() {
                l.precision = p;
            }
        }
    }

    /// As [`Self::set_precision`], by value.
    pub fn with_precision(mut self, p: Precision) -> Self {
        self.set_precision(p);
        self
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Chooses the fused ops (`true`, the default) or the plain tensor-op model for every layer.
    pub fn set_fused(&mut self, on: bool) {
        self.fused = on;
        for b in self.blocks.iter_mut() {
            b.fused = on;
            b.attn.fused = on;
            b.ffn.fused = on;
            for l in b.projections_mut() {
                l.fused = on;
            }
        }
    }

    /// Whether this model runs the fused CPU ops where the device allows.
    pub fn fused(&self) -> bool {
        self.fused
    }

    /// As [`Self::set_fused`], by value.
    pub fn with_fused(mut self, on: bool) -> Self {
        self.set_fused(on);
        self
    }

    /// Mean cross-entropy of `logits: [B, T, V]` against `targets: [B, T]`, fused when this model
    /// runs fused.
    pub fn cross_entropy(&self, logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
        if crate::fused::active(self.fused, &logits.device()) {
            let [b, t, v] = logits.dims();
            return fused_cross_entropy(logits.reshape([b * t, v]), targets.reshape([b * t]));
        }
        cross_entropy(logits, targets)
    }

    /// `Σ w · nll` of `logits: [B, T, V]` against `targets: [B, T]` with per-token weights
    /// `[B, T]` (a constant: 1 on the tokens a masked loss scores, 0 elsewhere), fused when this
    /// model runs fused: then no `[B·T, V]` log-probabilities are held, and masked rows are skipped.
    pub fn weighted_nll(
        &self,
        logits: Tensor<3>,
        targets: Tensor<2, Int>,
        weights: Tensor<2>,
    ) -> Tensor<1> {
        let [b, t, v] = logits.dims();
        let (logits, targets, weights) = (
            logits.reshape([b * t, v]),
            targets.reshape([b * t]),
            weights.reshape([b * t]),
        );
        if crate::fused::active(self.fused, &logits.device()) {
            return crate::fused::cross_entropy_weighted(logits, targets, weights);
        }
        let logp = log_softmax(logits, 1);
        let picked = logp.gather(1, targets.reshape([b * t, 1])).reshape([b * t]);
        (picked * weights).sum().neg()
    }

    /// Logits `[B, T, V]` for token ids `[B, T]`, fully quantized.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.forward_blend(tokens, 1.0)
    }

    /// As [`Self::forward`], with quantization blended in by `lambda` ∈ [0, 1] (see
    /// `ModelConfig::quant_warmup_steps`).
    pub fn forward_blend(&self, tokens: Tensor<2, Int>, lambda: f32) -> Tensor<3> {
        self.head(self.hidden(tokens, lambda))
    }

    /// The final normed hidden states `[B, T, D]`, before the LM head.
    pub fn hidden(&self, tokens: Tensor<2, Int>, lambda: f32) -> Tensor<3> {
        self.hidden_masked(tokens, lambda, None)
    }

    /// As [`Self::hidden`], for rows that pack several examples (see [`Segments`]).
    pub fn hidden_masked(
        &self,
        tokens: Tensor<2, Int>,
        lambda: f32,
        segments: Option<&Segments>,
    ) -> Tensor<3> {
        let mut x = self.tok_embd.forward(tokens); // [B, T, D]
        for block in &self.blocks {
            x = block.forward(x, lambda, segments);
        }
        let fused = crate::fused::active(self.fused, &x.device());
        norm(&self.output_norm, x, fused)
    }

    /// Attaches a fresh LoRA adapter (B = 0, so the output is unchanged) to every projection in
    /// `targets`, in every block.
    pub fn attach_lora(
        &mut self,
        rank: usize,
        alpha: f32,
        dropout: f64,
        targets: &[Projection],
        device: &Device,
    ) {
        for b in self.blocks.iter_mut() {
            for (p, layer) in Projection::ALL.into_iter().zip(b.projections_mut()) {
                if targets.contains(&p) {
                    let [d_out, d_in] = layer.dims();
                    let lora = crate::bitlinear::Lora::new(
                        d_in,
                        d_out,
                        rank,
                        alpha,
                        dropout,
                        &crate::device::init_device(device),
                    );
                    layer.lora = Some(crate::device::drawn_for(lora, device));
                }
            }
        }
    }

    /// Every parameter frozen except the adapters' (LoRA training on a fixed base).
    pub fn freeze_base(self) -> Self {
        let mut m = self.no_grad();
        for b in m.blocks.iter_mut() {
            for layer in b.projections_mut() {
                if let Some(l) = layer.lora.as_mut() {
                    l.a = l.a.clone().set_require_grad(true);
                    l.b = l.b.clone().set_require_grad(true);
                }
            }
        }
        m
    }

    /// Every projection with its path in the model's record (`blocks.3.attn.wq`; its weight
    /// is `<path>.weight`), in block order.
    pub fn bitlinears_mut(&mut self) -> Vec<(String, &mut BitLinear)> {
        const FIELDS: [&str; 7] = [
            "attn.wq", "attn.wk", "attn.wv", "attn.wo", "ffn.gate", "ffn.up", "ffn.down",
        ];
        let mut out = Vec::with_capacity(self.blocks.len() * FIELDS.len());
        for (i, b) in self.blocks.iter_mut().enumerate() {
            for (field, layer) in FIELDS.iter().zip(b.projections_mut()) {
                out.push((format!("blocks.{i}.{field}"), layer));
            }
        }
        out
    }

    /// LoRA's frozen base held packed: as [`Self::freeze_base`], with every ternary projection
    /// not yet packed replaced by its codes and scale ([`BitLinear::pack`]). A float model
    /// (`quant = "none"`) keeps its latent weights: packing would ternarize it.
    pub fn freeze_base_packed(mut self) -> Self {
        for (_, layer) in self.bitlinears_mut() {
            if layer.packed.is_none() && layer.quant == crate::config::Quant::Ternary {
                layer.pack();
            }
        }
        self.freeze_base()
    }

    /// Parameters of the model, packed projections counted at their full size (Burn's
    /// `num_params` sees only their empty latent weights).
    pub fn param_total(&self) -> usize {
        let packed: usize = self
            .blocks
            .iter()
            .flat_map(|b| b.projections())
            .filter_map(|l| l.packed.as_ref().map(|p| p.rows * p.cols))
            .sum();
        self.num_params() + packed
    }

    /// Whether any projection holds packed codes instead of a latent weight.
    pub fn is_packed(&self) -> bool {
        self.blocks
            .iter()
            .any(|b| b.projections().iter().any(|l| l.packed.is_some()))
    }

    /// The model with every adapter removed (the base, e.g. after tokens were added to it).
    pub fn without_lora(&self) -> Self {
        let mut base = self.clone();
        for b in base.blocks.iter_mut() {
            for l in b.projections_mut() {
                l.lora = None;
            }
        }
        base
    }

    /// Folds every adapter into its latent weight, `W += (alpha/r)·B·A`, and removes it. Lossy
    /// for a BitNet: the adapter ran on unquantized inputs beside the ternary product, while the
    /// folded weight is ternarized and sees int8 activations.
    pub fn merge_lora(mut self) -> Self {
        for b in self.blocks.iter_mut() {
            for layer in b.projections_mut() {
                assert!(
                    layer.packed.is_none(),
                    "a packed base has no latent weight to fold an adapter into: merge a model loaded unpacked"
                );
                if let Some(l) = layer.lora.take() {
                    let scale = l.alpha / l.rank() as f32;
                    let delta = l.b.val().matmul(l.a.val()) * scale;
                    layer.weight =
                        burn::module::Param::from_tensor((layer.weight.val() + delta).detach());
                }
            }
        }
        self
    }

    /// The tied LM head on hidden states `[.., D]` → `[.., V]` (evaluation applies it only to the
    /// positions it scores).
    pub fn head<const N: usize>(&self, h: Tensor<N>) -> Tensor<N> {
        if crate::fused::active(self.fused, &h.device()) {
            return crate::fused::linear(h, self.tok_embd.weight.val(), self.precision);
        }
        product(h, self.tok_embd.weight.val(), self.precision)
    }
}

/// Rows that pack several examples: a token attends only to the earlier tokens of its own
/// example. Held as each position's example start (`starts[b·T + p] ≤ p`), which the fused
/// attention takes as it is; the tensor-op model gets the equivalent mask ([`Self::mask`]).
#[derive(Clone, Debug)]
pub struct Segments {
    starts: Arc<Vec<u32>>,
    b: usize,
    t: usize,
}

impl Segments {
    /// From each token's example id, row by row (`ids[b][p]`): an example is a run of equal ids,
    /// and a new one begins where the id changes.
    pub fn from_ids(ids: &[Vec<u32>]) -> Self {
        let b = ids.len();
        let t = ids.first().map_or(0, Vec::len);
        let mut starts = Vec::with_capacity(b * t);
        for row in ids {
            assert_eq!(row.len(), t, "every row has the same length");
            let mut start = 0;
            for (p, id) in row.iter().enumerate() {
                if p > 0 && *id != row[p - 1] {
                    start = p;
                }
                starts.push(start as u32);
            }
        }
        Segments {
            starts: Arc::new(starts),
            b,
            t,
        }
    }

    /// Each position's example start, `[B·T]`.
    pub fn starts(&self) -> &Arc<Vec<u32>> {
        &self.starts
    }

    /// `[B, 1, T, T]`, true where attention is cut on top of the causal mask: key `j` before the
    /// start of query `i`'s example (or after `i`, which the causal mask cuts anyway).
    pub fn mask(&self, device: &Device) -> Tensor<4, Bool> {
        let (b, t) = (self.b, self.t);
        let mut cut: Vec<i32> = Vec::with_capacity(b * t * t);
        for row in self.starts.chunks(t.max(1)).take(b) {
            for (i, &s) in row.iter().enumerate() {
                cut.extend((0..t).map(|j| (j < s as usize || j > i) as i32));
            }
        }
        Tensor::<1, Int>::from_ints(cut.as_slice(), device)
            .equal_elem(1)
            .reshape([b, 1, t, t])
    }
}

/// Mean cross-entropy (nats per token) of `logits: [B, T, V]` against `targets: [B, T]`, in
/// plain tensor ops (the definition; [`Transformer::cross_entropy`] fuses it).
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    let logp = log_softmax(logits.reshape([b * t, v]), 1);
    let picked = logp.gather(1, targets.reshape([b * t, 1])); // [B·T, 1]
    picked.mean().neg()
}
