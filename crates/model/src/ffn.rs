//! Gated feed-forward network with BitNet's sub-norm before the down projection:
//! `g = act(Wgate·h) ⊙ (Wup·h); g = rmsnorm(g)·ffn_sub_norm; y = Wdown·g`.

use burn::nn::{RmsNorm, RmsNormConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, silu};

use crate::bitlinear::BitLinear;
use crate::config::{FfnAct, ModelConfig};
use crate::fused::Gate;

#[derive(Module, Debug)]
pub struct FeedForward {
    pub gate: BitLinear, // [F, D]
    pub up: BitLinear,   // [F, D]
    pub sub_norm: RmsNorm,
    pub down: BitLinear, // [D, F]
    #[module(skip)]
    pub act: FfnAct,
    #[module(skip)]
    pub(crate) fused: bool,
}

impl FeedForward {
    pub fn new(c: &ModelConfig, device: &Device) -> Self {
        Self {
            gate: BitLinear::new(c.d_model, c.d_ff, c.quant, device),
            up: BitLinear::new(c.d_model, c.d_ff, c.quant, device),
            sub_norm: RmsNormConfig::new(c.d_ff)
                .with_epsilon(c.norm_eps as f64)
                .init(device),
            down: BitLinear::new(c.d_ff, c.d_model, c.quant, device),
            act: c.ffn_act,
            fused: true,
        }
    }

    /// `h: [B, T, D]` (already normed) → `[B, T, D]`.
    pub fn forward(&self, h: Tensor<3>, lambda: f32) -> Tensor<3> {
        let gate = self.gate.forward(h.clone(), lambda);
        let up = self.up.forward(h, lambda);
        let fused = crate::fused::active(self.fused, &up.device());
        let g = match self.act {
            FfnAct::Silu if fused => crate::fused::gate(gate, up, Gate::Silu),
            FfnAct::Relu2 if fused => crate::fused::gate(gate, up, Gate::Relu2),
            FfnAct::Silu => silu(gate) * up,
            FfnAct::Relu2 => relu(gate).square() * up,
        }; // [B, T, F]
        self.down
            .forward(crate::fused::norm(&self.sub_norm, g, fused), lambda)
    }
}
