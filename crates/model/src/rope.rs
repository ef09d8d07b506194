//! Rotary position embedding, NEOX ("rotate half") convention: the pairs rotated together are
//! `(x[i], x[i + hd/2])`, as llama.cpp runs the `bitnet` architecture (LLAMA_ROPE_TYPE_NEOX).
//! Burn's own `RotaryEncoding` pairs adjacent elements instead, so it is not used here.

use burn::prelude::*;

/// Cosine and sine tables for positions `start..start + len`, each `[len, hd/2]`;
/// angle(p, i) = p · θ^(-2i/hd).
pub fn tables(
    start: usize,
    len: usize,
    head_dim: usize,
    theta: f32,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let half = head_dim / 2;
    let (cos, sin) = tritium_kernels::attention::rope_tables(start, len, head_dim, theta);
    let mk = |v: Vec<f32>| Tensor::<1>::from_floats(v.as_slice(), device).reshape([len, half]);
    (mk(cos), mk(sin))
}

/// Rotates `x: [B, H, T, hd]` by the tables of [`tables`] (`[T, hd/2]`).
pub fn apply(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
    let [b, h, t, hd] = x.dims();
    let half = hd / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
    let x2 = x.slice([0..b, 0..h, 0..t, half..hd]);
    let c = cos.clone().unsqueeze::<4>(); // [1, 1, T, hd/2]
    let s = sin.clone().unsqueeze::<4>();
    let r1 = x1.clone() * c.clone() - x2.clone() * s.clone();
    let r2 = x2 * c + x1 * s;
    Tensor::cat(vec![r1, r2], 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, dev, values};

    #[test]
    fn rotates_pairs_half_apart_by_hand() {
        // hd = 4, θ = 100: frequencies 1 and 100^(-1/2) = 0.1. Position 2 → angles 2 and 0.2.
        // x = [1, 2, 3, 4]: pairs (x0, x2) = (1, 3) by angle 2, (x1, x3) = (2, 4) by angle 0.2.
        let d = dev();
        let (cos, sin) = tables(2, 1, 4, 100.0, &d);
        let x = Tensor::<1>::from_floats([1.0, 2.0, 3.0, 4.0], &d).reshape([1, 1, 1, 4]);
        let y = values(apply(x, &cos, &sin));
        let (c2, s2) = (2.0f32.cos(), 2.0f32.sin());
        let (c02, s02) = (0.2f32.cos(), 0.2f32.sin());
        let expect = [
            1.0 * c2 - 3.0 * s2,
            2.0 * c02 - 4.0 * s02,
            3.0 * c2 + 1.0 * s2,
            4.0 * c02 + 2.0 * s02,
        ];
        assert_close(&y, &expect, 1e-6);
    }

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        let d = dev();
        let (cos, sin) = tables(0, 3, 4, 10_000.0, &d);
        let x = Tensor::<1>::from_floats(
            [
                1.0, -2.0, 0.5, 3.0, 1.0, -2.0, 0.5, 3.0, 1.0, -2.0, 0.5, 3.0,
            ],
            &d,
        )
        .reshape([1, 1, 3, 4]);
        let y = values(apply(x, &cos, &sin));
        assert_close(&y[..4], &[1.0, -2.0, 0.5, 3.0], 0.0);
        for p in 0..3 {
            let n: f32 = y[4 * p..4 * p + 4].iter().map(|v| v * v).sum();
            assert!((n - 14.25).abs() < 1e-4, "position {p}: |x|² = {n}");
        }
    }
}
