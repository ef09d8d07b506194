//! f32 matrix products on the `gemm` crate (flex's own GEMM), scheduled for two cores.
//!
//! Letting gemm split one product across both threads spent much of a training step
//! synchronising (measured on tiny shapes: a BitLinear backward with its dX and dW side by side,
//! one single-threaded GEMM per core, made the whole step 25-33% faster). So independent products
//! run side by side, and a lone product is cut in two halves by output rows.

use gemm::{Parallelism, gemm};

/// The arithmetic of a training step's matrix products (the BitLinear backward and the tied head),
/// as PyTorch's autocast chooses it: `Bf16` rounds both operands to bf16 and accumulates in f32
/// (AMX tiles or AVX512-BF16, [`crate::bf16`]); `F32` is exact f32 throughout. `Int8` goes one
/// step past autocast, as SwitchBack (Wortsman et al., 2023) does: each BitLinear's input
/// gradient `dY · W` runs as int8 × ternary on the forward's integer kernels, `dY` quantized per
/// token as the forward quantizes activations; the other products are `Bf16`'s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    Int8,
}

impl Precision {
    /// The arithmetic the float products (all but `Int8`'s input gradients) run in on this CPU:
    /// bf16 needs AMX-BF16 or AVX512-BF16; elsewhere they fall back to f32.
    pub fn effective(self) -> Precision {
        match self {
            Precision::Bf16 | Precision::Int8 if !matches!(bf16_unit(), Bf16Unit::Neither) => {
                Precision::Bf16
            }
            _ => Precision::F32,
        }
    }

    /// Whether BitLinear input gradients run as int8 × ternary (on any CPU: the integer kernels
    /// have a scalar form).
    pub fn int8_input_gradients(self) -> bool {
        self == Precision::Int8
    }

    /// The GEMM path that runs, in words (for reports).
    pub fn describe(self) -> &'static str {
        use Bf16Unit::*;
        match (self, bf16_unit()) {
            (Precision::F32, _) => "f32",
            (Precision::Bf16, Amx) => "bf16 on AMX tiles, f32 accumulation",
            (Precision::Bf16, Avx512) => "bf16 with AVX512-BF16, f32 accumulation",
            (Precision::Bf16, _) => {
                "f32 (bf16 asked, but this CPU has neither AMX-BF16 nor AVX512-BF16)"
            }
            (Precision::Int8, Amx) => {
                "BitLinear input gradients int8 × ternary; the rest bf16 on AMX tiles, f32 accumulation"
            }
            (Precision::Int8, Avx512) => {
                "BitLinear input gradients int8 × ternary; the rest bf16 with AVX512-BF16, f32 accumulation"
            }
            (Precision::Int8, _) => {
                "BitLinear input gradients int8 × ternary; the rest f32 (no AMX-BF16 or AVX512-BF16 here)"
            }
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    /// The names `precision` takes in a config (serde's), for command-line flags.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "int8" => Ok(Precision::Int8),
            _ => Err(format!("{s:?}: f32, bf16 or int8")),
        }
    }
}

/// The unit that runs bf16 products on this CPU, for [`Precision::describe`].
enum Bf16Unit {
    Amx,
    Avx512,
    Neither,
}

fn bf16_unit() -> Bf16Unit {
    #[cfg(target_arch = "x86_64")]
    return match crate::bf16::path() {
        Some(crate::bf16::Path::Amx) => Bf16Unit::Amx,
        Some(crate::bf16::Path::Avx512Bf16) => Bf16Unit::Avx512,
        None => Bf16Unit::Neither,
    };
    #[cfg(not(target_arch = "x86_64"))]
    Bf16Unit::Neither
}

/// A row-major matrix operand, or the transpose of one.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    /// Read as the transpose of the stored row-major matrix.
    pub t: bool,
}

impl<'a> Operand<'a> {
    pub fn n(data: &'a [f32]) -> Self {
        Operand { data, t: false }
    }
    pub fn t(data: &'a [f32]) -> Self {
        Operand { data, t: true }
    }
    /// (row stride, column stride) of the `rows × cols` matrix this operand reads as.
    fn strides(&self, rows: usize, cols: usize) -> (isize, isize) {
        if self.t {
            (1, rows as isize)
        } else {
            (cols as isize, 1)
        }
    }
}

/// `out = a · b`, `a` read as `m × k`, `b` as `k × n`, row-major `out: [m, n]`, on this thread.
pub fn gemm_into(out: &mut [f32], m: usize, n: usize, k: usize, a: Operand, b: Operand) {
    assert_eq!(out.len(), crate::elems(&[m, n]), "gemm output length");
    // SAFETY: `out` holds m·n elements, is exclusively borrowed, and cannot overlap the inputs.
    unsafe { gemm_raw(out.as_mut_ptr(), m, n, k, a, b) }
}

