//! Per-token int8 activation quantization, exactly as training's `quantize_activations` does it:
//! `s = 127 / max(max|x|, 1e-5)` (computed as `(1/m)·127`, like Burn), `q = clamp(round_half_even(x·s),
//! −128, 127)`.

use crate::kernels::bitlinear::quantize_row;
use crate::kernels::pool::Pool;
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
        self.reset(x.len() / k, k);
        let kp = self.nb * BLOCK;
        let rows = self
            .q
            .chunks_exact_mut(kp)
            .zip(self.block_sums.chunks_exact_mut(self.nb));
        for (t, (row, (q, bs))) in x.chunks_exact(k).zip(rows).enumerate() {
            (self.scale[t], self.sums[t]) = quantize_into(row, q, bs);
        }
        for (inv, s) in self.inv_scale.iter_mut().zip(&self.scale) {
            *inv = 1.0 / s;
        }
    }

    /// Fills each row of `h` (rows of `k` values) with `prep(t, row)` and quantizes it, the rows
    /// spread over `pool`'s team: the norm (and gate) before each projection of a batch would
    /// otherwise run on one thread while the others wait.
    pub fn prepare(
        &mut self,
        pool: &Pool,
        h: &mut [f32],
        k: usize,
        prep: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        let ntok = h.len() / k;
        self.reset(ntok, k);
        let (kp, nb) = (self.nb * BLOCK, self.nb);
        let mut rows: Vec<Row> = h
            .chunks_exact_mut(k)
            .zip(self.q.chunks_exact_mut(kp))
            .zip(self.block_sums.chunks_exact_mut(nb))
            .zip(self.scale.iter_mut().zip(&mut self.sums))
            .map(|(((h, q), block_sums), (scale, sum))| Row {
                h,
                q,
                block_sums,
                scale,
                sum,
            })
            .collect();
        let per = ntok.div_ceil(pool.threads()).max(1);
        pool.for_each_chunk(&mut rows, per, |c, part| {
            for (i, r) in part.iter_mut().enumerate() {
                prep(c * per + i, r.h);
                (*r.scale, *r.sum) = quantize_into(r.h, r.q, r.block_sums);
            }
        });
        for (inv, s) in self.inv_scale.iter_mut().zip(&self.scale) {
            *inv = 1.0 / s;
        }
    }

    /// Room for `ntok` rows of `k` values, the padding zero.
    fn reset(&mut self, ntok: usize, k: usize) {
        let nb = k.div_ceil(BLOCK);
        self.ntok = ntok;
        self.nb = nb;
        self.q.reset(ntok * nb * BLOCK, 0);
        for v in [&mut self.block_sums, &mut self.sums] {
            v.clear();
        }
        self.block_sums.resize(ntok * nb, 0);
        self.sums.resize(ntok, 0);
        for v in [&mut self.scale, &mut self.inv_scale] {
            v.clear();
            v.resize(ntok, 0.0);
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

/// One token's row of activations.
struct Row<'a> {
    h: &'a mut [f32],
    q: &'a mut [i8],
    block_sums: &'a mut [i32],
    scale: &'a mut f32,
    sum: &'a mut i32,
}

/// Quantizes `x` into the front of `q` (the rest stays zero) and sums each 256-block of the
/// result into `block_sums`; returns the scale `s` and the total.
fn quantize_into(x: &[f32], q: &mut [i8], block_sums: &mut [i32]) -> (f32, i32) {
    let (s, _) = quantize_row(&mut q[..x.len()], x);
    let mut total = 0;
    for (bs, blk) in block_sums.iter_mut().zip(q.chunks_exact(BLOCK)) {
        *bs = blk.iter().map(|&v| v as i32).sum();
        total += *bs;
    }
    (s, total)
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
