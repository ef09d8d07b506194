//! The training side of the ternary kernels: what a fused BitLinear forward needs.
//!
//! Training fake-quantizes in f32 (`tritium_model::quant`); this module computes the same numbers
//! with integers. Weights become ternary codes packed for many-token products ([`Panels`]), the
//! activations int8 per token, and the product runs on [`panels::product`]:
//!
//! ```text
//! y[t][r] = Σ_j (q_x[t][j] / s[t]) · (q_w[r][j] · g)  =  (Σ_j q_w[r][j]·q_x[t][j]) · g / s[t]
//! ```
//!
//! The integer sum is exact, so the only differences from the float reference are the last-bit
//! rounding of the f32 products and sums there. Rounding follows the reference exactly (division by
//! the scale, ties to even), so every quantized value is the same.

use rayon::prelude::*;

use crate::panels::{self, PAIR, Panels};
use crate::{BLOCK, Isa};

/// Smallest scale denominator (the reference's `quant::EPS`).
pub const EPS: f32 = 1e-5;

/// 1.5·2²³: adding it to `|v| ≤ 2²²` pushes the fraction bits out of the mantissa under the
/// default rounding mode (to nearest, ties to even).
const MAGIC: f32 = 12_582_912.0;

/// `v` rounded half to even, as an integer, for `|v| ≤ 2²²`: `v + MAGIC` lands on an integer
/// (one unit is one ulp in MAGIC's binade; at `v = 2²²` the sum is 2²⁴, whose bits still exceed
/// MAGIC's by exactly 2²²), so its bits minus MAGIC's are the rounded value.
///
/// `f32::round_ties_even` is, without SSE4.1 enabled at compile time, a call to libm's `rintf` per
/// element (10% of a tiny training step in a profile), and Rust's saturating `f32 as i8` became a
/// scalar conversion with NaN checks per element (most of the activation quantizer's time); this
/// integer arithmetic on the bits vectorizes. NaN gives some meaningless value: the callers mark
/// such rows or matrices with a NaN scale instead.
#[inline(always)]
fn round_even_int(v: f32) -> i32 {
    ((v + MAGIC).to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32)
}

/// A weight matrix `[rows, cols]` ternarized with one absmean scale and packed for the kernels.
#[derive(Clone)]
pub struct TernaryMatrix {
    pub rows: usize,
    pub cols: usize,
    /// The codes `q + 1`, packed for many-token products.
    pub panels: Panels,
    /// `g = max(mean|W|, 1e-5)`.
    pub scale: f32,
}

impl std::fmt::Debug for TernaryMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TernaryMatrix({}×{}, g={})",
            self.rows, self.cols, self.scale
        )
    }
}

/// Columns padded to whole blocks.
pub fn padded(cols: usize) -> usize {
    cols.div_ceil(BLOCK) * BLOCK
}

