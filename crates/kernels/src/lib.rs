//! The hot loops: ternary × int8 dot products and the f16/f32 LM-head dot products.
//!
//! Every kernel exists as a scalar reference (`scalar.rs`) and as SIMD versions (`x86.rs`: AVX2 and
//! AVX-512 VNNI; `neon.rs`: aarch64). The ternary kernels accumulate in integers, so the SIMD ones
//! equal the reference exactly by construction; the float kernels fix one summation order (16
//! interleaved lanes, fused multiply-add, then a pairwise tree) that the scalar reference spells out,
//! so they too are equal bit for bit. Tests compare every variant the CPU can run.
//!
//! Packed ternary layout (ours, built at load time from TQ2_0, TQ1_0 or I2_S): each row is padded to
//! a multiple of 256 weights and stored as 64-byte blocks; byte `j` of a block holds the 2-bit codes
//! `t = q + 1` of elements `j`, `64 + j`, `128 + j`, `192 + j` in bits 0–1, 2–3, 4–5, 6–7. A shift by
//! `2l` and a mask therefore give 64 consecutive codes, matched by 64 consecutive activations (or
//! two runs of 32 for AVX2) with no shuffles. `Σ q·x = Σ t·x − Σ x`; the code is unsigned and the
//! activation signed, which is exactly what `vpdpbusd` / `vpmaddubsw` multiply.
//!
//! Float rows (the LM head and embedding, [`FloatRows`]) go in groups of four rows interleaved by
//! 16 values ([`float_index`]), so the four rows a decode tile runs together are one stream.

// Kernels index with plain loops on purpose: the layouts are defined by index arithmetic, and
// iterator adaptors get instantiated outside `target_feature` functions, losing the wide vectors.
#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "aarch64")]
pub mod neon;

