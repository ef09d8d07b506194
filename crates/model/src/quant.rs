//! BitNet b1.58 fake quantization: the exact arithmetic llama.cpp and bitnet.cpp run at inference,
//! applied in the forward pass, with straight-through gradients.
//!
//! Rounding is half-to-even everywhere (Burn's `round`, like `torch.round` and llama.cpp's
//! `nearest_int`): 0.5 → 0, 1.5 → 2, -2.5 → -2. The tests below pin that down on exact ties.

use burn::prelude::*;

/// Smallest scale denominator, so all-zero weights or activations never divide by zero.
pub const EPS: f64 = 1e-5;

/// The per-tensor absmean scale `g = max(mean|W|, 1e-5)`, shape `[1, 1]` for broadcasting.
///
/// The mean is taken per row, then over the rows: one running f32 sum over millions of weights
/// drifts (by 6e-6 relative at 131k weights here, 5e-4 when the values are equal), enough to
/// move activations downstream across int8 rounding boundaries and part company with
/// transformers' quantizer; two levels keep it within about 1e-7.
pub fn weight_scale(w: &Tensor<2>) -> Tensor<2> {
    w.clone()
        .abs()
        .mean_dim(1)
        .mean()
        .clamp_min(EPS)
        .unsqueeze::<2>()
}

/// Ternary weights `clamp(round(W / g), -1, 1) · g` (values in {-g, 0, +g}).
pub fn ternarize(w: Tensor<2>) -> Tensor<2> {
    let g = weight_scale(&w);
    (w / g.clone()).round().clamp(-1.0, 1.0) * g
}

/// Per-token int8 activations: `s = 127 / max(max|x| over the last axis, 1e-5)`,
/// `x_q = clamp(round(x · s), -128, 127) / s`.
pub fn quantize_activations<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let s = x.clone().max_abs_dim(D - 1).clamp_min(EPS).recip() * 127.0;
    (x * s.clone()).round().clamp(-128.0, 127.0) / s
}

/// Straight-through estimator with a blend factor: the forward value is `x + λ·(q - x)` and the
/// gradient with respect to `x` is the identity (the quantization step is detached).
/// λ = 1 is plain BitNet (`x + (q - x).detach()`); λ < 1 is used while quantization warms up.
pub fn ste<const D: usize>(x: Tensor<D>, q: Tensor<D>, lambda: f32) -> Tensor<D> {
    let delta = q - x.clone();
    let delta = if lambda == 1.0 { delta } else { delta * lambda };
    x + delta.detach()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, dev, t2, values};

    #[test]
    fn weights_round_half_to_even_on_exact_ties() {
        // W = [1, -1, 3, -3]: g = mean|W| = 2, W/g = [.5, -.5, 1.5, -1.5] → half-to-even
        // [0, -0, 2, -2] → clamp [0, 0, 1, -1] → ×g = [0, 0, 2, -2]. (Half-away-from-zero would give
        // [2, -2, 2, -2].)
        let w = t2(&[[1.0, -1.0], [3.0, -3.0]]);
        assert_eq!(values(ternarize(w)), vec![0.0, 0.0, 2.0, -2.0]);
        // W = [1, -1, 1, 5]: g = 2, W/g = [.5, -.5, .5, 2.5] → [0, -0, 0, 2] → clamp → [0, 0, 0, 1] × 2.
        let w = t2(&[[1.0, -1.0], [1.0, 5.0]]);
        assert_eq!(values(ternarize(w)), vec![0.0, 0.0, 0.0, 2.0]);
        // No tie: W = [1, -1, 1, 6]: g = 2.25, W/g = [.444, -.444, .444, 2.667] → [0, 0, 0, 1] × 2.25.
        let w = t2(&[[1.0, -1.0], [1.0, 6.0]]);
        assert_close(&values(ternarize(w)), &[0.0, 0.0, 0.0, 2.25], 1e-6);
    }

    #[test]
    fn all_zero_weights_stay_zero() {
        let w = t2(&[[0.0, 0.0], [0.0, 0.0]]);
        let q = values(ternarize(w));
        assert!(q.iter().all(|v| *v == 0.0), "{q:?}");
    }

    #[test]
    fn weight_outlier_zeroes_the_rest() {
        // One huge weight drags the mean up: g = (1000 + 3·0.1)/4 = 250.075, so 0.1/g rounds to 0 and
        // 1000/g = 3.9988 clamps to 1.
        let w = t2(&[[1000.0, 0.1], [-0.1, 0.1]]);
        let g = 1000.3f32 / 4.0;
        assert_close(&values(ternarize(w)), &[g, 0.0, 0.0, 0.0], 1e-6);
    }

    #[test]
    fn activations_by_hand() {
        // Row 0: max|x| = 127 → s = 1, x·s = [0.5, 1.5, -2.5, 127] → [0, 2, -2, 127] (half-to-even).
        // Row 1: max|x| = 254 → s = 0.5, x·s = [1, -0.5, 3, -127] → [1, -0, 3, -127] → ×2.
        let x = t2(&[[0.5, 1.5, -2.5, 127.0], [2.0, -1.0, 6.0, -254.0]]);
        let q = values(quantize_activations(x));
        assert_eq!(q, vec![0.0, 2.0, -2.0, 127.0, 2.0, 0.0, 6.0, -254.0]);
    }

    #[test]
    fn all_zero_row_is_finite_and_zero() {
        let x = t2(&[[0.0, 0.0, 0.0], [1.0, 0.0, -1.0]]);
        let q = values(quantize_activations(x));
        assert_eq!(q, vec![0.0, 0.0, 0.0, 1.0, 0.0, -1.0]);
    }

    #[test]
    fn activation_outlier_flushes_small_values() {
        // s = 127/1e6: 1.0·s = 1.27e-4 rounds to 0; the outlier maps to exactly 127 → 1e6.
        let x = t2(&[[1.0, -3.0, 1.0e6]]);
        let q = values(quantize_activations(x));
        assert_eq!(q[0], 0.0);
        assert_eq!(q[1], 0.0);
        assert_close(&q[2..], &[1.0e6], 1e-6);
    }

    #[test]
    fn ste_gradient_is_identity() {
        let d = dev().autodiff();
        let w = Tensor::<2>::from_floats([[0.3, -1.2, 0.05], [2.0, -0.7, 0.9]], &d).require_grad();
        let x = Tensor::<2>::from_floats([[0.5, -4.0, 3.0], [1.0, 2.0, -0.25]], &d).require_grad();
        // Arbitrary weights on the outputs: d/dw sum(r ⊙ ste(w)) must equal r exactly.
        let r = Tensor::<2>::from_floats([[1.0, 2.0, 3.0], [-4.0, 5.0, -6.0]], &d);
        for lambda in [1.0, 0.3] {
            let loss = (ste(w.clone(), ternarize(w.clone()), lambda) * r.clone()).sum()
                + (ste(x.clone(), quantize_activations(x.clone()), lambda) * r.clone()).sum();
            let g = loss.backward();
            let expect = vec![1.0, 2.0, 3.0, -4.0, 5.0, -6.0];
            assert_eq!(values(w.grad(&g).unwrap()), expect);
            assert_eq!(values(x.grad(&g).unwrap()), expect);
        }
    }

    #[test]
    fn ste_blend_interpolates_values() {
        let w = t2(&[[1.0, -1.0], [3.0, -3.0]]); // ternarized: [0, 0, 2, -2]
        let half = values(ste(w.clone(), ternarize(w), 0.5));
        assert_eq!(half, vec![0.5, -0.5, 2.5, -2.5]);
    }
}