impl TernaryMatrix {
    /// `clamp(round(W / g), -1, 1)` for row-major `w: [rows, cols]`.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> TernaryMatrix {
        assert_eq!(w.len(), rows * cols, "weight length");
        // f64 sum: the mean of millions of values in f32 would drift from the reference's
        // pairwise sum by more than the tie-breaking margin allows.
        // Partial sums collected in order and added serially: rayon's own reduction tree depends
        // on work stealing, and training must be bit-reproducible.
        let parts: Vec<f64> = w
            .par_chunks(1 << 16)
            .map(|c| c.iter().map(|v| v.abs() as f64).sum::<f64>())
            .collect();
        let sum: f64 = parts.iter().sum();
        TernaryMatrix::quantize_with_scale(w, rows, cols, (sum / w.len().max(1) as f64) as f32)
    }

    /// The same with a given `mean|W|` (clamped to `EPS` here), so a caller can match the rounding
    /// of a reference that summed in another order.
    pub fn quantize_with_scale(
        w: &[f32],
        rows: usize,
        cols: usize,
        mean_abs: f32,
    ) -> TernaryMatrix {
        assert_eq!(w.len(), rows * cols, "weight length");
        // NaN weights make a NaN scale, so the products are NaN too (`max` would hide it).
        let scale = if mean_abs.is_nan() {
            f32::NAN
        } else {
            mean_abs.max(EPS)
        };
        let mut panels = Panels::zeros(rows, cols);
        let nq = panels.nq;
        if cols > 0 {
            panels
                .blocks
                .par_chunks_mut(2 * nq)
                .zip(w.par_chunks(PAIR * cols))
                .for_each(|(pair, w)| {
                    // Codes for the pair's rows first (a loop that vectorizes), then packed.
                    let mut codes = vec![1u8; PAIR * nq * panels::RUN];
                    let stride = nq * panels::RUN;
                    for (dst, row) in codes.chunks_mut(stride).zip(w.chunks(cols)) {
                        for (d, v) in dst.iter_mut().zip(row) {
                            // Clamping before rounding gives the same value (the bounds are
                            // integers) and keeps the argument small enough for the fast rounding.
                            let q = round_even_int((v / scale).clamp(-2.0, 2.0)).clamp(-1, 1);
                            *d = (q + 1) as u8;
                        }
                    }
                    Panels::pack_pair(pair, &codes, stride);
                });
        }
        TernaryMatrix {
            rows,
            cols,
            panels,
            scale,
        }
    }

    /// `Wᵀ`, `[cols, rows]`: the same codes and scale, packed for products that contract over
    /// this matrix's rows (the input gradient `dY · W` as int8 × ternary).
    pub fn transposed(&self) -> TernaryMatrix {
        TernaryMatrix {
            rows: self.cols,
            cols: self.rows,
            panels: self.panels.transposed(),
            scale: self.scale,
        }
    }

    /// Row `r`'s ternary values in {-1, 0, 1}.
    pub fn row(&self, r: usize) -> Vec<i8> {
        let mut out = vec![0i8; self.cols];
        self.panels.unpack_row(r, &mut out, [-1, 0, 1]);
        out
    }

    /// The dequantized matrix `q · g`, row-major `[rows, cols]`: what the backward pass multiplies.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        let levels = [-self.scale, 0.0, self.scale];
        if self.cols == 0 {
            return out;
        }
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, dst)| self.panels.unpack_row(r, dst, levels));
        out
    }
}

/// Activations quantized per token: `s = 127 / max(max|x|, 1e-5)`, `q = clamp(round(x·s), -128, 127)`.
#[derive(Clone)]
pub struct QuantizedRows {
    pub rows: usize,
    pub cols: usize,
    /// Row stride of `q`: `cols` padded to whole blocks (the padding is zero).
    pub stride: usize,
    pub q: Vec<i8>,
    /// The per-token scale `s`.
    pub scale: Vec<f32>,
    /// `Σ_j q[t][j]`, which turns the kernels' unsigned-code sums into signed ones.
    pub sum: Vec<i32>,
}

impl std::fmt::Debug for QuantizedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantizedRows({}×{})", self.rows, self.cols)
    }
}

impl QuantizedRows {
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> QuantizedRows {
        assert_eq!(x.len(), rows * cols, "activation length");
        let stride = padded(cols);
        // Rows are the parts below: with no columns there would be none, and no scales.
        assert!(cols > 0 || rows == 0, "activations with no features");
        // A row's padding past `cols` stays zero (the product kernels read it).
        let (q, rows_out) = crate::fill::par_parts(rows * stride, stride, |t, dst| {
            quantize_row(dst, &x[t * cols..][..cols])
        });
        let (scale, sum) = rows_out.into_iter().unzip();
        QuantizedRows {
            rows,
            cols,
            stride,
            q,
            scale,
            sum,
        }
    }

    /// The dequantized activations `q / s`, row-major `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(t, dst)| dequantize_row(dst, &self.q[t * self.stride..], self.scale[t]));
        out
    }
}

