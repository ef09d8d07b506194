//! `BitLinear`: a bias-free linear layer whose forward pass sees ternary weights and int8 activations
//! (see [`crate::quant`]) while the optimizer updates full-precision latent weights.

use burn::module::Param;
use burn::nn::Initializer;
use burn::prelude::*;

use crate::config::Quant;
use crate::quant::{quantize_activations, ste, ternarize};

/// `y = q(x) · q(W)ᵀ`. The weight is stored `[d_out, d_in]` (PyTorch's and GGUF's row order), so
/// export writes rows as they are.
#[derive(Module, Debug)]
pub struct BitLinear {
    /// Latent full-precision weight, `[d_out, d_in]`.
    pub weight: Param<Tensor<2>>,
    #[module(skip)]
    pub quant: Quant,
}

impl BitLinear {
    /// Weights drawn from N(0, 0.02²), GPT-2's initialisation.
    pub fn new(d_in: usize, d_out: usize, quant: Quant, device: &Device) -> Self {
        let weight = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        }
        .init([d_out, d_in], device);
        Self { weight, quant }
    }

    /// `x: [.., d_in] → [.., d_out]`. `lambda` blends quantization in (1 = fully ternary).
    pub fn forward<const D: usize>(&self, x: Tensor<D>, lambda: f32) -> Tensor<D> {
        let w = self.weight.val();
        let (x, w) = match self.quant {
            Quant::None => (x, w),
            Quant::Ternary => (
                ste(x.clone(), quantize_activations(x), lambda),
                ste(w.clone(), ternarize(w), lambda),
            ),
        };
        matmul_t(x, w)
    }
}

/// `x · wᵀ` for `x: [.., k]`, `w: [n, k]`, flattening the leading axes into one matrix product.
pub(crate) fn matmul_t<const D: usize>(x: Tensor<D>, w: Tensor<2>) -> Tensor<D> {
    let dims = x.dims();
    let k = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let [n, _] = w.dims();
    let y = x.reshape([rows, k]).matmul(w.transpose()); // [rows, n]
    let mut out = dims;
    out[D - 1] = n;
    y.reshape(out)
}