/// `a · b` into a new `[m, n]` vector that gemm writes without it being zeroed first.
fn product(p: Precision, m: usize, n: usize, k: usize, a: Operand, b: Operand) -> Vec<f32> {
    let mn = crate::elems(&[m, n]);
    if k == 0 {
        return vec![0.0; mn];
    }
    #[cfg(target_arch = "x86_64")]
    if p.effective() == Precision::Bf16 {
        return crate::bf16::product_packed(m, a, &crate::bf16::pack(b, k, n), false);
    }
    let _ = p;
    let mut out = crate::fill::unwritten(mn);
    // SAFETY: the capacity is m·n elements, owned here and disjoint from the inputs. With k ≥ 1
    // and `read_dst` false gemm stores every element of the m×n output, so all m·n are
    // initialized when `set_len` runs.
    unsafe {
        gemm_raw(out.as_mut_ptr(), m, n, k, a, b);
        out.set_len(mn);
    }
    out
}

/// # Safety
/// `out` is valid for writes of `m·n` f32 and overlaps neither operand.
unsafe fn gemm_raw(out: *mut f32, m: usize, n: usize, k: usize, a: Operand, b: Operand) {
    assert!(
        a.data.len() == crate::elems(&[m, k]) && b.data.len() == crate::elems(&[k, n]),
        "gemm operand lengths"
    );
    let (a_rs, a_cs) = a.strides(m, k);
    let (b_rs, b_cs) = b.strides(k, n);
    // SAFETY: each operand holds exactly rows·cols elements and its strides address a row-major
    // matrix of those sizes or its transpose, so every element read is in bounds; `out` is
    // m×n row-major and writable (the caller's contract), and `read_dst` is false, so its
    // previous contents are never read.
    unsafe {
        gemm(
            m,
            n,
            k,
            out,
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    };
}

/// `a · b` as a new `[m, n]` matrix, the output rows split in two halves computed side by side.
pub fn matmul(p: Precision, m: usize, n: usize, k: usize, a: Operand, b: Operand) -> Vec<f32> {
    if a.t || m < 2 {
        // Halving rows of a transposed operand would need strided sub-slices; not needed here.
        return product(p, m, n, k, a, b);
    }
    #[cfg(target_arch = "x86_64")]
    if p.effective() == Precision::Bf16 {
        return crate::bf16::product_packed(m, a, &crate::bf16::pack(b, k, n), true);
    }
    let mut out = vec![0f32; m * n];
    let half = m / 2;
    let (top, bottom) = out.split_at_mut(half * n);
    let (a_top, a_bottom) = a.data.split_at(half * k);
    rayon::join(
        || gemm_into(top, half, n, k, Operand::n(a_top), b),
        || gemm_into(bottom, m - half, n, k, Operand::n(a_bottom), b),
    );
    out
}

/// The backward of `y = x · wᵀ` (`x: [m, k]`, `w: [n, k]`, `dy: [m, n]`): `dX = dY · W` when `w`
/// is given and `dW = dYᵀ · X` when `x` is given, the two side by side.
pub fn linear_backward(
    p: Precision,
    dy: &[f32],
    x: Option<&[f32]>,
    w: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let dx = || w.map(|w| product(p, m, k, n, Operand::n(dy), Operand::n(w)));
    let dw = || x.map(|x| product(p, n, k, m, Operand::t(dy), Operand::n(x)));
    match (x.is_some(), w.is_some()) {
        (true, true) => rayon::join(dx, dw),
        // One product alone: split it instead.
        (false, true) => (
            Some(matmul(p, m, k, n, Operand::n(dy), Operand::n(w.unwrap()))),
            None,
        ),
        (true, false) => (None, dw()),
        (false, false) => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::lcg;

    /// Plain triple loop in f64.
    fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: impl Fn(usize, usize) -> f32,
        b: impl Fn(usize, usize) -> f32,
    ) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|l| a(i, l) as f64 * b(l, j) as f64).sum();
            }
        }
        out
    }

    fn close(a: &[f32], b: &[f64]) {
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() < 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn products_and_the_linear_backward_equal_loops() {
        let (m, n, k) = (7, 5, 3);
        let (x, w, dy) = (lcg(1, m * k), lcg(2, n * k), lcg(3, m * n));
        // y = x · wᵀ
        let y = matmul(Precision::F32, m, n, k, Operand::n(&x), Operand::t(&w));
        close(
            &y,
            &reference(m, n, k, |i, l| x[i * k + l], |l, j| w[j * k + l]),
        );
        let (dx, dw) = linear_backward(Precision::F32, &dy, Some(&x), Some(&w), m, n, k);
        close(
            &dx.unwrap(),
            &reference(m, k, n, |i, j| dy[i * n + j], |j, l| w[j * k + l]),
        );
        close(
            &dw.unwrap(),
            &reference(n, k, m, |j, i| dy[i * n + j], |i, l| x[i * k + l]),
        );
        // Only one of the two wanted.
        let (dx, dw) = linear_backward(Precision::F32, &dy, None, Some(&w), m, n, k);
        assert!(dw.is_none());
        close(
            &dx.unwrap(),
            &reference(m, k, n, |i, j| dy[i * n + j], |j, l| w[j * k + l]),
        );
    }
}
