//! The decoder: token embedding → blocks → final RMSNorm → LM head tied to the embedding.
//! Each block is two residual lines, as in nanoGPT, with BitNet's sub-norms inside the branches.

use burn::nn::{Embedding, EmbeddingConfig, Initializer, RmsNorm, RmsNormConfig};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::attention::Attention;
use crate::bitlinear::{BitLinear, matmul_t};
use crate::config::ModelConfig;
use crate::ffn::FeedForward;

#[derive(Module, Debug)]
pub struct Block {
    pub attn_norm: RmsNorm,
    pub attn: Attention,
    pub ffn_norm: RmsNorm,
    pub ffn: FeedForward,
}

impl Block {
    /// The seven BitLinears in GGUF order: q, k, v, o, gate, up, down.
    pub fn projections(&self) -> [&BitLinear; 7] {
        let (a, f) = (&self.attn, &self.ffn);
        [&a.wq, &a.wk, &a.wv, &a.wo, &f.gate, &f.up, &f.down]
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
        }
    }

    pub fn forward(&self, x: Tensor<3>, lambda: f32) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.attn_norm.forward(x), lambda);
        x.clone() + self.ffn.forward(self.ffn_norm.forward(x), lambda)
    }
}

/// A BitNet b1.58 decoder, exactly llama.cpp's `bitnet` architecture.
#[derive(Module, Debug)]
pub struct Transformer {
    /// `[V, D]`, also the LM head.
    pub tok_embd: Embedding,
    pub blocks: Vec<Block>,
    pub output_norm: RmsNorm,
}

impl Transformer {
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
        }
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
        let mut x = self.tok_embd.forward(tokens); // [B, T, D]
        for block in &self.blocks {
            x = block.forward(x, lambda);
        }
        self.output_norm.forward(x)
    }

    /// The tied LM head on hidden states `[.., D]` → `[.., V]` (evaluation applies it only to the
    /// positions it scores).
    pub fn head<const N: usize>(&self, h: Tensor<N>) -> Tensor<N> {
        matmul_t(h, self.tok_embd.weight.val())
    }
}

/// Mean cross-entropy (nats per token) of `logits: [B, T, V]` against `targets: [B, T]`.
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    let logp = log_softmax(logits.reshape([b * t, v]), 1);
    let picked = logp.gather(1, targets.reshape([b * t, 1])); // [B·T, 1]
    picked.mean().neg()
}
