//! Fused training ops on the CPU (`flex`) backend: one op, with a hand-written backward, where
//! the model would otherwise chain many tensor ops.
//!
//! Burn's autodiff records every tensor op of a layer as a graph node, runs a separate pass over
//! memory for each, and keeps the intermediates for the backward pass. A profile of a tiny
//! training step put more time in those elementwise passes than in the matrix products. The ops
//! here replace the hottest chains:
//!
//! - [`bitlinear`]: fake-quantized `x · wᵀ`. The forward quantizes the weights once into ternary
//!   codes packed for many-token products (`tritium_kernels::panels`) and the activations once
//!   into int8 rows, and multiplies them with `vpdpbusd` (AVX2 or scalar where the CPU lacks it);
//!   it keeps only the int8 rows and the packed weights (a quarter and a sixteenth of the f32
//!   sizes) for the backward pass, the straight-through one: `dX = dY · (q_w·g)`,
//!   `dW = dYᵀ · (q_x / s)`. Those two are f32 GEMMs by default, matching the reference to 1e-4;
//!   with [`Precision::Bf16`] they (and the head's products) take bf16 operands (AMX tiles or
//!   AVX512-BF16, `tritium_kernels::bf16`), as PyTorch's autocast would, within bf16 rounding of f32 (see the tests).
//! - [`linear`]: the float tied head, with its backward products side by side
//!   ([`tritium_kernels::dense`]).
//! - [`attention`]: causal attention with RoPE and grouped-query heads on the projections'
//!   own `[B, T, heads, hd]` layout ([`tritium_kernels::attention`]).
//! - [`rms_norm`], [`gate`], [`cross_entropy`]: one pass forward and one back each
//!   ([`tritium_kernels::rows`]).
//! - [`adamw`], [`sum_squares`]: the optimizer's update and the gradient norm, one parallel pass
//!   per tensor ([`tritium_kernels::optim`]).
//!
//! Each equals the unfused reference (the plain tensor-op version, which stays for other backends
//! and for `--unfused`) within 1e-5 forward and 1e-4 in the gradients: see the tests.

mod flex;
#[cfg(test)]
mod tests;

pub use crate::values::F32Values;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension};
use burn::prelude::*;
use std::sync::Arc;
use tritium_kernels::bitlinear::TernaryMatrix;
pub use tritium_kernels::dense::Precision;
pub use tritium_kernels::optim::AdamStep;
pub use tritium_kernels::rows::Gate;

