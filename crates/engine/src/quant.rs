//! Per-token int8 activation quantization, exactly as training's `quantize_activations` does it:
//! `s = 127 / max(max|x|, 1e-5)` (computed as `(1/m)·127`, like Burn), `q = clamp(round_half_even(x·s),
//! −128, 127)`.

use crate::kernels::bitlinear::quantize_row;
use crate::kernels::{Aligned, BLOCK};

/// Quantized activations for `ntok` tokens, each padded with zeros to `nb·256` values.
#[derive(Debug, Default)]
pub struct QuantActs {
    pub ntok: usize,
    pub nb: usize,
    /// Rows of `nb·256` values, the first on a cache line (so is every row).
    pub q: Aligned<i8>,
    /// The per-token `s`: the real activation is `q / s`.
    pub scale: Vec<f32>,
    /// `1 / s`, so products are rescaled with a multiply.
    pub inv_scale: Vec<f32>,
    /// `Σ q` per (token, 256-block), for the `Σ t·x − Σ x` identity.
    pub block_sums: Vec<i32>,
    sums: Vec<i32>,
}

impl QuantActs {
    /// Quantizes `x` (`ntok` rows of `k` values).
    pub fn quantize(&mut self, x: &[f32], k: usize) {
        let ntok = x.len() / k;
        let nb = k.div_ceil(BLOCK);
        let kp = nb * BLOCK;
        self.ntok = ntok;
        self.nb = nb;
        self.q.reset(ntok * kp, 0);
        self.scale.clear();
        self.inv_scale.clear();
        self.block_sums.clear();
        self.block_sums.resize(ntok * nb, 0);
        self.sums.clear();
        for (t, row) in x.chunks_exact(k).enumerate() {
            let (s, _) = quantize_row(&mut self.q[t * kp..t * kp + k], row);
            let mut total = 0;
            for b in 0..nb {
                let bs: i32 = self.q[t * kp + b * BLOCK..t * kp + (b + 1) * BLOCK]
                    .iter()
                    .map(|&v| v as i32)
                    .sum();
                self.block_sums[t * nb + b] = bs;
                total += bs;
            }
            self.scale.push(s);
            self.inv_scale.push(1.0 / s);
            self.sums.push(total);
        }
    }

    pub fn row(&self, t: usize) -> &[i8] {
        let kp = self.nb * BLOCK;
        &self.q[t * kp..(t + 1) * kp]
    }

    pub fn sum(&self, t: usize) -> i32 {
        self.sums[t]
    }

    /// `Σ q` per token.
    pub fn sums(&self) -> &[i32] {
        &self.sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_training_by_hand() {
        // The same cases as the model crate's `activations_by_hand`: row 0 has max 127 → s = 1 and
        // exact ties 0.5 → 0, 1.5 → 2, −2.5 → −2; row 1 has max 254 → s = 0.5.
        let mut a = QuantActs::default();
        a.quantize(&[0.5, 1.5, -2.5, 127.0, 2.0, -1.0, 6.0, -254.0], 4);
        assert_eq!(&a.row(0)[..4], &[0, 2, -2, 127]);
        assert_eq!(&a.row(1)[..4], &[1, 0, 3, -127]);
        assert!(a.row(0)[4..].iter().all(|&v| v == 0), "padding is zero");
        assert_eq!(a.scale, vec![1.0, 0.5]);
        assert_eq!((a.sum(0), a.sum(1)), (127, -123));
    }

    #[test]
    fn zero_row_is_zero() {
        let mut a = QuantActs::default();
        a.quantize(&[0.0; 300], 300);
        assert_eq!(a.nb, 2);
        assert!(a.q.iter().all(|&v| v == 0));
        assert_eq!(a.scale[0], 127.0 / 1e-5);
    }
}
