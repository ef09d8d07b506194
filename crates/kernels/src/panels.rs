//! Ternary weights packed for a product with many tokens at once: training's BitLinear forward.
//!
//! The engine's row blocks suit one token against a matrix (decode): each output is one long dot
//! product, summed across lanes at its end. With dozens of tokens that horizontal sum, and loading
//! every activation once per weight row, cost more than the multiplies (the row-block kernel ran a
//! training forward at about 30% of what `vpdpbusd` can do). This layout turns the product around:
//! a vector's 32-bit lanes are 16 *output rows*, a token's four activations are broadcast to every
//! lane, and the sums never leave their lanes.
//!
//! ```text
//! rows    in groups of 16 (g), two groups to a pair (p = g / 2, h = g % 2), padded to a whole pair
//! columns in runs of 16 (Q), each four runs of 4 (l, b); padded to a whole run
//!
//! block (p, Q, h), 64 bytes, stored at index (p·nq + Q)·2 + h:
//!   byte 4j + b, bits 2l..2l+1  =  code (q + 1 ∈ {0, 1, 2}) of row 16g + j, column 16Q + 4l + b
//! ```
//!
//! Shifting a block right by `2l` and masking with 3 gives the vector whose lane `j` holds row
//! `16g + j`'s codes for columns `16Q + 4l .. 16Q + 4l + 4`: the unsigned operand of `vpdpbusd`
//! against those four activations of one token. Padding is code 1 (weight 0). As in the engine,
//! `Σ q·x = Σ code·x − Σ x`, so callers pass each token's activation sum.

use std::mem::MaybeUninit;

use crate::{Block64, Isa};

/// Rows per pair of 16-row groups: the row tile of the SIMD kernels.
pub const PAIR: usize = 32;
/// Columns per block run.
pub const RUN: usize = 16;

/// A `[rows, cols]` matrix of ternary codes in the layout described at the top of this module.
#[derive(Clone)]
pub struct Panels {
    pub rows: usize,
    pub cols: usize,
    /// Column runs per row: `cols / 16`, rounded up.
    pub nq: usize,
    pub blocks: Vec<Block64>,
}

impl std::fmt::Debug for Panels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Panels({} x {})", self.rows, self.cols)
    }
}

impl Panels {
    /// All weights zero (code 1).
    pub fn zeros(rows: usize, cols: usize) -> Panels {
        let nq = cols.div_ceil(RUN);
        Panels {
            rows,
            cols,
            nq,
            blocks: vec![Block64::ZERO; rows.div_ceil(PAIR) * nq * 2],
        }
    }

    /// Packs a matrix given a row at a time: `row(r, dst)` writes row `r`'s `cols` codes
    /// (`q + 1`). Row pairs in parallel.
    pub fn from_rows(rows: usize, cols: usize, row: impl Fn(usize, &mut [u8]) + Sync) -> Panels {
        Panels::from_pairs(rows, cols, |pair, codes, stride| {
            for (i, dst) in codes.chunks_mut(stride).enumerate() {
                let r = PAIR * pair + i;
                if r >= rows {
                    break;
                }
                row(r, &mut dst[..cols]);
            }
        })
    }

    /// The transpose, `[cols, rows]`, in this layout. A pair of the result (32 of this matrix's
    /// columns: two runs) reads four bytes of each of this matrix's rows per run, so the whole
    /// matrix is read once, and its 32 rows of codes (32 × `rows` bytes: L2-sized) are packed.
    pub fn transposed(&self) -> Panels {
        Panels::from_pairs(self.cols, self.rows, |p, codes, stride| {
            for r in 0..self.rows {
                let (src, h, j) = (self.pair(r / PAIR), (r % PAIR) / 16, r % 16);
                for run in 0..2 {
                    let q = 2 * p + run;
                    if q >= self.nq {
                        break;
                    }
                    let bytes = &src[2 * q + h].0[4 * j..4 * j + 4];
                    for i in 0..RUN {
                        // Column 16q + i of row r: byte i % 4, bits 2·(i / 4). Past `cols` it
                        // is padding (code 1), as the result's padding rows must be.
                        let code = (bytes[i % 4] >> (2 * (i / 4))) & 3;
                        codes[(RUN * run + i) * stride + r] = code;
                    }
                }
            }
        })
    }