crate::multiversion! {
    /// One token: `dst = clamp(round(row · s), -128, 127)`; returns `s` and `Σ dst`. The engine
    /// quantizes its activations with this too, so inference and training round alike.
    pub fn quantize_row(dst: &mut [i8], row: &[f32]) -> (f32, i32) {
        let max = crate::rows::max_map(row, f32::abs).max(0.0);
        // The reference's order of operations: reciprocal, then times 127.
        let s = max.max(EPS).recip() * 127.0;
        let mut acc = 0i32;
        let mut finite = true;
        for (d, v) in dst.iter_mut().zip(row) {
            finite &= v.is_finite();
            let r = round_even_int((v * s).clamp(-128.0, 127.0)) as i8;
            *d = r;
            acc += r as i32;
        }
        // A NaN or ∞ activation makes the scale NaN, so every product of this token is NaN, as
        // in the float reference, rather than some finite value.
        let s = if finite { s } else { f32::NAN };
        (s, acc)
    }
}

crate::multiversion! {
    fn dequantize_row(dst: &mut [f32], q: &[i8], s: f32) {
        for (d, v) in dst.iter_mut().zip(q) {
            *d = *v as f32 / s;
        }
    }
}

/// Tokens per parallel task: their int8 rows (≤ 64 × 8 KiB) stay in L2 while the packed weights
/// stream past them.
const TOKENS_PER_TASK: usize = 64;

/// `y = x_q · W_qᵀ` dequantized: `y[t][r] = (Σ q_w·q_x) · g / s[t]`, row-major `[x.rows, w.rows]`.
pub fn matmul(isa: Isa, x: &QuantizedRows, w: &TernaryMatrix) -> Vec<f32> {
    assert_eq!(x.cols, w.cols, "inner dimensions");
    assert!(x.stride >= w.panels.padded_cols(), "padding");
    let n = w.rows;
    if n == 0 {
        return Vec::new();
    }
    let task = |c: usize, out: &mut [std::mem::MaybeUninit<f32>]| {
        let t0 = c * TOKENS_PER_TASK;
        let tokens = out.len() / n;
        let xs: Vec<&[i8]> = (t0..t0 + tokens)
            .map(|t| &x.q[t * x.stride..(t + 1) * x.stride])
            .collect();
        let factor: Vec<f32> = (t0..t0 + tokens).map(|t| w.scale / x.scale[t]).collect();
        panels::product(isa, &w.panels, &xs, &x.sum[t0..t0 + tokens], &factor, out);
    };
    // SAFETY: `panels::product` stores all `w.rows` outputs of every token of its part.
    unsafe { crate::fill::par_parts_written(x.rows * n, TOKENS_PER_TASK * n, task).0 }
}

/// The straight-through backward of [`matmul`] for `dy: [x.rows, w.rows]`:
/// `dX = dY · (q_w·g)` (when `want_dx`) and `dW = dYᵀ · (q_x / s)` (when `want_dw`), as
/// [`crate::dense::linear_backward`] of the dequantized operands. In bf16 the operands go
/// from their codes straight into the tile layout (the same bits as rounding the dequantized f32).
/// With [`Precision::Int8`](crate::dense::Precision) dX is [`backward_dx_int8`] on `isa`.
pub fn backward(
    p: crate::dense::Precision,
    isa: Isa,
    dy: &[f32],
    x: &QuantizedRows,
    w: &TernaryMatrix,
    want_dx: bool,
    want_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (m, n, k) = (x.rows, w.rows, w.cols);
    assert_eq!(dy.len(), m * n, "output gradient length");
    if p.int8_input_gradients() {
        return rayon::join(
            || want_dx.then(|| backward_dx_int8(isa, dy, m, w)),
            || want_dw.then(|| backward_dw(p, dy, x, n)),
        );
    }
    #[cfg(target_arch = "x86_64")]
    if p.effective() == crate::dense::Precision::Bf16 {
        let alone = !(want_dx && want_dw);
        return rayon::join(
            || want_dx.then(|| backward_dx_bf16(dy, m, w, alone)),
            || want_dw.then(|| backward_dw(p, dy, x, n)),
        );
    }
    let (wd, xd) = rayon::join(
        || want_dx.then(|| w.dequantize()),
        || want_dw.then(|| x.dequantize()),
    );
    crate::dense::linear_backward(p, dy, xd.as_deref(), wd.as_deref(), m, n, k)
}