/// Defines `fn $name` whose body is compiled twice: as written (the baseline target), and inside a
/// `#[target_feature]` function for x86-64-v4 (AVX-512), chosen at run time. The row kernels are
/// plain loops written to vectorize; without this they would only ever use SSE2, since the crate is
/// built for the baseline CPU.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi2")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? {
                    inner($($arg),*)
                }
                if $crate::has_x86_v4() {
                    // SAFETY: `has_x86_v4` checked that the CPU supports every enabled feature.
                    return unsafe { v4($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Whether this CPU runs the AVX-512 (x86-64-v4) versions of the row kernels. Decided once per
/// process, because the answer is the CPU's and the row kernels give the same bits either way;
/// `TRITIUM_ISA=scalar|avx2` (read here, once) turns them off to compare.
#[cfg(target_arch = "x86_64")]
pub fn has_x86_v4() -> bool {
    use std::arch::is_x86_feature_detected as has;
    static V4: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V4.get_or_init(|| {
        std::env::var("TRITIUM_ISA").map_or(true, |v| v == "avx512")
            && has!("avx512f")
            && has!("avx512bw")
            && has!("avx512dq")
            && has!("avx512vl")
            && has!("avx2")
            && has!("fma")
            && has!("bmi2")
    })
}

pub mod attention;
#[cfg(target_arch = "x86_64")]
pub mod bf16;
pub mod bitlinear;
pub mod dense;
pub mod fill;
pub mod optim;
pub mod panels;
pub mod pool;
pub mod rows;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

#[cfg(test)]
mod trickle_tests {
    use super::Trickle;

    /// A trickle walks both ranges a line at a time, the first then the second, and stops at
    /// their ends (however many lines are asked for).
    #[test]
    fn a_trickle_counts_down_the_lines_of_both_ranges() {
        let (a, b) = (vec![0u8; 130], vec![0f32; 40]); // 3 lines (130 B), 3 lines (160 B)
        let mut t = Trickle::of(&a, &b);
        assert_eq!(t.lines(), 6);
        t.fetch(2);
        assert_eq!(t.lines(), 4);
        t.fetch(2);
        assert_eq!(
            t.lines(),
            2,
            "the first range's last line, then one of the second's"
        );
        t.fetch(10);
        assert_eq!(t.lines(), 0);
        assert_eq!(Trickle::default().lines(), 0);
        let mut none = Trickle::default();
        none.fetch(3);
        assert_eq!(none.lines(), 0);
    }
}

#[cfg(test)]
mod aligned_tests {
    use super::Aligned;

    #[test]
    fn aligned_buffers_start_on_a_cache_line_and_hold_what_was_put() {
        let mut a = Aligned::filled(5, 7i8);
        assert_eq!(&a[..], &[7; 5]);
        assert_eq!(a.as_ptr() as usize % 64, 0);
        for len in [0, 1, 63, 1000] {
            a.reset(len, -1);
            assert_eq!(a.len(), len);
            assert!(a.iter().all(|&v| v == -1));
            assert_eq!(a.as_ptr() as usize % 64, 0, "length {len}");
        }
        let mut f = Aligned::filled(3, 0f32);
        f[2] = 1.5;
        assert_eq!(&f[..], &[0.0, 0.0, 1.5]);
        assert_eq!(f.as_ptr() as usize % 64, 0);
    }
}

#[cfg(test)]
mod float_layout_tests {
    use super::*;

    #[test]
    fn grouped_rows_put_each_rows_sixteen_values_beside_the_groups_others() {
        // Five rows 32 wide: one full group and one padded to four rows. Row r, value j holds
        // 100r + j, so every slot names where it came from.
        let (rows, d) = (5, 32);
        let mut v: Vec<f32> = (0..rows * d)
            .map(|i| (100 * (i / d) + i % d) as f32)
            .collect();
        v.resize(float_rows_len(rows, d), -1.0);
        assert_eq!(v.len(), 8 * d);
        group_rows(&mut v, d);
        // Group 0: values 0–15 of rows 0, 1, 2, 3, then values 16–31 of rows 0, 1, 2, 3.
        assert_eq!(&v[..3], &[0.0, 1.0, 2.0]);
        assert_eq!(v[16], 100.0);
        assert_eq!(v[63], 315.0);
        assert_eq!(v[64], 16.0);
        assert_eq!(v[81], 117.0);
        assert_eq!(v[127], 331.0);
        // Group 1 starts at 4·32: row 4's first sixteen values, then the three padding rows.
        assert_eq!(v[128], 400.0);
        assert_eq!(v[144], -1.0); // the padding, as resized
        assert_eq!(v[128 + 64 + 15], 431.0);
        assert_eq!(float_index(d, 1, 17), 81);
        assert_eq!(float_index(d, 4, 31), 128 + 64 + 15);
        let mut row = vec![0f32; d];
        for r in 0..rows {
            FloatRows::F32(&v).row_into(d, r, &mut row);
            let want: Vec<f32> = (0..d).map(|j| (100 * r + j) as f32).collect();
            assert_eq!(row, want, "row {r}");
        }
    }

    #[test]
    fn rows_not_a_multiple_of_sixteen_wide_stay_row_major() {
        let (rows, d) = (3, 24);
        let plain: Vec<u16> = (0..(rows * d) as u16).collect();
        let mut v = plain.clone();
        assert_eq!(float_rows_len(rows, d), rows * d);
        group_rows(&mut v, d);
        assert_eq!(v, plain);
        assert_eq!(float_index(d, 2, 5), 53);
    }
}

/// Shapes whose sizes overflow `usize`: with wrapping arithmetic each one's length checks would
/// pass and its kernel would read or write far outside the slices given (found in review). Each
/// must stop at a check instead.
#[cfg(test)]
mod overflowing_shapes {
    use super::*;

    #[test]
    #[should_panic(expected = "overflows")]
    fn ternary_matvec_blocks_per_row() {
        // 2 · 2^63 wraps to 0 = w.len(), and 2^63 · 256 to 0.
        ternary_matvec(Isa::detect(), &[], 1 << 63, &[], &mut [0; 2]);
    }

    #[test]
    #[should_panic(expected = "overflows")]
    fn float_dots_rows() {
        // rows.end · 48 wraps to 32: the first load would be 64 bytes before `w`.
        let rows = 0x0555_5555_5555_5555..0x0555_5555_5555_5556;
        let w = [0f32; 32];
        let x = [0f32; 48];
        float_dots(
            Isa::detect(),
            FloatRows::F32(&w),
            48,
            rows,
            &[&x],
            &mut [0.0],
        );
    }

    #[test]
    #[should_panic(expected = "overflows")]
    fn gemm_sizes() {
        let n = 1 << 32; // n · n wraps to 0, the length of every operand given
        dense::gemm_into(
            &mut [],
            n,
            n,
            n,
            dense::Operand::n(&[]),
            dense::Operand::n(&[]),
        );
    }

    #[test]
    #[should_panic(expected = "overflows")]
    fn panel_pairs() {
        let w = panels::Panels::zeros(usize::MAX, 0);
        let pairs = (1 << 59) - 1..1 << 59; // 32 · 2^59 wraps to 0
        let mut out = [std::mem::MaybeUninit::new(0f32); 1];
        panels::product_pairs(
            Isa::detect(),
            &w,
            pairs,
            &[&[]],
            &[0],
            &[1.0],
            &mut [&mut out],
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    #[should_panic(expected = "overflows")]
    fn bf16_pack() {
        // 32 · (2^60 + 32) wraps to 1024.
        bf16::pack(dense::Operand::n(&[0.0; 1024]), 32, (1 << 60) + 32);
    }
}

#[cfg(test)]
mod testing {
    /// Deterministic values in [-1, 1) without a random-number crate.
    pub fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
            })
            .collect()
    }
}

/// A buffer whose contents start on a 64-byte boundary (one cache line, one AVX-512 load), so that
/// rows whose length is a multiple of 64 bytes are loaded without any load straddling two lines:
/// unaligned activation rows cost the batched LM head a quarter of its speed (measured with
/// `--example head`).
#[derive(Debug, Default, Clone)]
pub struct Aligned<T> {
    buf: Vec<T>,
    off: usize,
    len: usize,
}

impl<T: Copy> Aligned<T> {
    /// `len` copies of `v`.
    pub fn filled(len: usize, v: T) -> Self {
        let mut a = Aligned {
            buf: Vec::new(),
            off: 0,
            len: 0,
        };
        a.reset(len, v);
        a
    }

    /// `len` copies of `v`, in place of the contents (the allocation is kept when large enough).
    pub fn reset(&mut self, len: usize, v: T) {
        let pad = 64 / std::mem::size_of::<T>().max(1);
        self.buf.clear();
        self.buf.resize(len + pad, v);
        // `align_offset` may decline to answer (usize::MAX); only speed depends on it.
        let off = self.buf.as_ptr().align_offset(64);
        self.off = if off <= pad { off } else { 0 };
        self.len = len;
    }
}

impl<T> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl<T> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

/// Weights per packed block.
pub const BLOCK: usize = 256;

/// One packed block of 256 ternary codes: a cache line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Block64(pub [u8; 64]);

impl Block64 {
    /// All codes 1, i.e. all weights 0 (used for padding).
    pub const ZERO: Block64 = Block64([0x55; 64]);

    pub fn set(&mut self, e: usize, code: u8) {
        let (j, l) = (e % 64, e / 64);
        self.0[j] = (self.0[j] & !(3 << (2 * l))) | ((code & 3) << (2 * l));
    }

    pub fn get(&self, e: usize) -> u8 {
        (self.0[e % 64] >> (2 * (e / 64))) & 3
    }
}

/// Which instruction set the kernels use; chosen once at start-up from what the CPU reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Isa {
    /// The fastest set this CPU supports (`TRITIUM_ISA=scalar|avx2|avx512` narrows it, for tests
    /// and comparisons).
    pub fn detect() -> Isa {
        let want = std::env::var("TRITIUM_ISA").ok();
        let all = Self::available();
        if let Some(w) = want
            && let Some(i) = all.iter().find(|i| i.name() == w)
        {
            return *i;
        }
        *all.last().expect("scalar is always available")
    }

    /// Every set this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        Self::ALL.into_iter().filter(|i| i.supported()).collect()
    }

    const ALL: [Isa; Self::COUNT] = [
        Isa::Scalar,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon,
    ];
    const COUNT: usize = if cfg!(target_arch = "x86_64") {
        3
    } else if cfg!(target_arch = "aarch64") {
        2
    } else {
        1
    };

    /// Whether this CPU runs `self`. Any code can name a variant, so the dispatchers check this
    /// before entering a `target_feature` kernel (std caches the CPU's answer: a load and a test).
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => "avx512",
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => "neon",
        }
    }
}