    /// Packs a matrix a row pair at a time, in parallel: `fill(p, codes, stride)` writes the
    /// codes of rows `32p..32p + 32` into `codes` (32 rows of `stride` ≥ `cols`, all code 1 to
    /// begin with, so what it leaves is padding).
    fn from_pairs(
        rows: usize,
        cols: usize,
        fill: impl Fn(usize, &mut [u8], usize) + Sync,
    ) -> Panels {
        use rayon::prelude::*;
        let mut p = Panels::zeros(rows, cols);
        let stride = p.nq * RUN;
        if cols == 0 {
            return p;
        }
        p.blocks
            .par_chunks_mut(2 * p.nq)
            .enumerate()
            .for_each(|(pair, blocks)| {
                let mut codes = vec![1u8; PAIR * stride];
                fill(pair, &mut codes, stride);
                Panels::pack_pair(blocks, &codes, stride);
            });
        p
    }

    /// Padded columns: what each token's activation row must hold at least.
    pub fn padded_cols(&self) -> usize {
        self.nq * RUN
    }

    /// Row pairs (row tiles of 32).
    pub fn pairs(&self) -> usize {
        self.rows.div_ceil(PAIR)
    }

    /// The `2·nq` blocks of row pair `p`, in storage order.
    pub fn pair(&self, p: usize) -> &[Block64] {
        &self.blocks[p * self.nq * 2..(p + 1) * self.nq * 2]
    }

    /// (block index within a pair's slice, byte, shift) of row `r % 32`, column `c`: the layout's
    /// definition element by element, which the tests hold the packers to.
    #[cfg(test)]
    fn place(r: usize, c: usize) -> (usize, usize, u32) {
        let (h, j) = ((r % PAIR) / 16, r % 16);
        let (q, l, b) = (c / RUN, (c % RUN) / 4, c % 4);
        ((q * 2 + h), 4 * j + b, 2 * l as u32)
    }

    /// Writes `code` for row `32p + r` (`r < 32`) into that pair's blocks: the layout's
    /// definition, element by element, which the tests hold the packers to.
    #[cfg(test)]
    fn set_in_pair(pair: &mut [Block64], r: usize, c: usize, code: u8) {
        let (blk, byte, shift) = Self::place(r, c);
        let v = &mut pair[blk].0[byte];
        *v = (*v & !(3 << shift)) | ((code & 3) << shift);
    }

    /// Packs a pair's blocks from `codes`: 32 rows of `stride` (≥ 16·nq) codes each.
    pub fn pack_pair(pair: &mut [Block64], codes: &[u8], stride: usize) {
        let nq = pair.len() / 2;
        for q in 0..nq {
            for h in 0..2 {
                let blk = &mut pair[2 * q + h].0;
                for j in 0..16 {
                    let row = &codes[(16 * h + j) * stride + RUN * q..][..RUN];
                    for b in 0..4 {
                        blk[4 * j + b] =
                            row[b] | (row[4 + b] << 2) | (row[8 + b] << 4) | (row[12 + b] << 6);
                    }
                }
            }
        }
    }

    /// Row `r`'s `cols` codes, each mapped through `levels`, into `dst`.
    pub fn unpack_row<T: Copy>(&self, r: usize, dst: &mut [T], levels: [T; 3]) {
        let pair = self.pair(r / PAIR);
        let (h, j) = ((r % PAIR) / 16, r % 16);
        for (q, run) in dst.chunks_mut(RUN).enumerate() {
            let bytes = &pair[2 * q + h].0[4 * j..4 * j + 4];
            for (i, d) in run.iter_mut().enumerate() {
                let (l, b) = (i / 4, i % 4);
                // Code 3 never occurs; `min` keeps the index in bounds without a panic path.
                *d = levels[(((bytes[b] >> (2 * l)) & 3) as usize).min(2)];
            }
        }
    }

    /// The code of row `r`, column `c`, by the layout's definition (the tests' reference for
    /// the packers; code that reads whole rows uses [`Self::unpack_row`]).
    #[cfg(test)]
    fn get(&self, r: usize, c: usize) -> u8 {
        let (blk, byte, shift) = Self::place(r, c);
        (self.pair(r / PAIR)[blk].0[byte] >> shift) & 3
    }
}

/// Whether [`product`] has its many-token kernel on `isa` (AVX-512 VNNI, measured faster than the
/// engine's row blocks for prompts); elsewhere it is the scalar reference or untimed.
pub fn preferred(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    let yes = isa == Isa::Avx512Vnni;
    #[cfg(not(target_arch = "x86_64"))]
    let yes = {
        let _ = isa;
        false
    };
    yes
}