/// `dW = dYᵀ · (q_x / s)` alone, `[n, x.cols]`, in the float products' arithmetic: in bf16 the
/// activations go from their int8 codes straight into the tile layout.
fn backward_dw(p: crate::dense::Precision, dy: &[f32], x: &QuantizedRows, n: usize) -> Vec<f32> {
    let (m, k) = (x.rows, x.cols);
    #[cfg(target_arch = "x86_64")]
    if p.effective() == crate::dense::Precision::Bf16 {
        use crate::bf16;
        // B = q_x / s: row t is token t.
        let b = bf16::pack_rows(m, k, |t, dst| {
            bf16::int8_over_scale(&x.q[t * x.stride..][..k], x.scale[t], dst)
        });
        return bf16::product_packed(n, crate::dense::Operand::t(dy), &b, false);
    }
    let xd = x.dequantize();
    let (_, dw) = crate::dense::linear_backward(p, dy, Some(&xd), None, m, n, k);
    dw.expect("asked for dW")
}

/// `dX = dY · (q_w·g)` alone, for a frozen (packed) layer: the input's gradient only. Under
/// [`Precision::Int8`](crate::dense::Precision) too it runs in the float products' arithmetic:
/// the int8 form needs `Wᵀ` packed, which for a frozen 2B base would be rebuilt every step
/// (a second copy kept for the run would double the base's memory).
pub fn backward_dx(
    p: crate::dense::Precision,
    dy: &[f32],
    m: usize,
    w: &TernaryMatrix,
) -> Vec<f32> {
    assert_eq!(dy.len(), m * w.rows, "output gradient length");
    #[cfg(target_arch = "x86_64")]
    if p.effective() == crate::dense::Precision::Bf16 {
        return backward_dx_bf16(dy, m, w, true);
    }
    let wd = w.dequantize();
    let (dx, _) = crate::dense::linear_backward(p, dy, None, Some(&wd), m, w.rows, w.cols);
    dx.expect("asked for dX")
}

/// `dY · (q_w·g)` with `dY` quantized per token like the forward's activations
/// (`s = 127 / max|dY_t|`): the forward's integer product against `Wᵀ`,
/// `dX[t][j] = (Σ_r q_dy[t][r]·q_w[r][j]) · g / s[t]`. Exact but for that rounding of `dY`: each
/// element moves by at most `max|dY_t| / 254`, so `|ΔdX[t][j]| ≤ rows · g · max|dY_t| / 254`.
/// A token whose gradient holds a NaN or ∞ gets a NaN row, as the float product would.
pub fn backward_dx_int8(isa: Isa, dy: &[f32], m: usize, w: &TernaryMatrix) -> Vec<f32> {
    let (q, wt) = rayon::join(|| QuantizedRows::quantize(dy, m, w.rows), || w.transposed());
    matmul(isa, &q, &wt)
}

/// `dY · (q_w·g)` in bf16, W's codes unpacked straight to bf16 `±g` (exact: `bf16(±g) = ±bf16(g)`).
#[cfg(target_arch = "x86_64")]
fn backward_dx_bf16(dy: &[f32], m: usize, w: &TernaryMatrix, split: bool) -> Vec<f32> {
    use crate::bf16;
    let g = bf16::to_bf16(w.scale);
    let b = bf16::pack_ternary(&w.panels, g);
    bf16::product_packed(m, crate::dense::Operand::n(dy), &b, split)
}