/// `out[t] = Σ_j code(w, j) · x[t][j]` over `w.len()` blocks, for each token row `x[t]`
/// (`xs[t]` holds at least `64·4·w.len()` activations). Integer results: exact.
pub fn ternary_dots(isa: Isa, w: &[Block64], xs: &[&[i8]], out: &mut [i32]) {
    let n = w.len() * BLOCK;
    assert!(xs.iter().all(|x| x.len() >= n) && out.len() == xs.len());
    assert!(
        isa.supported(),
        "{} kernels on a CPU without them",
        isa.name()
    );
    match isa {
        Isa::Scalar => scalar::ternary_dots(w, xs, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa.supported()` (asserted above) means the CPU reports avx512f/bw/vnni, and
        // the lengths were checked above.
        Isa::Avx512Vnni => unsafe { x86::ternary_dots_avx512(w, xs, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for avx2.
        Isa::Avx2 => unsafe { x86::ternary_dots_avx2(w, xs, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `isa.supported()` (asserted above) means the CPU reports neon; lengths checked above.
        Isa::Neon => unsafe { neon::ternary_dots(w, xs, out) },
    }
}

/// Elements of a tensor of these sizes. Panics where the product overflows, so that the length
/// checks guarding the kernels' unchecked loads cannot pass by wrapping (release builds do not
/// check arithmetic).
pub fn elems(dims: &[usize]) -> usize {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .expect("tensor size overflows usize")
}

/// `out[r] = Σ_j code(row r, j) · x[j]` for consecutive rows of `nb` blocks each (`w.len() = out.len()·nb`):
/// the decode path, one call per matrix slice instead of one per row.
pub fn ternary_matvec(isa: Isa, w: &[Block64], nb: usize, x: &[i8], out: &mut [i32]) {
    assert!(w.len() == elems(&[out.len(), nb]) && x.len() >= elems(&[nb, BLOCK]));
    assert!(
        isa.supported(),
        "{} kernels on a CPU without them",
        isa.name()
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa.supported()` (asserted above) means the CPU reports avx512f/bw/vnni, and
        // the lengths were checked above.
        Isa::Avx512Vnni => unsafe { x86::ternary_matvec_avx512(w, nb, x, out) },
        _ => {
            for (r, o) in out.iter_mut().enumerate() {
                ternary_dots(isa, &w[r * nb..(r + 1) * nb], &[x], std::slice::from_mut(o));
            }
        }
    }
}

/// `out[r·n + t] = Σ_j code(row r, j) · xs[t][j]` for consecutive rows of `nb` blocks each and
/// `n = xs.len()` ≤ 16 tokens: the batched-decode path, one call per slice of rows instead of one
/// per row.
pub fn ternary_rows(isa: Isa, w: &[Block64], nb: usize, xs: &[&[i8]], out: &mut [i32]) {
    let n = xs.len();
    assert!(n > 0 && n <= 16 && nb > 0);
    assert!(w.len().is_multiple_of(nb) && out.len() == w.len() / nb * n);
    assert!(xs.iter().all(|x| x.len() >= nb * BLOCK));
    assert!(
        isa.supported(),
        "{} kernels on a CPU without them",
        isa.name()
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa.supported()` (asserted above) means the CPU reports avx512f/bw/vnni, and
        // the lengths were checked above.
        Isa::Avx512Vnni => unsafe { x86::ternary_rows_avx512(w, nb, xs, out) },
        _ => {
            for (row, o) in w.chunks_exact(nb).zip(out.chunks_exact_mut(n)) {
                ternary_dots(isa, row, xs, o);
            }
        }
    }
}

/// For weights with a scale per (row, 256-block) (a GGUF whose blocks carry different `d`):
/// `out[r·n + t] = Σ_b (dot(row r, block b, xs[t]) − sums[t·nb + b]) as f32 · scales[r·nb + b]`,
/// the blocks summed in order, for consecutive rows of `nb` blocks and `n = xs.len()` ≤ 16 tokens
/// (`sums` holds each token's per-block activation sums). One call per slice of rows: a call
/// per row and block cost more than its 32 multiply-adds for a batch of eight tokens.
pub fn ternary_rows_scaled(
    isa: Isa,
    w: &[Block64],
    nb: usize,
    xs: &[&[i8]],
    sums: &[i32],
    scales: &[f32],
    out: &mut [f32],
) {
    let n = xs.len();
    assert!(n > 0 && n <= 16 && nb > 0);
    assert!(w.len().is_multiple_of(nb) && scales.len() == w.len() && sums.len() == n * nb);
    assert!(out.len() == w.len() / nb * n);
    assert!(xs.iter().all(|x| x.len() >= nb * BLOCK));
    assert!(
        isa.supported(),
        "{} kernels on a CPU without them",
        isa.name()
    );
    // Blocks outer, so each block's shifted activations and sums are set up once; `out` holds the
    // running sums, added block by block in order (the same order as a row at a time).
    out.fill(0.0);
    let (mut shifted, mut dots): ([&[i8]; 16], [i32; 16]) = ([&[][..]; 16], [0; 16]);
    for b in 0..nb {
        for (s, x) in shifted.iter_mut().zip(xs) {
            *s = &x[BLOCK * b..];
        }
        let xb = &shifted[..n];
        for (r, o) in out.chunks_exact_mut(n).enumerate() {
            let blk = std::slice::from_ref(&w[r * nb + b]);
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `isa.supported()` (asserted above): the CPU has avx512f/bw/vnni; each
                // shifted row holds the 256 activations of this block (lengths asserted above).
                Isa::Avx512Vnni => unsafe { x86::ternary_dots_avx512(blk, xb, &mut dots[..n]) },
                _ => ternary_dots(isa, blk, xb, &mut dots[..n]),
            }
            let s = scales[r * nb + b];
            // Multiply, then add (never fused): the same rounding as one token at a time.
            for (t, (a, &d)) in o.iter_mut().zip(&dots).enumerate() {
                *a += (d - sums[t * nb + b]) as f32 * s;
            }
        }
    }
}

/// Float weight rows for the LM head (the tied embedding), in the file's own encoding and in the
/// grouped layout of [`float_index`] (build it with [`group_rows`]).
#[derive(Clone, Copy, Debug)]
pub enum FloatRows<'a> {
    F32(&'a [f32]),
    /// Little-endian IEEE half floats, as raw bits.
    F16(&'a [u16]),
}

impl FloatRows<'_> {
    /// Bytes per weight.
    pub fn elem_bytes(&self) -> usize {
        match self {
            FloatRows::F32(_) => 4,
            FloatRows::F16(_) => 2,
        }
    }

    /// Values it holds.
    pub fn len(&self) -> usize {
        match self {
            FloatRows::F32(v) => v.len(),
            FloatRows::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `r` (`d` wide) as f32, into `out`.
    pub fn row_into(&self, d: usize, r: usize, out: &mut [f32]) {
        assert!(out.len() == d && self.len() >= float_rows_len(r + 1, d));
        for (j, o) in out.iter_mut().enumerate() {
            let at = float_index(d, r, j);
            *o = match self {
                FloatRows::F32(v) => v[at],
                FloatRows::F16(v) => half::f16::from_bits(v[at]).to_f32(),
            };
        }
    }
}

/// Rows a group of the float rows' layout holds.
pub const FLOAT_GROUP: usize = 4;

/// Where element `j` of row `r` lives in float rows `d` wide. Rows go in groups of
/// [`FLOAT_GROUP`], each group's rows interleaved by 16 values: the 16 values a vector load takes
/// from each of the group's four rows lie side by side (128 bytes of f16), so the decode kernel,
/// which runs the four rows together, reads the head as one sequential stream. Row by row, it had
/// read four streams 1.5 KB apart (bitnet-125m), and the f16 head streamed at two thirds of a
/// plain read. A group takes the same bytes as its rows did, and the last group is padded to four
/// rows ([`float_rows_len`]). Rows whose width is not a multiple of 16 stay row-major.
#[inline(always)]
pub fn float_index(d: usize, r: usize, j: usize) -> usize {
    if d.is_multiple_of(16) {
        let g = FLOAT_GROUP;
        (r / g) * g * d + (j / 16) * 16 * g + (r % g) * 16 + j % 16
    } else {
        r * d + j
    }
}

/// Values `rows` float rows `d` wide take in the grouped layout: whole groups where it groups.
pub fn float_rows_len(rows: usize, d: usize) -> usize {
    if d.is_multiple_of(16) {
        elems(&[rows.div_ceil(FLOAT_GROUP), FLOAT_GROUP, d])
    } else {
        elems(&[rows, d])
    }
}

/// Row-major rows `d` wide (`plain.len() / d` of them) in the layout of [`float_index`], the
/// last group padded with default values.
pub fn grouped<T: Copy + Default>(mut plain: Vec<T>, d: usize) -> Vec<T> {
    plain.resize(float_rows_len(plain.len() / d.max(1), d), T::default());
    group_rows(&mut plain, d);
    plain
}

/// Reorders row-major rows `d` wide into the layout of [`float_index`], in place, one group at a
/// time. `rows.len()` must be [`float_rows_len`] of the rows it holds (pad the last group first).
pub fn group_rows<T: Copy + Default>(rows: &mut [T], d: usize) {
    if !d.is_multiple_of(16) || d == 0 {
        return;
    }
    let g = FLOAT_GROUP * d;
    assert!(
        rows.len().is_multiple_of(g),
        "the last group of rows is not padded"
    );
    let mut tmp = vec![T::default(); g];
    for group in rows.chunks_exact_mut(g) {
        for (a, row) in group.chunks_exact(d).enumerate() {
            for (c, sixteen) in row.chunks_exact(16).enumerate() {
                let at = float_index(d, a, 16 * c);
                tmp[at..at + 16].copy_from_slice(sixteen);
            }
        }
        group.copy_from_slice(&tmp);
    }
}

/// `out[r·xs.len() + t] = w[r] · xs[t]` for rows `rows` of `w` (row length `d`, a multiple of 16),
/// in the canonical summation order described at the top of this module.
pub fn float_dots(
    isa: Isa,
    w: FloatRows,
    d: usize,
    rows: std::ops::Range<usize>,
    xs: &[&[f32]],
    out: &mut [f32],
) {
    assert!(d.is_multiple_of(16));
    assert!(xs.iter().all(|x| x.len() == d) && out.len() == elems(&[rows.len(), xs.len()]));
    assert!(w.len() >= float_rows_len(rows.end, d));
    assert!(
        isa.supported(),
        "{} kernels on a CPU without them",
        isa.name()
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa.supported()` (asserted above): the CPU has avx512f; bounds checked above.
        Isa::Avx512Vnni => unsafe { x86::float_dots_avx512(w, d, rows, xs, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa.supported()`: the CPU has avx2, fma and f16c; bounds checked above.
        Isa::Avx2 => unsafe { x86::float_dots_avx2(w, d, rows, xs, out) },
        _ => scalar::float_dots(w, d, rows, xs, out),
    }
}

/// `a · b` in 16 independent lanes (vectorizable; a plain sum is a serial chain under IEEE
/// ordering), compiled for the widest vector unit the CPU has.
pub fn dot(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    assert!(
        isa.supported(),
        "{} kernels on a CPU without them",
        isa.name()
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa.supported()` (asserted above) includes avx512f; the body is safe code.
        Isa::Avx512Vnni => unsafe { x86::dot_avx512(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa.supported()` includes avx2 and fma; the body is safe code.
        Isa::Avx2 => unsafe { x86::dot_avx2(a, b) },
        _ => dot_body(a, b),
    }
}

/// Positions per key block. The engine's key cache holds each head's keys in blocks of
/// `KEY_BLOCK` positions, dimension-major inside a block (`[hd][KEY_BLOCK]`): one block's scores
/// are `hd` vector multiply-adds over contiguous memory, and appending a position writes inside
/// one block. (A cache transposed across the whole context put each dimension a context's length
/// apart: every score and every appended key touched `hd` pages, which the TLB paid for once
/// several sequences shared a step.)
pub const KEY_BLOCK: usize = 16;

/// Where dimension `j` of position `p` lives in one head's blocked keys.
#[inline]
pub fn key_index(hd: usize, p: usize, j: usize) -> usize {
    (p / KEY_BLOCK) * hd * KEY_BLOCK + j * KEY_BLOCK + p % KEY_BLOCK
}

/// Floats one head's blocked keys take for `n` positions (whole blocks).
pub fn key_len(hd: usize, n: usize) -> usize {
    n.div_ceil(KEY_BLOCK) * KEY_BLOCK * hd
}

/// Lines to bring into L2 a few at a time over a kernel's loop (the next task's inputs), so
/// their misses overlap this task's work instead of the next task starting cold. Addresses only:
/// a prefetch never faults, so any range is safe to name.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trickle {
    ranges: [(usize, usize); 2],
}

impl Trickle {
    /// The bytes of `a` and of `b`.
    pub fn of<A, B>(a: &[A], b: &[B]) -> Trickle {
        let (pa, pb) = (a.as_ptr() as usize, b.as_ptr() as usize);
        Trickle {
            ranges: [
                (pa, pa + std::mem::size_of_val(a)),
                (pb, pb + std::mem::size_of_val(b)),
            ],
        }
    }

    /// Cache lines still to fetch.
    pub fn lines(&self) -> usize {
        self.ranges
            .iter()
            .map(|&(a, b)| b.saturating_sub(a).div_ceil(64))
            .sum()
    }

    /// Prefetches the next `k` lines into L2.
    #[inline(always)]
    pub fn fetch(&mut self, k: usize) {
        for _ in 0..k {
            let r = if self.ranges[0].0 < self.ranges[0].1 {
                &mut self.ranges[0]
            } else if self.ranges[1].0 < self.ranges[1].1 {
                &mut self.ranges[1]
            } else {
                return;
            };
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch does not fault and changes no architectural state; sse is
            // baseline on x86-64.
            unsafe {
                use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
                _mm_prefetch::<_MM_HINT_T1>(r.0 as *const i8)
            };
            r.0 += 64;
        }
    }
}

/// One attention head for one query: `out = softmax(q·kₚ·scale) · vₚ` over positions `p < n`.
/// `keys` is blocked (see [`KEY_BLOCK`]); lanes of the last block past `n` may hold anything and
/// are ignored. `values` is position-major. `scores` is scratch. `next` names lines to prefetch
/// over the loops (the caller's next task; `Trickle::default()` for none): it changes no result.
#[allow(clippy::too_many_arguments)]
pub fn attend<T: KvElem>(
    isa: Isa,
    q: &[f32],
    keys: &[T],
    n: usize,
    values: &[T],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
    next: Trickle,
) {
    let hd = q.len();
    assert!(keys.len() >= key_len(hd, n) && values.len() >= n * hd && out.len() == hd);
    assert!(
        isa.supported(),
        "{} kernels on a CPU without them",
        isa.name()
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `dot`; bounds checked above.
        Isa::Avx512Vnni => unsafe {
            x86::attend_avx512(q, keys, n, values, scale, scores, out, next)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `dot`.
        Isa::Avx2 => unsafe { x86::attend_avx2(q, keys, n, values, scale, scores, out) },
        _ => attend_body(q, keys, n, values, scale, scores, out),
    }
}

#[inline(always)]
pub fn attend_body<T: KvElem>(
    q: &[f32],
    keys: &[T],
    n: usize,
    values: &[T],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = q.len();
    // Plain index loops: iterator adaptors here would be instantiated outside the caller's
    // target features and lose the wide vectors. Whole blocks, so the lane loop vectorizes.
    let nb = n.div_ceil(KEY_BLOCK);
    scores.clear();
    scores.resize(nb * KEY_BLOCK, 0.0);
    for b in 0..nb {
        let blk = &keys[b * hd * KEY_BLOCK..(b + 1) * hd * KEY_BLOCK];
        let s = &mut scores[b * KEY_BLOCK..(b + 1) * KEY_BLOCK];
        for j in 0..hd {
            let (qj, row) = (q[j], &blk[j * KEY_BLOCK..(j + 1) * KEY_BLOCK]);
            for l in 0..KEY_BLOCK {
                s[l] += qj * row[l].to_f32();
            }
        }
    }
    let mut mx = f32::NEG_INFINITY;
    for p in 0..n {
        scores[p] *= scale;
        mx = mx.max(scores[p]);
    }
    let mut z = 0.0;
    for p in 0..n {
        let e = rows::exp(scores[p] - mx);
        scores[p] = e;
        z += e;
    }
    out.fill(0.0);
    for p in 0..n {
        let w = scores[p] / z;
        for (o, x) in out.iter_mut().zip(&values[p * hd..(p + 1) * hd]) {
            *o += w * x.to_f32();
        }
    }
}

/// What the KV cache holds keys and values as: f32, or f16 (half the bytes a decode step reads
/// per position; each value rounded once, to nearest, when it is cached). Attention itself runs in
/// f32 either way: on f16-representable inputs both give the same bits.
pub trait KvElem: Copy + Send + Sync + 'static {
    /// Stored as IEEE binary16 (the SIMD loads widen it).
    const HALF: bool;
    const ZERO: Self;
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
}

impl KvElem for f32 {
    const HALF: bool = false;
    const ZERO: f32 = 0.0;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> f32 {
        x
    }
}

impl KvElem for half::f16 {
    const HALF: bool = true;
    const ZERO: half::f16 = half::f16::ZERO;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> half::f16 {
        half::f16::from_f32(x)
    }
}

#[inline(always)]
pub fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let n = a.len().min(b.len());
    let whole = n / 16 * 16;
    for c in (0..whole).step_by(16) {
        let (x, y) = (&a[c..c + 16], &b[c..c + 16]);
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0;
    for i in whole..n {
        tail += a[i] * b[i];
    }
    reduce16(lanes) + tail
}

/// The canonical reduction of 16 lane sums: pairwise, halving (8+8, 4+4, 2+2, 1+1).
#[inline(always)]
pub fn reduce16(mut l: [f32; 16]) -> f32 {
    let mut n = 16;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            l[i] += l[i + n];
        }
    }
    l[0]
}