#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    /// `x: [m, k]`, `w: [n, k]` → `[m, n]`, both fake-quantized (λ = 1). Under autodiff the
    /// backward products run in `p`; the forward is exact (int8 × ternary) either way.
    fn bitlinear(x: FloatTensor<Self>, w: FloatTensor<Self>, p: Precision) -> FloatTensor<Self>;
    /// `x: [m, k]` times a frozen weight already ternarized and packed (`[n, k]`) → `[m, n]`,
    /// activations fake-quantized as in [`FusedOps::bitlinear`]. The gradient reaches `x` only.
    fn bitlinear_packed(
        x: FloatTensor<Self>,
        w: Arc<TernaryMatrix>,
        p: Precision,
    ) -> FloatTensor<Self>;
    /// `x · wᵀ` for `x: [m, k]`, `w: [n, k]` (the tied head), its two backward products side by
    /// side. In `p` under autodiff (training); always f32 without it (evaluation, sampling).
    fn linear(x: FloatTensor<Self>, w: FloatTensor<Self>, p: Precision) -> FloatTensor<Self>;
    /// `x: [m, d]`, `gamma: [d]` → `x / sqrt(mean(x²) + eps) · γ`.
    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f32) -> FloatTensor<Self>;
    /// Causal attention with NEOX RoPE (θ = `theta`) applied inside: `q: [b, t, h, hd]`,
    /// `k`, `v: [b, t, kv, hd]` (projections, not yet rotated) → `[b, t, h, hd]`. With `starts`
    /// (`[b·t]`, packed rows) the query at `p` sees keys `starts[p]..=p` only.
    fn attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        theta: f32,
        starts: Option<Arc<Vec<u32>>>,
    ) -> FloatTensor<Self>;
    /// `act(g) ⊙ u`, same shapes (SiLU or relu²).
    fn gate(g: FloatTensor<Self>, u: FloatTensor<Self>, act: Gate) -> FloatTensor<Self>;
    /// `logits: [m, v]`, `targets: [m]` → the mean negative log-likelihood, shape `[1]`.
    fn cross_entropy(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self>;
    /// As [`FusedOps::cross_entropy`] with a weight a row (`[m]`, a constant), summed:
    /// `Σ wᵢ · nllᵢ`, shape `[1]`. Rows of weight 0 cost nothing.
    fn cross_entropy_weighted(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// One AdamW step on flat parameter, gradient and moment tensors → `(p, m, v)` updated, in
    /// place where the tensors are not shared ([`tritium_kernels::optim::adamw`]).
    #[allow(clippy::type_complexity)]
    fn adamw(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        step: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// `Σ x²` of a flat tensor, shape `[1]` (summed in f64).
    fn sum_squares(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The f32 values in row-major order, read in place when the tensor is contiguous (else one
    /// copy): reading a tensor that a model shares through `into_data` copies its whole buffer
    /// twice on the way (2.4 GiB for a 2B model's embedding while a checkpoint is written).
    fn f32_values(x: FloatTensor<Self>) -> F32Values;
}

/// Whether tensors on `device` can take the fused path.
pub fn supported(device: &Device) -> bool {
    matches!(
        device.clone().without_autodiff().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

/// Whether a layer asked to run fused (`on`, the model's setting) can on `device`.
pub fn active(on: bool, device: &Device) -> bool {
    on && supported(device)
}

/// Runs `op` on `x` flattened to `[rows, last]` and gives the result back `x`'s leading shape.
fn on_rows<const D: usize>(x: Tensor<D>, op: impl FnOnce(Tensor<2>) -> Tensor<2>) -> Tensor<D> {
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = op(x.reshape([rows, dims[D - 1]]));
    let mut out = dims;
    out[D - 1] = y.dims()[1];
    y.reshape(out)
}

/// `x · wᵀ` with ternary weights and int8 activations, for `x: [.., k]` and `w: [n, k]`.
pub fn bitlinear<const D: usize>(x: Tensor<D>, w: Tensor<2>, p: Precision) -> Tensor<D> {
    on_rows(x, |x| {
        let y = <Dispatch as FusedOps>::bitlinear(x.into_dispatch(), w.into_dispatch(), p);
        Tensor::from_dispatch(y)
    })
}

/// `x · wᵀ` for `x: [.., k]` and a packed frozen `w: [n, k]` (see [`crate::BitLinear::pack`]).
pub fn bitlinear_packed<const D: usize>(
    x: Tensor<D>,
    w: &Arc<TernaryMatrix>,
    p: Precision,
) -> Tensor<D> {
    on_rows(x, |x| {
        let y = <Dispatch as FusedOps>::bitlinear_packed(x.into_dispatch(), w.clone(), p);
        Tensor::from_dispatch(y)
    })
}

/// Float `x · wᵀ` for `x: [.., k]` and `w: [n, k]`.
pub fn linear<const D: usize>(x: Tensor<D>, w: Tensor<2>, p: Precision) -> Tensor<D> {
    on_rows(x, |x| {
        let y = <Dispatch as FusedOps>::linear(x.into_dispatch(), w.into_dispatch(), p);
        Tensor::from_dispatch(y)
    })
}

/// `norm.forward(x)`, fused when `fused` (see [`active`]).
pub fn norm<const D: usize>(norm: &burn::nn::RmsNorm, x: Tensor<D>, fused: bool) -> Tensor<D> {
    if fused {
        rms_norm(x, norm.gamma.val(), norm.epsilon as f32)
    } else {
        norm.forward(x)
    }
}

/// RMSNorm over the last axis with gain `gamma`.
pub fn rms_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, eps: f32) -> Tensor<D> {
    on_rows(x, |x| {
        let y = <Dispatch as FusedOps>::rms_norm(x.into_dispatch(), gamma.into_dispatch(), eps);
        Tensor::from_dispatch(y)
    })
}

/// Causal self-attention with RoPE: `q: [b, t, h, hd]`, `k`, `v: [b, t, kv, hd]` → `[b, t, h, hd]`,
/// each query limited to keys from `starts` on where rows pack several examples.
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    theta: f32,
    starts: Option<Arc<Vec<u32>>>,
) -> Tensor<4> {
    let o = <Dispatch as FusedOps>::attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        theta,
        starts,
    );
    Tensor::from_dispatch(o)
}

/// `act(g) ⊙ u`.
pub fn gate<const D: usize>(g: Tensor<D>, u: Tensor<D>, act: Gate) -> Tensor<D> {
    let dims = g.dims();
    let n = dims.iter().product::<usize>();
    let h = <Dispatch as FusedOps>::gate(
        g.reshape([n]).into_dispatch(),
        u.reshape([n]).into_dispatch(),
        act,
    );
    Tensor::<1>::from_dispatch(h).reshape(dims)
}

/// Mean cross-entropy of `logits: [m, v]` against `targets: [m]`, shape `[1]`.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let l = <Dispatch as FusedOps>::cross_entropy(logits.into_dispatch(), targets.into_dispatch());
    Tensor::from_dispatch(l)
}

/// `Σ wᵢ · nllᵢ` of `logits: [m, v]` against `targets: [m]` with weights `[m]` (no gradient),
/// shape `[1]`: a masked loss without the `[m, v]` log-probabilities.
pub fn cross_entropy_weighted(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    weights: Tensor<1>,
) -> Tensor<1> {
    let l = <Dispatch as FusedOps>::cross_entropy_weighted(
        logits.into_dispatch(),
        targets.into_dispatch(),
        weights.detach().into_dispatch(),
    );
    Tensor::from_dispatch(l)
}

/// One AdamW step for a flat parameter `p` with gradient `g` and moments `m`, `v` (all `[n]`,
/// without autodiff) → the updated `(p, m, v)`.
pub fn adamw(
    p: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    step: AdamStep,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let (p, m, v) = <Dispatch as FusedOps>::adamw(
        p.into_dispatch(),
        g.into_dispatch(),
        m.into_dispatch(),
        v.into_dispatch(),
        step,
    );
    (
        Tensor::from_dispatch(p),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    )
}

/// `x`'s values as f32 in row-major order: shared with `x` where the device allows, else copied.
pub fn f32_values<const D: usize>(x: Tensor<D>) -> F32Values {
    if supported(&x.device()) {
        let n = x.dims().iter().product::<usize>();
        return <Dispatch as FusedOps>::f32_values(x.reshape([n]).into_dispatch());
    }
    F32Values::new(
        x.into_data()
            .convert::<f32>()
            .iter::<f32>()
            .collect::<Vec<_>>(),
    )
}

/// `Σ x²` over every element of `x`.
pub fn sum_squares<const D: usize>(x: Tensor<D>) -> f32 {
    let n = x.dims().iter().product::<usize>();
    let s = <Dispatch as FusedOps>::sum_squares(x.reshape([n]).into_dispatch());
    Tensor::<1>::from_dispatch(s).into_scalar::<f32>()
}
