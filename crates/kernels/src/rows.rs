//! Row-wise training kernels with their hand-derived gradients: RMSNorm, the SiLU gate and
//! cross-entropy. Each replaces a chain of tensor ops (and the intermediates autodiff keeps for
//! them) with one pass forward and one pass back. Plain loops over `f32` slices that the compiler
//! vectorizes; rows are spread over rayon's threads (the pool Burn's flex backend already uses).

use rayon::prelude::*;

use std::mem::MaybeUninit;

use crate::fill::{par_parts_written, par_parts2_written, uninit, written};

/// Rows per parallel task, for row lengths in the hundreds to thousands.
const ROWS_PER_TASK: usize = 16;

/// `e^x` to within 2 ulp for `x` in f32's normal range, written so loops over it vectorize (libm's
/// `expf` is a call per element: 7% of a tiny training step). Range reduction `x = n·ln2 + r`,
/// `|r| ≤ ln2/2`, with ln2 split in two so `r` is exact, then a degree-7 polynomial (Taylor
/// coefficients; the truncation error at |r| = 0.35 is below 2⁻²⁶) and `2ⁿ` built in the exponent
/// bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Cephes' split: LN2_HI has 9 significant bits, so n·LN2_HI is exact for |n| ≤ 128.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Clamped to where 2ⁿ is a normal number: e^-87.3 ≈ 1e-38 stands in for anything smaller (as
    // good as 0 next to the row maxima softmax adds it to), e^88 ≈ 1.7e38 for anything larger.
    let x = x.clamp(-87.3, 88.0);
    // Round to nearest (|x·log2e| < 2²²) by adding 1.5·2²³; the sum's bits minus that constant's
    // are the integer itself, which vectorizes where a saturating `as i32` did not.
    const MAGIC: f32 = 12_582_912.0;
    let shifted = x * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let ni = (shifted.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let bits = ((ni + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// `Σ f(x[i])` in 16 independent lanes, so the loop vectorizes (a single running f32 sum is a
/// serial chain the compiler may not reorder). The order is fixed, so results are reproducible.
#[inline(always)]
pub fn sum_map(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for l in 0..16 {
            acc[l] += f(c[l]);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| f(*v)).sum();
    acc.iter().sum::<f32>() + tail
}

/// `max(x)` (of `f(x)`) in 16 lanes; `-inf` for an empty slice.
#[inline(always)]
pub fn max_map(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for l in 0..16 {
            acc[l] = acc[l].max(f(c[l]));
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, v| m.max(f(*v)));
    acc.iter().fold(tail, |m, v| m.max(*v))
}

crate::multiversion! {
    /// The index of the first largest value of `x`, NaN never chosen (0 if every value is NaN,
    /// or `x` is empty): greedy decoding's choice. Two vector passes, the maximum then its first
    /// place, instead of one scalar loop: with eight sequences decoding together this is on the
    /// engine thread once per sequence and step, over the whole vocabulary.
    pub fn argmax(x: &[f32]) -> usize {
        // `f32::max` passes over NaN, so `m` is the largest number (−∞ if there is none).
        let m = max_map(x, |v| v);
        x.iter().position(|&v| v == m).unwrap_or(0)
    }
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// RMSNorm forward: `y = x / sqrt(mean(x²) + eps) · γ` for each row of `x: [rows, d]`.
/// Returns `y` and each row's `r = 1 / sqrt(mean(x²) + eps)` for the backward pass.
pub fn rms_norm(x: &[f32], gamma: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let rows = x.len() / d;
    let task = d * ROWS_PER_TASK;
    let part = |i: usize, y: &mut [MaybeUninit<f32>], r: &mut [MaybeUninit<f32>]| {
        rms_rows(y, r, &x[i * task..][..y.len()], gamma, eps)
    };
    // SAFETY: `rms_rows` writes every element of `y` and one `r` a row, and a part holds
    // `ROWS_PER_TASK` rows of each.
    unsafe { par_parts2_written((x.len(), task), (rows, ROWS_PER_TASK), part) }
}

/// [`rms_norm`] on the calling thread, into `y`, without the `r` it keeps for training: the
/// inference engine's norm, so it rounds as training does.
pub fn rms_norm_into(y: &mut [f32], x: &[f32], gamma: &[f32], eps: f32) {
    rms_rows(uninit(y), &mut [], x, gamma, eps)
}

crate::multiversion! {
    /// Writes every element of `y` and of `r`, which may be shorter than the rows (the engine
    /// keeps none).
    fn rms_rows(y: &mut [MaybeUninit<f32>], r: &mut [MaybeUninit<f32>], x: &[f32], gamma: &[f32], eps: f32) {
        let d = gamma.len();
        for (i, (y, x)) in y.chunks_mut(d).zip(x.chunks(d)).enumerate() {
            let ms = sum_map(x, |v| v * v) / d as f32;
            // The reference divides by the root; so do we, to round the same way.
            let rms = (ms + eps).sqrt();
            if let Some(r) = r.get_mut(i) {
                r.write(1.0 / rms);
            }
            for ((y, x), g) in y.iter_mut().zip(x).zip(gamma) {
                y.write(x / rms * g);
            }
        }
    }
}

/// RMSNorm backward. With `a = γ ⊙ dy`: `dx = r·a − x · r³ · mean(a ⊙ x)` and
/// `dγ = Σ_rows dy ⊙ x · r`.
pub fn rms_norm_backward(x: &[f32], gamma: &[f32], r: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let task = d * ROWS_PER_TASK;
    let part = |i: usize, dx: &mut [MaybeUninit<f32>]| {
        let (x, dy) = (&x[i * task..][..dx.len()], &dy[i * task..][..dx.len()]);
        rms_rows_backward(dx, x, dy, &r[i * ROWS_PER_TASK..], gamma)
    };
    // SAFETY: `rms_rows_backward` writes every element of its part.
    let (dx, parts) = unsafe { par_parts_written(x.len(), task, part) };
    // Summed serially in part order: a rayon reduction's tree depends on work stealing, and
    // training must be bit-reproducible (resumed runs equal straight ones).
    let dgamma = parts.into_iter().fold(vec![0f32; d], |mut a, b| {
        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
        a
    });
    (dx, dgamma)
}

crate::multiversion! {
    /// One task's rows of the backward: writes every element of `dx` (whole rows), returns this
    /// task's part of `dγ`.
    fn rms_rows_backward(dx: &mut [MaybeUninit<f32>], x: &[f32], dy: &[f32], r: &[f32], gamma: &[f32]) -> Vec<f32> {
        let d = gamma.len();
        let mut dg = vec![0f32; d];
        for (((dx, x), dy), r) in dx.chunks_mut(d).zip(x.chunks(d)).zip(dy.chunks(d)).zip(r) {
            for j in 0..d {
                dg[j] += dy[j] * x[j] * r;
                // γ ⊙ dy, kept in dx for the dot product and the update below.
                dx[j].write(gamma[j] * dy[j]);
            }
            // SAFETY: the loop above wrote all `d` elements of the row.
            let dx = unsafe { written(dx) };
            let c = r * r * r * crate::dot_body(dx, x) / d as f32;
            for j in 0..d {
                dx[j] = r * dx[j] - x[j] * c;
            }
        }
        dg
    }
}

crate::multiversion! {
    fn swiglu_chunk(h: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) {
        for ((h, g), u) in h.iter_mut().zip(g).zip(u) {
            h.write(g * sigmoid(*g) * u);
        }
    }
}

crate::multiversion! {
    fn swiglu_backward_chunk(dg: &mut [MaybeUninit<f32>], du: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32], dh: &[f32]) {
        for i in 0..g.len().min(dg.len()).min(du.len()).min(u.len()).min(dh.len()) {
            let s = sigmoid(g[i]);
            du[i].write(dh[i] * g[i] * s);
            dg[i].write(dh[i] * u[i] * s * (1.0 + g[i] * (1.0 - s)));
        }
    }
}

crate::multiversion! {
    fn relu2_chunk(h: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) {
        for ((h, g), u) in h.iter_mut().zip(g).zip(u) {
            let r = g.max(0.0);
            h.write(r * r * u);
        }
    }
}

crate::multiversion! {
    fn relu2_backward_chunk(dg: &mut [MaybeUninit<f32>], du: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32], dh: &[f32]) {
        for i in 0..g.len().min(dg.len()).min(du.len()).min(u.len()).min(dh.len()) {
            let r = g[i].max(0.0);
            du[i].write(dh[i] * (r * r));
            dg[i].write(dh[i] * u[i] * (2.0 * r));
        }
    }
}

crate::multiversion! {
    /// One row's log-sum-exp.
    fn log_sum_exp(z: &[f32]) -> f32 {
        let max = max_map(z, |v| v);
        max + sum_map(z, |v| exp(v - max)).ln()
    }
}

crate::multiversion! {
    fn softmax_grad_row(dz: &mut [MaybeUninit<f32>], z: &[f32], lse: f32, scale: f32) {
        for (d, z) in dz.iter_mut().zip(z) {
            d.write(exp(z - lse) * scale);
        }
    }
}

/// The gate of a gated feed-forward block: which activation the gate projection goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// `silu(g) ⊙ u` (Llama's SwiGLU).
    Silu,
    /// `relu(g)² ⊙ u` (BitNet b1.58 2B4T).
    Relu2,
}

/// The gate `h = act(g) ⊙ u`, elementwise.
pub fn gate(act: Gate, g: &[f32], u: &[f32]) -> Vec<f32> {
    const C: usize = 1 << 14;
    let part = |i: usize, h: &mut [MaybeUninit<f32>]| {
        gate_chunk(act, h, &g[i * C..][..h.len()], &u[i * C..][..h.len()])
    };
    // SAFETY: `gate_chunk` writes every element of its part.
    unsafe { par_parts_written(g.len(), C, part) }.0
}

/// [`gate`] on the calling thread, into `h`: the inference engine's gate, so it computes what
/// training computes, element for element.
pub fn gate_into(act: Gate, h: &mut [f32], g: &[f32], u: &[f32]) {
    gate_chunk(act, uninit(h), g, u)
}

/// Writes every element of `h` (as long as `g` and `u`).
fn gate_chunk(act: Gate, h: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) {
    match act {
        Gate::Silu => swiglu_chunk(h, g, u),
        Gate::Relu2 => relu2_chunk(h, g, u),
    }
}

/// Its gradients. SiLU: `dg = dh ⊙ u ⊙ σ(g)(1 + g(1 − σ(g)))`, `du = dh ⊙ g σ(g)`. relu²:
/// `dg = dh ⊙ u ⊙ 2·relu(g)`, `du = dh ⊙ relu(g)²`.
pub fn gate_backward(act: Gate, g: &[f32], u: &[f32], dh: &[f32]) -> (Vec<f32>, Vec<f32>) {
    const C: usize = 1 << 14;
    let part = |i: usize, dg: &mut [MaybeUninit<f32>], du: &mut [MaybeUninit<f32>]| {
        let n = dg.len();
        let (g, u, dh) = (&g[i * C..][..n], &u[i * C..][..n], &dh[i * C..][..n]);
        match act {
            Gate::Silu => swiglu_backward_chunk(dg, du, g, u, dh),
            Gate::Relu2 => relu2_backward_chunk(dg, du, g, u, dh),
        }
    };
    // SAFETY: both parts and the three inputs' slices are `n` long, and the kernels write
    // elements `0..n` of `dg` and `du`.
    unsafe { par_parts2_written((g.len(), C), (g.len(), C), part) }
}

/// Mean cross-entropy of `logits: [rows, v]` against `targets`, and each row's log-sum-exp for
/// the backward pass. The sum over rows runs in f64 so a long batch loses nothing to rounding.
pub fn cross_entropy(logits: &[f32], v: usize, targets: &[usize]) -> (f32, Vec<f32>) {
    let rows = targets.len();
    let (total, lse) = nll_sum(logits, v, targets, None);
    ((total / rows.max(1) as f64) as f32, lse)
}

/// Its gradient: `dz = (softmax(z) − onehot(target)) · dloss / rows`.
pub fn cross_entropy_backward(
    logits: &[f32],
    v: usize,
    targets: &[usize],
    lse: &[f32],
    dloss: f32,
) -> Vec<f32> {
    let scale = dloss / targets.len().max(1) as f32;
    nll_backward(logits, v, targets, lse, |_| Some(scale))
}

/// The weighted sum `Σᵢ wᵢ · (logsumexp(zᵢ) − zᵢ[tᵢ])` (a masked response loss: `w` is 1 on
/// scored tokens, 0 elsewhere) and each row's logsumexp. A row of weight 0 is skipped: no
/// exponentials, its logsumexp left 0, and its target never read.
pub fn cross_entropy_weighted(
    logits: &[f32],
    v: usize,
    targets: &[usize],
    w: &[f32],
) -> (f32, Vec<f32>) {
    assert_eq!(w.len(), targets.len(), "one weight a row");
    let (total, lse) = nll_sum(logits, v, targets, Some(w));
    (total as f32, lse)
}

/// Its gradient: `dzᵢ = wᵢ · (softmax(zᵢ) − onehot(tᵢ)) · dloss`; zero on rows of weight 0.
pub fn cross_entropy_weighted_backward(
    logits: &[f32],
    v: usize,
    targets: &[usize],
    w: &[f32],
    lse: &[f32],
    dloss: f32,
) -> Vec<f32> {
    assert_eq!(w.len(), targets.len(), "one weight a row");
    nll_backward(logits, v, targets, lse, |i| {
        (w[i] != 0.0).then(|| w[i] * dloss)
    })
}

/// `Σᵢ wᵢ · nllᵢ` in f64, summed serially in row order so the loss does not depend on how rayon
/// split the rows (`wᵢ = 1` without weights; a row of weight 0 is skipped), and each row's
/// logsumexp.
fn nll_sum(logits: &[f32], v: usize, targets: &[usize], w: Option<&[f32]>) -> (f64, Vec<f32>) {
    let rows = targets.len();
    assert_eq!(logits.len(), rows * v, "logits length");
    let mut lse = vec![0f32; rows];
    let losses: Vec<f64> = lse
        .par_iter_mut()
        .zip(logits.par_chunks(v))
        .zip(targets.par_iter())
        .enumerate()
        .map(|(i, ((lse, z), &t))| {
            let w = w.map_or(1.0, |w| w[i]);
            if w == 0.0 {
                return 0.0;
            }
            *lse = log_sum_exp(z);
            // A target outside the vocabulary has no probability: NaN, which the training step
            // reports as a non-finite loss, rather than a panic inside the backend.
            z.get(t)
                .map_or(f64::NAN, |zt| w as f64 * (*lse - zt) as f64)
        })
        .collect();
    (losses.iter().sum(), lse)
}

/// `dzᵢ = (softmax(zᵢ) − onehot(tᵢ)) · scale(i)`, a row left 0 where `scale` gives `None`.
fn nll_backward(
    logits: &[f32],
    v: usize,
    targets: &[usize],
    lse: &[f32],
    scale: impl Fn(usize) -> Option<f32> + Sync,
) -> Vec<f32> {
    assert_eq!(logits.len(), targets.len() * v, "logits length");
    let row = |i: usize, dz: &mut [MaybeUninit<f32>]| {
        let Some(scale) = scale(i) else {
            dz.fill(MaybeUninit::new(0.0));
            return;
        };
        softmax_grad_row(dz, &logits[i * v..][..v], lse[i], scale);
        // SAFETY: `softmax_grad_row` wrote all `v` elements of the row.
        let dz = unsafe { written(dz) };
        match dz.get_mut(targets[i]) {
            Some(d) => *d -= scale,
            None => dz.fill(f32::NAN),
        }
    };
    // SAFETY: each part is one row of `v` elements, written whole on every path of `row`.
    unsafe { par_parts_written(logits.len(), v, row) }.0
}

#[cfg(test)]
mod argmax_tests {
    /// Against the plain loop (the first strictly larger value wins, NaN skipped), on random rows
    /// with ties, NaNs and infinities at every length up to a few vectors.
    #[test]
    fn argmax_is_the_first_largest_number() {
        let reference = |x: &[f32]| {
            let mut best: Option<usize> = None;
            for (i, &v) in x.iter().enumerate() {
                if !v.is_nan() && best.is_none_or(|b| v > x[b]) {
                    best = Some(i);
                }
            }
            best.unwrap_or(0)
        };
        let mut s = 12345u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u32
        };
        for len in 0..80 {
            for _ in 0..50 {
                let x: Vec<f32> = (0..len)
                    .map(|_| match next() % 16 {
                        0 => f32::NAN,
                        1 => f32::NEG_INFINITY,
                        2 => f32::INFINITY,
                        k => (k % 5) as f32, // few distinct values: many ties
                    })
                    .collect();
                assert_eq!(super::argmax(&x), reference(&x), "{x:?}");
            }
        }
        assert_eq!(super::argmax(&[f32::NAN, f32::NAN]), 0);
        assert_eq!(super::argmax(&[f32::NAN, f32::NEG_INFINITY]), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::lcg;

    /// A target id outside the vocabulary makes the loss and that row's gradient NaN (no panic,
    /// no read past the row); the other rows' gradients are untouched.
    #[test]
    fn an_out_of_range_target_is_nan_not_a_panic() {
        let z = lcg(9, 2 * 5);
        let (loss, lse) = cross_entropy(&z, 5, &[1, 5]);
        assert!(loss.is_nan());
        let dz = cross_entropy_backward(&z, 5, &[1, 5], &lse, 1.0);
        assert!(dz[..5].iter().all(|g| g.is_finite()));
        assert!(dz[5..].iter().all(|g| g.is_nan()));
        let (ok, _) = cross_entropy(&z, 5, &[1, 4]);
        assert!(ok.is_finite());
    }

    /// The weighted loss against its definition in f64, and its gradient against the mean
    /// loss's (weights 1/rows make them one function); weight-0 rows give zero gradient even
    /// with a target outside the vocabulary.
    #[test]
    fn the_weighted_cross_entropy_is_the_masked_sum() {
        let (rows, v) = (6, 37);
        let z: Vec<f32> = lcg(11, rows * v).iter().map(|x| x * 8.0).collect();
        let t = [3, 36, 0, 99, 17, 5];
        let w = [1.0, 0.5, 2.0, 0.0, 1.0, 0.0];
        let (loss, lse) = cross_entropy_weighted(&z, v, &t, &w);
        let mut want = 0f64;
        for r in 0..rows {
            if w[r] == 0.0 {
                continue;
            }
            let row = &z[r * v..(r + 1) * v];
            let lse: f64 = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
            want += w[r] as f64 * (lse - row[t[r]] as f64);
        }
        assert!(
            (loss as f64 - want).abs() <= 1e-5 * want.abs(),
            "{loss} vs {want}"
        );
        let dz = cross_entropy_weighted_backward(&z, v, &t, &w, &lse, 2.0);
        assert!(
            dz[3 * v..4 * v]
                .iter()
                .chain(&dz[5 * v..])
                .all(|&d| d == 0.0)
        );
        for r in [0, 1, 2, 4] {
            let row = &z[r * v..(r + 1) * v];
            let lse: f64 = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
            for j in 0..v {
                let p = (row[j] as f64 - lse).exp() - (j == t[r]) as u8 as f64;
                let want = 2.0 * w[r] as f64 * p;
                let got = dz[r * v + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-5,
                    "row {r} col {j}: {got} vs {want}"
                );
            }
        }
        // Uniform weights 1/rows are the mean loss, to the rounding of the weight.
        let t2 = [3, 36, 0, 1, 17, 5];
        let (mean, lse_mean) = cross_entropy(&z, v, &t2);
        let (sum, _) = cross_entropy_weighted(&z, v, &t2, &[1.0 / rows as f32; 6]);
        assert!((mean - sum).abs() <= 1e-6 * mean.abs());
        let a = cross_entropy_backward(&z, v, &t2, &lse_mean, 1.0);
        let b =
            cross_entropy_weighted_backward(&z, v, &t2, &[1.0 / rows as f32; 6], &lse_mean, 1.0);
        assert_eq!(a, b);
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut x = -87.0f32;
        while x < 87.9 {
            let (a, b) = (exp(x), x.exp());
            assert!(((a - b) / b).abs() < 2.4e-7, "exp({x}) = {a}, libm {b}");
            x += 0.0137;
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1.3e-38);
        assert!(exp(1000.0) > 1e38);
    }

    /// Central differences in f64 of a scalar function of one input element.
    fn numeric(f: &dyn Fn(&[f32]) -> f64, x: &[f32], i: usize) -> f64 {
        let h = 1e-3f32;
        let (mut a, mut b) = (x.to_vec(), x.to_vec());
        a[i] += h;
        b[i] -= h;
        (f(&a) - f(&b)) / (2.0 * h as f64)
    }

    #[test]
    fn rms_norm_by_hand_and_gradients_by_finite_differences() {
        // Row [3, 4]: mean square 12.5, rms √12.5 = 3.5355; γ = [1, 2] → [0.8485, 2.2627].
        let (y, r) = rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0);
        assert!(
            (y[0] - 0.848_528).abs() < 1e-5 && (y[1] - 2.262_742).abs() < 1e-5,
            "{y:?}"
        );
        assert!((r[0] - 0.282_842_7).abs() < 1e-6);

        let (rows, d) = (5, 7);
        let x = lcg(1, rows * d);
        let gamma: Vec<f32> = lcg(2, d).iter().map(|v| 1.0 + v).collect();
        let w = lcg(3, rows * d); // loss = Σ w ⊙ y, so dy = w
        let loss = |x: &[f32], g: &[f32]| -> f64 {
            let (y, _) = rms_norm(x, g, 1e-5);
            y.iter()
                .zip(&w)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        let (_, r) = rms_norm(&x, &gamma, 1e-5);
        let (dx, dg) = rms_norm_backward(&x, &gamma, &r, &w);
        for i in 0..x.len() {
            let n = numeric(&|x| loss(x, &gamma), &x, i);
            assert!((dx[i] as f64 - n).abs() < 2e-3, "dx[{i}] {} vs {n}", dx[i]);
        }
        for j in 0..d {
            let n = numeric(&|g| loss(&x, g), &gamma, j);
            assert!((dg[j] as f64 - n).abs() < 2e-3, "dγ[{j}] {} vs {n}", dg[j]);
        }
    }

    #[test]
    fn gates_by_hand_and_gradients_by_finite_differences() {
        // silu(1) = 1·σ(1) = 0.7310586; times u = 2.
        let h = gate(Gate::Silu, &[1.0, 0.0], &[2.0, 5.0]);
        assert!((h[0] - 1.462_117_2).abs() < 1e-6 && h[1] == 0.0, "{h:?}");
        // relu(1.5)² = 2.25, times 2; relu(-1) = 0.
        assert_eq!(gate(Gate::Relu2, &[1.5, -1.0], &[2.0, 5.0]), [4.5, 0.0]);
        let n = 40;
        let (g, u, w) = (
            lcg(4, n).iter().map(|v| v * 6.0).collect::<Vec<_>>(),
            lcg(5, n),
            lcg(6, n),
        );
        for act in [Gate::Silu, Gate::Relu2] {
            let loss = |g: &[f32], u: &[f32]| -> f64 {
                gate(act, g, u)
                    .iter()
                    .zip(&w)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum()
            };
            let (dg, du) = gate_backward(act, &g, &u, &w);
            for i in 0..n {
                let ng = numeric(&|g| loss(g, &u), &g, i);
                let nu = numeric(&|u| loss(&g, u), &u, i);
                assert!(
                    (dg[i] as f64 - ng).abs() < 2e-3,
                    "{act:?} dg[{i}] {} vs {ng}",
                    dg[i]
                );
                assert!(
                    (du[i] as f64 - nu).abs() < 2e-3,
                    "{act:?} du[{i}] {} vs {nu}",
                    du[i]
                );
            }
        }
    }

    #[test]
    fn cross_entropy_by_hand_and_gradient_by_finite_differences() {
        // Uniform logits over 4 classes: loss ln 4 whatever the target.
        let (l, _) = cross_entropy(&[0.0; 8], 4, &[1, 3]);
        assert!((l - 4f32.ln()).abs() < 1e-6);
        // [0, ln 3] with target 1: p = 3/4, loss -ln(3/4).
        let (l, _) = cross_entropy(&[0.0, 3f32.ln()], 2, &[1]);
        assert!((l + 0.75f32.ln()).abs() < 1e-6, "{l}");

        let (rows, v) = (3, 9);
        let z: Vec<f32> = lcg(7, rows * v).iter().map(|x| x * 4.0).collect();
        let t = [2, 0, 8];
        let (_, lse) = cross_entropy(&z, v, &t);
        let dz = cross_entropy_backward(&z, v, &t, &lse, 1.0);
        for i in 0..z.len() {
            let n = numeric(&|z| cross_entropy(z, v, &t).0 as f64, &z, i);
            assert!((dz[i] as f64 - n).abs() < 1e-3, "dz[{i}] {} vs {n}", dz[i]);
        }
    }
}