/// The same product in plain integer loops: the reference the kernels are tested against.
#[cfg(test)]
fn matmul_reference(x: &QuantizedRows, w: &TernaryMatrix) -> Vec<f32> {
    let n = w.rows;
    let mut y = vec![0f32; x.rows * n];
    for r in 0..n {
        let wr = w.row(r);
        for t in 0..x.rows {
            let q = &x.q[t * x.stride..t * x.stride + x.cols];
            let dot: i32 = q.iter().zip(&wr).map(|(a, b)| *a as i32 * *b as i32).sum();
            y[t * n + r] = dot as f32 * (w.scale / x.scale[t]);
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::lcg;

    #[test]
    fn fast_rounding_is_ties_to_even() {
        for v in [
            0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -127.5, 0.49999997, 1.0000001, -3.7,
        ] {
            assert_eq!(round_even_int(v) as f32, v.round_ties_even(), "{v}");
        }
        // Every tie in the range the quantizers use (they clamp to ±128 before rounding).
        let mut v = -300.0f32;
        while v < 300.0 {
            assert_eq!(round_even_int(v) as f32, v.round_ties_even(), "{v}");
            v += 0.125;
        }
        for v in lcg(3, 10_000) {
            let v = v * 130.0;
            assert_eq!(round_even_int(v) as f32, v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn weights_by_hand() {
        // W = [1, -1, 3, -3]: g = 2, W/g = [.5, -.5, 1.5, -1.5] → ties to even [0, 0, 2, -2] → clamp.
        let w = TernaryMatrix::quantize(&[1.0, -1.0, 3.0, -3.0], 2, 2);
        assert_eq!(w.scale, 2.0);
        assert_eq!(w.row(0), vec![0, 0]);
        assert_eq!(w.row(1), vec![1, -1]);
        assert_eq!(w.dequantize(), vec![0.0, 0.0, 2.0, -2.0]);
    }

    #[test]
    fn activations_by_hand() {
        // Row 0: max 127 → s = 1: [0.5, 1.5, -2.5, 127] → [0, 2, -2, 127]. Row 1: s = 0.5.
        let x = QuantizedRows::quantize(&[0.5, 1.5, -2.5, 127.0, 2.0, -1.0, 6.0, -254.0], 2, 4);
        assert_eq!(&x.q[..4], &[0, 2, -2, 127]);
        assert_eq!(&x.q[x.stride..x.stride + 4], &[1, 0, 3, -127]);
        assert_eq!(x.sum, vec![127, -123]);
        assert_eq!(
            x.dequantize(),
            vec![0.0, 2.0, -2.0, 127.0, 2.0, 0.0, 6.0, -254.0]
        );
        // An all-zero row stays finite and zero.
        let z = QuantizedRows::quantize(&[0.0; 3], 1, 3);
        assert_eq!(z.dequantize(), vec![0.0; 3]);
    }

    #[test]
    fn every_isa_equals_the_integer_reference_on_odd_shapes() {
        for (m, k, n) in [(1, 5, 3), (17, 300, 9), (70, 768, 33), (130, 1000, 2)] {
            let w = TernaryMatrix::quantize(&lcg(1, n * k), n, k);
            let x = QuantizedRows::quantize(&lcg(2, m * k), m, k);
            let want = matmul_reference(&x, &w);
            for isa in Isa::available() {
                // Integer sums are exact and the final scaling is one multiply: bit-identical.
                assert_eq!(matmul(isa, &x, &w), want, "{} at {m}×{k}×{n}", isa.name());
            }
        }
    }

    #[test]
    fn non_finite_inputs_give_non_finite_products() {
        let (m, k, n) = (3, 20, 5);
        let w = TernaryMatrix::quantize(&lcg(1, n * k), n, k);
        let mut xv = lcg(2, m * k);
        xv[3] = f32::NAN;
        xv[k + 7] = f32::INFINITY;
        let x = QuantizedRows::quantize(&xv, m, k);
        for isa in Isa::available() {
            let y = matmul(isa, &x, &w);
            assert!(y[..2 * n].iter().all(|v| v.is_nan()), "{}", isa.name());
            assert!(y[2 * n..].iter().all(|v| v.is_finite()), "{}", isa.name());
        }
        let mut wv = lcg(1, n * k);
        wv[0] = f32::NAN;
        let w = TernaryMatrix::quantize(&wv, n, k);
        let x = QuantizedRows::quantize(&lcg(2, m * k), m, k);
        assert!(matmul(Isa::detect(), &x, &w).iter().all(|v| v.is_nan()));
    }

    #[test]
    fn bf16_backward_from_codes_equals_the_product_of_the_dequantized_operands() {
        use crate::dense::{Precision, linear_backward};
        if Precision::Bf16.effective() != Precision::Bf16 {
            eprintln!("skipped: {}", Precision::Bf16.describe());
            return;
        }
        for (m, n, k) in [(3, 5, 7), (40, 33, 300), (64, 64, 256)] {
            let x = QuantizedRows::quantize(&lcg(1, m * k), m, k);
            let w = TernaryMatrix::quantize(&lcg(2, n * k), n, k);
            let dy = lcg(3, m * n);
            let (wd, xd) = (w.dequantize(), x.dequantize());
            let (dx, dw) = linear_backward(Precision::Bf16, &dy, Some(&xd), Some(&wd), m, n, k);
            let isa = Isa::detect();
            let (got_dx, got_dw) = backward(Precision::Bf16, isa, &dy, &x, &w, true, true);
            assert_eq!(got_dx, dx, "dX {m}×{n}×{k}");
            assert_eq!(got_dw, dw, "dW {m}×{n}×{k}");
            assert_eq!(Some(backward_dx(Precision::Bf16, &dy, m, &w)), dx);
        }
    }

    #[test]
    fn transposed_swaps_rows_and_columns_on_odd_shapes() {
        for (n, k) in [(1, 1), (3, 70), (33, 17), (64, 48), (100, 300)] {
            let w = TernaryMatrix::quantize(&lcg(4, n * k), n, k);
            let t = w.transposed();
            assert_eq!((t.rows, t.cols, t.scale), (k, n, w.scale));
            let rows: Vec<Vec<i8>> = (0..n).map(|r| w.row(r)).collect();
            for c in 0..k {
                let want: Vec<i8> = rows.iter().map(|r| r[c]).collect();
                assert_eq!(t.row(c), want, "column {c} of {n}×{k}");
            }
            // Padding stays weight 0: the transpose of the transpose packs the same blocks.
            assert_eq!(t.transposed().panels.blocks, w.panels.blocks, "{n}×{k}");
        }
    }

    /// Int8 input gradients against plain integer loops over W's own rows (no transpose): the
    /// quantized dY (the forward's quantizer, tested above) times the codes, then `g / s`, to the
    /// bit on every ISA; dW is the float path's. And against f32: within the rounding bound of
    /// dY (`n · g · max|dY_t| / 254` an element), and not equal (the int8 path ran).
    #[test]
    fn int8_input_gradients_equal_their_integer_reference_on_every_isa() {
        use crate::dense::Precision;
        for (m, n, k) in [(1, 3, 5), (17, 40, 33), (70, 100, 64), (130, 33, 300)] {
            let x = QuantizedRows::quantize(&lcg(1, m * k), m, k);
            let w = TernaryMatrix::quantize(&lcg(2, n * k), n, k);
            let dy: Vec<f32> = lcg(3, m * n).iter().map(|v| v * 1e-3).collect();
            let q = QuantizedRows::quantize(&dy, m, n);
            let rows: Vec<Vec<i8>> = (0..n).map(|r| w.row(r)).collect();
            let mut want = vec![0f32; m * k];
            for t in 0..m {
                for j in 0..k {
                    let dot: i32 = (0..n)
                        .map(|r| q.q[t * q.stride + r] as i32 * rows[r][j] as i32)
                        .sum();
                    want[t * k + j] = dot as f32 * (w.scale / q.scale[t]);
                }
            }
            let float = Precision::Int8.effective();
            let (_, float_dw) = backward(float, Isa::Scalar, &dy, &x, &w, false, true);
            for isa in Isa::available() {
                let at = format!("{} at {m}×{n}×{k}", isa.name());
                let (dx, dw) = backward(Precision::Int8, isa, &dy, &x, &w, true, true);
                assert_eq!(dx.as_ref(), Some(&want), "dX {at}");
                assert_eq!(dw, float_dw, "dW {at}");
            }
            let (exact, _) = backward(Precision::F32, Isa::Scalar, &dy, &x, &w, true, false);
            let exact = exact.unwrap();
            for t in 0..m {
                let max = dy[t * n..][..n].iter().fold(0f32, |a, v| a.max(v.abs()));
                let bound = n as f32 * w.scale * max / 254.0 * 1.001 + 1e-9;
                for j in 0..k {
                    let d = (want[t * k + j] - exact[t * k + j]).abs();
                    assert!(
                        d <= bound,
                        "dX[{t}][{j}] off by {d} > {bound} at {m}×{n}×{k}"
                    );
                }
            }
            assert_ne!(want, exact, "{m}×{n}×{k}: the int8 path changed nothing");
        }
    }
}