/// `out[t·rows + r] = (Σ_c code(r, c)·xs[t][c] − sums[t]) as f32 · factor[t]`: the dequantized
/// product of `xs.len()` int8 token rows (each at least [`Panels::padded_cols`] long, zero past
/// `cols`) with the ternary matrix. Integer sums are exact, so every ISA gives the same bits.
pub fn product(
    isa: Isa,
    w: &Panels,
    xs: &[&[i8]],
    sums: &[i32],
    factor: &[f32],
    out: &mut [MaybeUninit<f32>],
) {
    assert_eq!(out.len(), xs.len() * w.rows, "panel product output length");
    let mut rows: Vec<_> = out.chunks_exact_mut(w.rows).collect();
    product_pairs(isa, w, 0..w.pairs(), xs, sums, factor, &mut rows);
}

/// [`product`] for the row pairs `pairs` only (rows `32·pairs.start ..` up to `w.rows`): row `r`
/// (counted from the pairs' first row) of token `t` goes to `out[t][r]`. A thread's share of a
/// batch of a few tokens, which threads split by rows, written straight into each token's row.
/// Every row of the pairs, of every token, is stored, so `out` need not be initialized
/// ([`crate::fill::uninit`] views storage that is).
pub fn product_pairs(
    isa: Isa,
    w: &Panels,
    pairs: std::ops::Range<usize>,
    xs: &[&[i8]],
    sums: &[i32],
    factor: &[f32],
    out: &mut [&mut [MaybeUninit<f32>]],
) {
    let kp = w.padded_cols();
    let rows = crate::elems(&[PAIR, pairs.end])
        .min(w.rows)
        .saturating_sub(PAIR * pairs.start.min(pairs.end));
    assert!(
        pairs.end <= w.pairs()
            && xs.iter().all(|x| x.len() >= kp)
            && sums.len() == xs.len()
            && factor.len() == xs.len()
            && out.len() == xs.len()
            && out.iter().all(|o| o.len() >= rows),
        "panel product operand lengths"
    );
    assert!(
        isa.supported(),
        "{} kernels on a CPU without them",
        isa.name()
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa.supported()` (asserted above) means the CPU reports avx512f/bw/vnni, and
        // the lengths were checked above.
        Isa::Avx512Vnni => unsafe { x86::product_avx512(w, pairs, xs, sums, factor, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for avx2.
        Isa::Avx2 => unsafe { x86::product_avx2(w, pairs, xs, sums, factor, out) },
        _ => product_scalar(w, pairs, xs, sums, factor, out),
    }
}

/// The reference: every block decoded by the layout's definition, sums in i32.
fn product_scalar(
    w: &Panels,
    pairs: std::ops::Range<usize>,
    xs: &[&[i8]],
    sums: &[i32],
    factor: &[f32],
    out: &mut [&mut [MaybeUninit<f32>]],
) {
    let (n, r0) = (w.rows, PAIR * pairs.start);
    let mut acc = [0i32; PAIR];
    for (t, x) in xs.iter().enumerate() {
        for p in pairs.clone() {
            acc.fill(0);
            for (i, blk) in w.pair(p).iter().enumerate() {
                let (q, h) = (i / 2, i % 2);
                for (byte, v) in blk.0.iter().enumerate() {
                    let (j, b) = (byte / 4, byte % 4);
                    for l in 0..4 {
                        let code = ((v >> (2 * l)) & 3) as i32;
                        acc[16 * h + j] += code * x[RUN * q + 4 * l + b] as i32;
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                let r = PAIR * p + i;
                if r < n {
                    out[t][r - r0].write((a - sums[t]) as f32 * factor[t]);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::{PAIR, Panels, RUN};

    /// How far ahead the tiles prefetch weight bytes.
    const PF_BYTES: usize = 4096;

    /// Tokens per AVX-512 tile: 2 × 8 accumulators, two code vectors and a mask stay in registers.
    const T512: usize = 8;

    /// # Safety
    /// The CPU supports avx512f/bw/vnni; lengths and pairs as [`super::product_pairs`] checks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn product_avx512(
        w: &Panels,
        pairs: std::ops::Range<usize>,
        xs: &[&[i8]],
        sums: &[i32],
        factor: &[f32],
        out: &mut [&mut [MaybeUninit<f32>]],
    ) {
        let r0 = PAIR * pairs.start;
        // Tokens outer: a tile's activations (8 × padded cols bytes) stay in L1 while the packed
        // weights, a quarter of their size per row, stream from L2.
        let mut t = 0;
        while t < xs.len() {
            let nt = (xs.len() - t).min(T512);
            let mut ptrs = [std::ptr::null_mut(); T512];
            for (p, o) in ptrs.iter_mut().zip(&mut out[t..t + nt]) {
                *p = o.as_mut_ptr().cast::<f32>();
            }
            let o = Out { ptrs, r0 };
            for p in pairs.clone() {
                // SAFETY: forwarded contract; `t + nt ≤ xs.len()`.
                unsafe {
                    match nt {
                        8 => tile512::<8>(w, p, t, xs, sums, factor, o),
                        7 => tile512::<7>(w, p, t, xs, sums, factor, o),
                        6 => tile512::<6>(w, p, t, xs, sums, factor, o),
                        5 => tile512::<5>(w, p, t, xs, sums, factor, o),
                        4 => tile512::<4>(w, p, t, xs, sums, factor, o),
                        3 => tile512::<3>(w, p, t, xs, sums, factor, o),
                        2 => tile512::<2>(w, p, t, xs, sums, factor, o),
                        _ => tile512::<1>(w, p, t, xs, sums, factor, o),
                    }
                }
            }
            t += nt;
        }
    }

    /// The output of one tile of [`product_avx512`]: row `r` of its token `t` at
    /// `ptrs[t] + r − r0`.
    #[derive(Clone, Copy)]
    struct Out {
        ptrs: [*mut f32; T512],
        r0: usize,
    }

    /// Tokens `t0 .. t0 + NT` against row pair `p`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile512<const NT: usize>(
        w: &Panels,
        p: usize,
        t0: usize,
        xs: &[&[i8]],
        sums: &[i32],
        factor: &[f32],
        out: Out,
    ) {
        let m3 = _mm512_set1_epi8(3);
        let mut acc = [[_mm512_setzero_si512(); 2]; NT];
        let x: [*const i8; NT] = std::array::from_fn(|t| xs[t0 + t].as_ptr());
        let pair = w.pair(p);
        for q in 0..w.nq {
            // Pairs follow each other in memory: fetch ahead into this one and the next, as a
            // batch of a few tokens streams each matrix from memory once per step.
            let ahead = pair[2 * q].0.as_ptr().cast::<i8>().wrapping_add(PF_BYTES);
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
            // SAFETY: blocks are 64 bytes aligned to 64; 2q + 1 < pair.len() = 2·nq.
            let (b0, b1) = unsafe {
                (
                    _mm512_load_si512(pair[2 * q].0.as_ptr().cast()),
                    _mm512_load_si512(pair[2 * q + 1].0.as_ptr().cast()),
                )
            };
            // SAFETY (all four): each token row holds at least 16·nq bytes (checked by the caller)
            // and the loads read bytes 16q + 4l .. 16q + 4l + 4 < 16·nq.
            unsafe {
                step512::<0, NT>(&mut acc, b0, b1, m3, &x, RUN * q);
                step512::<2, NT>(&mut acc, b0, b1, m3, &x, RUN * q + 4);
                step512::<4, NT>(&mut acc, b0, b1, m3, &x, RUN * q + 8);
                step512::<6, NT>(&mut acc, b0, b1, m3, &x, RUN * q + 12);
            }
        }
        let n = w.rows;
        for t in 0..NT {
            let tok = t0 + t;
            let s = _mm512_set1_epi32(sums[tok]);
            let f = _mm512_set1_ps(factor[tok]);
            for h in 0..2 {
                let r = PAIR * p + 16 * h;
                if r >= n {
                    break;
                }
                let valid = (n - r).min(16);
                let mask = (u32::MAX >> (32 - valid)) as u16;
                let v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[t][h], s)), f);
                // SAFETY: the mask writes rows r .. r + valid ≤ n, counted from r0, of token
                // `tok`'s output, which holds every row of these pairs (the caller checked).
                unsafe { _mm512_mask_storeu_ps(out.ptrs[t].add(r - out.r0), mask, v) };
            }
        }
    }

    /// One run of four columns at byte offset `at`: codes from bits `S, S+1` of both groups' blocks.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn step512<const S: u32, const NT: usize>(
        acc: &mut [[__m512i; 2]; NT],
        b0: __m512i,
        b1: __m512i,
        m3: __m512i,
        x: &[*const i8; NT],
        at: usize,
    ) {
        let c0 = _mm512_and_si512(_mm512_srli_epi16::<S>(b0), m3);
        let c1 = _mm512_and_si512(_mm512_srli_epi16::<S>(b1), m3);
        for t in 0..NT {
            // SAFETY: the caller guarantees x[t] + at .. + 4 is inside token t's row.
            let four = unsafe { x[t].add(at).cast::<i32>().read_unaligned() };
            let xb = _mm512_set1_epi32(four);
            acc[t][0] = _mm512_dpbusd_epi32(acc[t][0], c0, xb);
            acc[t][1] = _mm512_dpbusd_epi32(acc[t][1], c1, xb);
        }
    }

    /// # Safety
    /// The CPU supports avx2; lengths and pairs as [`super::product_pairs`] checks.
    #[target_feature(enable = "avx2")]
    pub unsafe fn product_avx2(
        w: &Panels,
        pairs: std::ops::Range<usize>,
        xs: &[&[i8]],
        sums: &[i32],
        factor: &[f32],
        out: &mut [&mut [MaybeUninit<f32>]],
    ) {
        let (n, r0) = (w.rows, PAIR * pairs.start);
        let m3 = _mm256_set1_epi8(3);
        let ones = _mm256_set1_epi16(1);
        for (t, x) in xs.iter().enumerate() {
            for p in pairs.clone() {
                let pair = w.pair(p);
                // Lanes: rows 0-7 and 8-15 of each 16-row group (the two halves of a block).
                let mut acc = [_mm256_setzero_si256(); 4];
                for q in 0..w.nq {
                    for (i, a) in acc.iter_mut().enumerate() {
                        let (h, half) = (i / 2, i % 2);
                        // SAFETY: 32-byte half `half` of block 2q + h, inside the pair's slice.
                        let b = unsafe {
                            _mm256_loadu_si256(pair[2 * q + h].0.as_ptr().add(32 * half).cast())
                        };
                        for l in 0..4 {
                            let c = _mm256_and_si256(
                                _mm256_srl_epi16(b, _mm_cvtsi32_si128(2 * l as i32)),
                                m3,
                            );
                            // SAFETY: bytes 16q + 4l .. + 4 < 16·nq ≤ x.len() (caller's check).
                            let four = unsafe {
                                x.as_ptr()
                                    .add(RUN * q + 4 * l)
                                    .cast::<i32>()
                                    .read_unaligned()
                            };
                            // Codes ≤ 2 and |x| ≤ 128: the pair sums (≤ 512) never saturate i16.
                            let prod = _mm256_maddubs_epi16(c, _mm256_set1_epi32(four));
                            *a = _mm256_add_epi32(*a, _mm256_madd_epi16(prod, ones));
                        }
                    }
                }
                let mut lanes = [0i32; PAIR];
                for (i, a) in acc.iter().enumerate() {
                    // SAFETY: 8 lanes into lanes[8i .. 8i + 8].
                    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().add(8 * i).cast(), *a) };
                }
                for (i, v) in lanes.iter().enumerate() {
                    let r = PAIR * p + i;
                    if r < n {
                        out[t][r - r0].write((v - sums[t]) as f32 * factor[t]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::lcg;

    /// The transpose holds code (r, c) at (c, r), by the layout's definition, and code 1
    /// (weight 0) in every padded row and column, on shapes that end mid-run and mid-pair.
    #[test]
    fn transposed_moves_every_code_and_pads_with_zero_weights() {
        for (rows, cols, seed) in [
            (1, 1, 1),
            (5, 37, 2),
            (33, 16, 3),
            (70, 100, 4),
            (64, 64, 5),
        ] {
            let (w, codes) = random_panels(rows, cols, seed);
            let t = w.transposed();
            assert_eq!((t.rows, t.cols), (cols, rows));
            for c in 0..t.pairs() * PAIR {
                for r in 0..t.nq * RUN {
                    let want = if c < cols && r < rows {
                        codes[r * cols + c]
                    } else {
                        1
                    };
                    assert_eq!(t.get(c, r), want, "({c}, {r}) of {rows}×{cols}ᵀ");
                }
            }
        }
    }

    /// Codes from values in [-1, 1): {0, 1, 2}.
    fn random_panels(rows: usize, cols: usize, seed: u64) -> (Panels, Vec<u8>) {
        let codes: Vec<u8> = lcg(seed, rows * cols)
            .iter()
            .map(|v| ((v + 1.0) * 1.5) as u8)
            .collect();
        let mut w = Panels::zeros(rows, cols);
        let nq = w.nq;
        for (p, pair) in w.blocks.chunks_mut(2 * nq).enumerate() {
            for r in 0..PAIR.min(rows.saturating_sub(PAIR * p)) {
                for c in 0..cols {
                    Panels::set_in_pair(pair, r, c, codes[(PAIR * p + r) * cols + c]);
                }
            }
        }
        // Packing whole pairs and unpacking rows agree with the element-wise definition.
        let mut packed = Panels::zeros(rows, cols);
        let stride = nq * RUN;
        for (p, pair) in packed.blocks.chunks_mut(2 * nq).enumerate() {
            let mut padded = vec![1u8; PAIR * stride];
            for r in 0..PAIR.min(rows.saturating_sub(PAIR * p)) {
                padded[r * stride..r * stride + cols]
                    .copy_from_slice(&codes[(PAIR * p + r) * cols..][..cols]);
            }
            Panels::pack_pair(pair, &padded, stride);
        }
        assert!(packed.blocks == w.blocks);
        for r in 0..rows {
            let mut row = vec![9u8; cols];
            w.unpack_row(r, &mut row, [0, 1, 2]);
            assert_eq!(row, codes[r * cols..(r + 1) * cols]);
        }
        (w, codes)
    }

    #[test]
    fn the_layout_matches_its_definition() {
        // One pair, one run: row 16 + 3, column 4·2 + 1 sits in block (Q 0, h 1), byte 4·3 + 1, bits 4-5.
        let mut w = Panels::zeros(20, 10);
        Panels::set_in_pair(&mut w.blocks, 19, 9, 2);
        assert_eq!(w.blocks[1].0[13], 0x55 & !(3 << 4) | (2 << 4));
        assert_eq!(w.get(19, 9), 2);
        assert_eq!(w.get(19, 8), 1);
        let (w, codes) = random_panels(45, 37, 7);
        for r in 0..45 {
            for c in 0..37 {
                assert_eq!(w.get(r, c), codes[r * 37 + c]);
            }
        }
    }

    #[test]
    fn every_isa_equals_plain_integer_loops() {
        for (m, k, n) in [(1, 5, 3), (9, 300, 33), (17, 64, 64), (13, 768, 70)] {
            let (w, codes) = random_panels(n, k, 1);
            let kp = w.padded_cols();
            let xq: Vec<i8> = lcg(2, m * kp)
                .iter()
                .enumerate()
                .map(|(i, v)| if i % kp < k { (v * 128.0) as i8 } else { 0 })
                .collect();
            let xs: Vec<&[i8]> = xq.chunks(kp).collect();
            let sums: Vec<i32> = xs
                .iter()
                .map(|x| x.iter().map(|v| *v as i32).sum())
                .collect();
            let factor: Vec<f32> = lcg(3, m).iter().map(|v| v + 2.0).collect();
            let mut want = vec![0f32; m * n];
            for t in 0..m {
                for r in 0..n {
                    let dot: i32 = (0..k)
                        .map(|c| (codes[r * k + c] as i32 - 1) * xs[t][c] as i32)
                        .sum();
                    want[t * n + r] = dot as f32 * factor[t];
                }
            }
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; m * n];
                product(isa, &w, &xs, &sums, &factor, crate::fill::uninit(&mut out));
                assert_eq!(out, want, "{} at {m}×{k}×{n}", isa.name());
                // Each pair range alone, written at a wider stride: that range's columns of
                // `want`, and nothing outside them.
                let ranges = [0..1, 1..w.pairs(), w.pairs() - 1..w.pairs()];
                for pairs in ranges.into_iter().filter(|p| !p.is_empty()) {
                    let (r0, r1) = (PAIR * pairs.start, (PAIR * pairs.end).min(n));
                    let stride = r1 - r0 + 3;
                    let mut out = vec![f32::NAN; m * stride];
                    let uninit = crate::fill::uninit(&mut out);
                    let mut rows: Vec<_> = uninit.chunks_exact_mut(stride).collect();
                    product_pairs(isa, &w, pairs.clone(), &xs, &sums, &factor, &mut rows);
                    for t in 0..m {
                        let row = &out[t * stride..(t + 1) * stride];
                        assert_eq!(row[..r1 - r0], want[t * n + r0..t * n + r1], "{pairs:?}");
                        assert!(row[r1 - r0..].iter().all(|v| v.is_nan()), "{pairs:?}");
                    }
                }
            }
        }
    }
}
