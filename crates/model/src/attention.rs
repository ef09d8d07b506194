//! Causal self-attention with grouped-query heads, RoPE and BitNet's sub-norm before the output
//! projection (`a = rmsnorm(attn)·attn_sub_norm; x += Wo·a`).

use burn::nn::{RmsNorm, RmsNormConfig};
use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::bitlinear::BitLinear;
use crate::config::ModelConfig;
use crate::rope;
use crate::transformer::Segments;

// Legend: B batch, T time, D d_model, H query heads, KV key/value heads, hd head width.
#[derive(Module, Debug)]
pub struct Attention {
    pub wq: BitLinear, // [H·hd, D]
    pub wk: BitLinear, // [KV·hd, D]
    pub wv: BitLinear, // [KV·hd, D]
    pub sub_norm: RmsNorm,
    pub wo: BitLinear, // [D, H·hd]
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub rope_theta: f32,
    #[module(skip)]
    pub(crate) fused: bool,
}

impl Attention {
    pub fn new(c: &ModelConfig, device: &Device) -> Self {
        let hd = c.head_dim();
        let kv_dim = c.kv_heads() * hd;
        Self {
            wq: BitLinear::new(c.d_model, c.d_model, c.quant, device),
            wk: BitLinear::new(c.d_model, kv_dim, c.quant, device),
            wv: BitLinear::new(c.d_model, kv_dim, c.quant, device),
            sub_norm: RmsNormConfig::new(c.d_model)
                .with_epsilon(c.norm_eps as f64)
                .init(device),
            wo: BitLinear::new(c.d_model, c.d_model, c.quant, device),
            n_heads: c.n_heads,
            n_kv_heads: c.kv_heads(),
            rope_theta: c.rope_theta,
            fused: true,
        }
    }

    /// `h: [B, T, D]` (already normed) → `[B, T, D]`, the block's attention branch. With
    /// `segments` (rows that pack several examples) a token sees only its own example. RoPE
    /// needs no per-example positions for that: scores depend only on the distance between two
    /// tokens, and only same-example pairs are scored.
    pub fn forward(&self, h: Tensor<3>, lambda: f32, segments: Option<&Segments>) -> Tensor<3> {
        let [b, t, d] = h.dims();
        let (nh, nkv) = (self.n_heads, self.n_kv_heads);
        let hd = d / nh;
        let fused = crate::fused::active(self.fused, &h.device());
        if fused {
            // The fused op takes [B, T, n, hd] as the projections lay it out and applies RoPE.
            let q = self.wq.forward(h.clone(), lambda).reshape([b, t, nh, hd]);
            let k = self.wk.forward(h.clone(), lambda).reshape([b, t, nkv, hd]);
            let v = self.wv.forward(h, lambda).reshape([b, t, nkv, hd]);
            let starts = segments.map(|s| s.starts().clone());
            let a = crate::fused::attention(q, k, v, self.rope_theta, starts).reshape([b, t, d]);
            return self
                .wo
                .forward(crate::fused::norm(&self.sub_norm, a, fused), lambda);
        }
        let h_device = h.device();
        let heads = |x: Tensor<3>, n: usize| x.reshape([b, t, n, hd]).swap_dims(1, 2); // [B, n, T, hd]
        let q = heads(self.wq.forward(h.clone(), lambda), nh);
        let k = heads(self.wk.forward(h.clone(), lambda), nkv);
        let v = heads(self.wv.forward(h, lambda), nkv);

        let (cos, sin) = rope::tables(0, t, hd, self.rope_theta, &q.device());
        let q = rope::apply(q, &cos, &sin);
        let k = rope::apply(k, &cos, &sin);
        let k = repeat_kv(k, nh / nkv); // [B, H, T, hd]
        let v = repeat_kv(v, nh / nkv);

        let options = AttentionModuleOptions {
            scale: None, // 1/√hd
            softcap: None,
            is_causal: true,
        };
        let mask = segments.map(|s| s.mask(&h_device).expand([b, nh, t, t]));
        let a = attention(q, k, v, mask, None, options); // [B, H, T, hd]
        let a = a.swap_dims(1, 2).reshape([b, t, d]);
        self.wo
            .forward(crate::fused::norm(&self.sub_norm, a, fused), lambda)
    }
}

/// Grouped-query attention: each key/value head serves `n_rep` consecutive query heads
/// (query head i reads KV head i / n_rep, as llama.cpp does).
pub fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, kv, t, hd] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kv, n_rep, t, hd])
        .reshape([b, kv * n_rep, t, hd])
}
