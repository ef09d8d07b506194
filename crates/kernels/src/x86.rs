//! x86-64 kernels: AVX-512 VNNI (`vpdpbusd`, 64 code×activation products per instruction) and AVX2
//! (`vpmaddubsw` + `vpmaddwd`). Callers (`super::ternary_dots`, `super::float_dots`) check the CPU
//! features and the slice lengths; these functions trust both.

use std::arch::x86_64::*;

use super::{Block64, FLOAT_GROUP, FloatRows, float_index, reduce16};

// ---------------------------------------------------------------------------------------------
// Ternary × int8

/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni; every `xs[t]` must hold `256·w.len()`
/// values and `out.len() == xs.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn ternary_dots_avx512(w: &[Block64], xs: &[&[i8]], out: &mut [i32]) {
    let mut t = 0;
    // Tiles of 16 or 8 tokens share each unpacked weight block; a lone token uses four
    // accumulators so the `vpdpbusd` dependency chains overlap.
    while t + 16 <= xs.len() {
        // SAFETY: forwarded contract.
        unsafe { tile512_16(w, &xs[t..t + 16], &mut out[t..t + 16]) };
        t += 16;
    }
    while t + 8 <= xs.len() {
        // SAFETY: forwarded contract.
        unsafe { tile512::<8>(w, &xs[t..t + 8], &mut out[t..t + 8]) };
        t += 8;
    }
    while t + 4 <= xs.len() {
        // SAFETY: forwarded contract.
        unsafe { tile512::<4>(w, &xs[t..t + 4], &mut out[t..t + 4]) };
        t += 4;
    }
    match xs.len() - t {
        // SAFETY (both): forwarded contract.
        3 => return unsafe { small512::<3>(w, &xs[t..], &mut out[t..]) },
        2 => return unsafe { small512::<2>(w, &xs[t..], &mut out[t..]) },
        _ => {}
    }
    while t < xs.len() {
        // SAFETY: forwarded contract.
        out[t] = unsafe { one512(w, xs[t]) };
        t += 1;
    }
}

/// How far ahead the ternary kernels prefetch weight bytes. Into L2 rather than L1: decode streams
/// weights from memory, and on Zen 4 (32 KiB of L1D) a distance that hides the memory latency
/// does not fit in L1 beside the kernel's own lines. 8 KiB into L2 raised one ternary matvec over
/// 523 MB (two threads, the engine's `bw_probe` example) from 24–27 to 30–35 GB/s, against
/// 4 KiB into L1. In 125m decode (per-token A/B in one process, 10 reps) every other choice made
/// a token longer: into L1 12 KiB ahead +9%, 8 KiB +7%; into L2 4, 16 or 32 KiB ahead +2% each.
const PF_BYTES: usize = 8192;

/// Prefetches the weight line `PF_BYTES` past `blk` into L2. Prefetches never fault, so an
/// address past the rows' end is harmless (wrapping arithmetic).
#[inline]
#[target_feature(enable = "sse")]
fn fetch_ahead(blk: &Block64) {
    _mm_prefetch::<_MM_HINT_T1>(blk.0.as_ptr().cast::<i8>().wrapping_add(PF_BYTES));
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn codes512(blk: &Block64) -> [__m512i; 4] {
    let m = _mm512_set1_epi8(3);
    // SAFETY: a Block64 is 64 bytes aligned to 64.
    let w = unsafe { _mm512_load_si512(blk.0.as_ptr().cast()) };
    [
        _mm512_and_si512(w, m),
        _mm512_and_si512(_mm512_srli_epi16::<2>(w), m),
        _mm512_and_si512(_mm512_srli_epi16::<4>(w), m),
        _mm512_and_si512(_mm512_srli_epi16::<6>(w), m),
    ]
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile512<const NT: usize>(w: &[Block64], xs: &[&[i8]], out: &mut [i32]) {
    let mut acc = [_mm512_setzero_si512(); NT];
    for (b, blk) in w.iter().enumerate() {
        fetch_ahead(blk);
        // SAFETY: caller guarantees avx512 support.
        let c = unsafe { codes512(blk) };
        for (l, c) in c.iter().enumerate() {
            for t in 0..NT {
                // SAFETY: 256·b + 64·l + 64 ≤ 256·w.len() ≤ xs[t].len().
                let x = unsafe { _mm512_loadu_si512(xs[t].as_ptr().add(256 * b + 64 * l).cast()) };
                acc[t] = _mm512_dpbusd_epi32(acc[t], *c, x);
            }
        }
    }
    // SAFETY: `out` holds the NT tokens' results (the callers pass 4 or 8).
    unsafe { store_sums::<NT>(&acc, out) };
}

/// The horizontal sums of four or eight accumulators into `out[..NT]`, by a transpose-and-add
/// network: a batch of a few tokens against one block spent more on `NT` separate horizontal
/// sums than on its multiply-adds. Integer sums: exact in any order.
///
/// # Safety
/// The CPU has AVX-512 F; `NT` is 4 or 8 and `out.len() ≥ NT`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_sums<const NT: usize>(acc: &[__m512i; NT], out: &mut [i32]) {
    assert!((NT == 4 || NT == 8) && out.len() >= NT);
    // Stage 1: within each 128-bit chunk, [a0+a2, b0+b2, a1+a3, b1+b3] of a pair (a, b).
    let mut p = [_mm512_setzero_si512(); 4];
    for i in 0..NT / 2 {
        let (a, b) = (acc[2 * i], acc[2 * i + 1]);
        p[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    }
    // Stage 2: chunk j of q[i] holds chunk j's sums of accumulators 4i..4i+3.
    let mut q = [_mm512_setzero_si512(); 2];
    for i in 0..NT / 4 {
        let (a, b) = (p[2 * i], p[2 * i + 1]);
        q[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
    }
    // Stages 3–4: add the four chunks; chunk k of `r` then holds accumulators 4k..4k+3 (for
    // four, chunk 0 alone is used).
    let e = _mm512_add_epi32(
        _mm512_shuffle_i32x4::<0b10_00_10_00>(q[0], q[1]),
        _mm512_shuffle_i32x4::<0b11_01_11_01>(q[0], q[1]),
    );
    let r = _mm512_add_epi32(
        _mm512_shuffle_i32x4::<0b10_00_10_00>(e, e),
        _mm512_shuffle_i32x4::<0b11_01_11_01>(e, e),
    );
    let mut all = [0i32; 16];
    // SAFETY: 16 i32 into a 16-element array.
    unsafe { _mm512_storeu_si512(all.as_mut_ptr().cast(), r) };
    out[..NT].copy_from_slice(&all[..NT]);
}

/// Sixteen tokens: the 16 accumulators are reduced together ([`store_sums16`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile512_16(w: &[Block64], xs: &[&[i8]], out: &mut [i32]) {
    let mut acc = [_mm512_setzero_si512(); 16];
    for (b, blk) in w.iter().enumerate() {
        fetch_ahead(blk);
        // SAFETY: caller guarantees avx512 support.
        let c = unsafe { codes512(blk) };
        for (l, c) in c.iter().enumerate() {
            for t in 0..16 {
                // SAFETY: 256·b + 64·l + 64 ≤ 256·w.len() ≤ xs[t].len().
                let x = unsafe { _mm512_loadu_si512(xs[t].as_ptr().add(256 * b + 64 * l).cast()) };
                acc[t] = _mm512_dpbusd_epi32(acc[t], *c, x);
            }
        }
    }
    // SAFETY: out has 16 elements (the caller's contract).
    unsafe { store_sums16(&acc, out) };
}

/// The horizontal sums of sixteen accumulators into `out[..16]`, by a transpose-and-add network
/// (four stages) instead of sixteen separate horizontal sums.
///
/// # Safety
/// The CPU has AVX-512 F; `out.len() ≥ 16`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_sums16(acc: &[__m512i; 16], out: &mut [i32]) {
    assert!(out.len() >= 16);
    // Stage 1: pairs → within each 128-bit chunk, [a0+a2, b0+b2, a1+a3, b1+b3].
    let mut p = [_mm512_setzero_si512(); 8];
    for i in 0..8 {
        let (a, b) = (acc[2 * i], acc[2 * i + 1]);
        p[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    }
    // Stage 2: each 128-bit chunk j of q[i] holds chunk j's sums of accumulators 4i..4i+3.
    let mut q = [_mm512_setzero_si512(); 4];
    for i in 0..4 {
        let (a, b) = (p[2 * i], p[2 * i + 1]);
        q[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
    }
    // Stages 3–4: add the four chunks, chunk k of the result holding accumulators 4k..4k+3.
    let e01 = _mm512_add_epi32(
        _mm512_shuffle_i32x4::<0b10_00_10_00>(q[0], q[1]),
        _mm512_shuffle_i32x4::<0b11_01_11_01>(q[0], q[1]),
    );
    let e23 = _mm512_add_epi32(
        _mm512_shuffle_i32x4::<0b10_00_10_00>(q[2], q[3]),
        _mm512_shuffle_i32x4::<0b11_01_11_01>(q[2], q[3]),
    );
    let r = _mm512_add_epi32(
        _mm512_shuffle_i32x4::<0b10_00_10_00>(e01, e23),
        _mm512_shuffle_i32x4::<0b11_01_11_01>(e01, e23),
    );
    // SAFETY: out has 16 elements.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), r) };
}

/// Two or three tokens sharing each unpacked block, each with four accumulators (one per code
/// plane) so the chains overlap as in [`one512`]; integer sums, so the grouping is exact.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn small512<const NT: usize>(w: &[Block64], xs: &[&[i8]], out: &mut [i32]) {
    let mut acc = [[_mm512_setzero_si512(); 4]; NT];
    for (b, blk) in w.iter().enumerate() {
        fetch_ahead(blk);
        // SAFETY: caller guarantees avx512 support.
        let c = unsafe { codes512(blk) };
        for (t, a) in acc.iter_mut().enumerate() {
            for l in 0..4 {
                // SAFETY: 256·b + 64·l + 64 ≤ 256·w.len() ≤ xs[t].len().
                let xv = unsafe { _mm512_loadu_si512(xs[t].as_ptr().add(256 * b + 64 * l).cast()) };
                a[l] = _mm512_dpbusd_epi32(a[l], c[l], xv);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(&acc) {
        let s = _mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), _mm512_add_epi32(a[2], a[3]));
        *o = _mm512_reduce_add_epi32(s);
    }
}

/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni; `w.len() == rows·nb`,
/// `out.len() == rows·xs.len()`, `xs.len() ≤ 16` and every `xs[t]` holds `256·nb` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn ternary_rows_avx512(w: &[Block64], nb: usize, xs: &[&[i8]], out: &mut [i32]) {
    for (row, o) in w.chunks_exact(nb).zip(out.chunks_exact_mut(xs.len())) {
        // SAFETY: forwarded contract, one row at a time.
        unsafe { ternary_dots_avx512(row, xs, o) };
    }
}

/// One token against one row, four accumulators (one per code plane) so the `vpdpbusd` chains
/// overlap. Masking each plane in place instead (plane `l` multiplying as `4^l · code`, each
/// accumulator shifted back once at the end) drops the three shifts a block: over rows held in
/// L3 the matvec went from 35–45 to 47–53 GB/s (`bw_probe` at bitnet-125m's shape), but decode
/// did not follow (125m 541–591 against 556–616 tok/s, 2B4T 24.6–31.5 against 26.0–35.9; three
/// or four alternating rounds, Zen 4): it streams from memory, where the shifts are free.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn one512(w: &[Block64], x: &[i8]) -> i32 {
    let mut acc = [_mm512_setzero_si512(); 4];
    for (b, blk) in w.iter().enumerate() {
        // Rows are contiguous: this fetches ahead into the next rows.
        fetch_ahead(blk);
        // SAFETY: caller guarantees avx512 support.
        let c = unsafe { codes512(blk) };
        for l in 0..4 {
            // SAFETY: 256·b + 64·l + 64 ≤ x.len().
            let xv = unsafe { _mm512_loadu_si512(x.as_ptr().add(256 * b + 64 * l).cast()) };
            acc[l] = _mm512_dpbusd_epi32(acc[l], c[l], xv);
        }
    }
    let s = _mm512_add_epi32(
        _mm512_add_epi32(acc[0], acc[1]),
        _mm512_add_epi32(acc[2], acc[3]),
    );
    _mm512_reduce_add_epi32(s)
}

/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni; `w.len() == out.len()·nb` and `x` holds
/// `256·nb` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn ternary_matvec_avx512(w: &[Block64], nb: usize, x: &[i8], out: &mut [i32]) {
    for (row, o) in w.chunks_exact(nb).zip(out.iter_mut()) {
        // SAFETY: forwarded contract.
        *o = unsafe { one512(row, x) };
    }
}

/// # Safety
/// The CPU must support avx2, fma and f16c; lengths as for [`ternary_dots_avx512`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn ternary_dots_avx2(w: &[Block64], xs: &[&[i8]], out: &mut [i32]) {
    let mut t = 0;
    while t + 4 <= xs.len() {
        // SAFETY: forwarded contract.
        unsafe { tile256::<4>(w, &xs[t..t + 4], &mut out[t..t + 4]) };
        t += 4;
    }
    while t < xs.len() {
        // SAFETY: forwarded contract.
        unsafe { tile256::<1>(w, &xs[t..t + 1], &mut out[t..t + 1]) };
        t += 1;
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum256_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile256<const NT: usize>(w: &[Block64], xs: &[&[i8]], out: &mut [i32]) {
    let m = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); NT];
    for (b, blk) in w.iter().enumerate() {
        for h in 0..2 {
            // SAFETY: bytes 32h..32h+32 of an aligned 64-byte block.
            let wv = unsafe { _mm256_load_si256(blk.0.as_ptr().add(32 * h).cast()) };
            let c = [
                _mm256_and_si256(wv, m),
                _mm256_and_si256(_mm256_srli_epi16::<2>(wv), m),
                _mm256_and_si256(_mm256_srli_epi16::<4>(wv), m),
                _mm256_and_si256(_mm256_srli_epi16::<6>(wv), m),
            ];
            for (l, c) in c.iter().enumerate() {
                for t in 0..NT {
                    // SAFETY: 256·b + 64·l + 32·h + 32 ≤ xs[t].len().
                    let x = unsafe {
                        _mm256_loadu_si256(xs[t].as_ptr().add(256 * b + 64 * l + 32 * h).cast())
                    };
                    // Codes ≤ 2, |x| ≤ 128: pair sums ≤ 512, far from i16 saturation.
                    let p = _mm256_maddubs_epi16(*c, x);
                    acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(p, ones));
                }
            }
        }
    }
    for t in 0..NT {
        // SAFETY: caller guarantees avx2.
        out[t] = unsafe { hsum256_epi32(acc[t]) };
    }
}

// ---------------------------------------------------------------------------------------------
// Float rows (LM head): canonical order = 16 lanes, fused multiply-add, pairwise reduction.

/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni; `w` holds
/// [`crate::float_rows_len`]`(rows.end, d)` values, `d % 16 == 0`, every `xs[t]` has `d` values
/// and `out.len() == rows.len()·xs.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn float_dots_avx512(
    w: FloatRows,
    d: usize,
    rows: std::ops::Range<usize>,
    xs: &[&[f32]],
    out: &mut [f32],
) {
    let nt = xs.len();
    if nt >= 8 {
        // SAFETY: forwarded contract.
        return unsafe { float_dots_wide(w, d, rows, xs, out) };
    }
    let mut r = rows.start;
    let mut i = 0;
    // Tiles of four rows × up to four tokens: up to sixteen independent FMA chains (one token alone
    // still has four, one per row), each row converted once per four tokens.
    while r < rows.end {
        let n = 4.min(rows.end - r);
        let mut t = 0;
        while t < nt {
            let k = 4.min(nt - t);
            let x = &xs[t..t + k];
            // SAFETY: forwarded contract; the tile stays inside rows and tokens.
            unsafe {
                if n == 4 {
                    narrow::<4>(w, d, r, x, out, i, nt, t);
                } else {
                    for a in 0..n {
                        narrow::<1>(w, d, r + a, x, out, i + a, nt, t);
                    }
                }
            }
            t += k;
        }
        r += n;
        i += n;
    }
}

/// Eight tokens or more (a batch of sequences, or a prompt's logits): tiles of two rows × eight
/// tokens, 16 accumulators (three rows gained nothing), each row converted once per eight tokens and the eight sums of a row
/// reduced together by [`reduce8`]. The 4 × 4 tiles converted every row twice as often and spent
/// about a fifth of their time in one horizontal sum per row and token. Leftover tokens take the
/// narrow tiles; every result has the canonical order, so the bits do not depend on the tiling.
///
/// # Safety
/// As [`float_dots_avx512`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn float_dots_wide(
    w: FloatRows,
    d: usize,
    rows: std::ops::Range<usize>,
    xs: &[&[f32]],
    out: &mut [f32],
) {
    let nt = xs.len();
    // Blocks of rows outer, token tiles inner: a block's rows come from memory once and then from
    // L2 for each further tile of eight tokens, while the tile's activations stay in L1.
    let block = (FLOAT_BLOCK / (d * w.elem_bytes())).max(2) / 2 * 2;
    let mut b = rows.start;
    while b < rows.end {
        let b_end = (b + block).min(rows.end);
        let mut t = 0;
        while t < nt {
            let k = if nt - t >= 8 { 8 } else { 4.min(nt - t) };
            let x = &xs[t..t + k];
            let (mut r, mut i) = (b, b - rows.start);
            while r < b_end {
                let n = 2.min(b_end - r);
                // SAFETY (all tiles): forwarded contract; each tile stays inside rows and tokens.
                unsafe {
                    match (k, n) {
                        (8, 2) => ftile8::<2>(w, d, r, x, out, i, nt, t),
                        (8, _) => ftile8::<1>(w, d, r, x, out, i, nt, t),
                        (_, 2) => narrow::<2>(w, d, r, x, out, i, nt, t),
                        _ => narrow::<1>(w, d, r, x, out, i, nt, t),
                    }
                }
                r += n;
                i += n;
            }
            t += k;
        }
        b = b_end;
    }
}

/// [`ftile512`] for `RR` rows and one to four tokens.
///
/// # Safety
/// As [`ftile512`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn narrow<const RR: usize>(
    w: FloatRows,
    d: usize,
    r: usize,
    xs: &[&[f32]],
    out: &mut [f32],
    i: usize,
    nt: usize,
    t0: usize,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match xs.len() {
            4 => ftile512::<RR, 4>(w, d, r, xs, out, i, nt, t0),
            3 => ftile512::<RR, 3>(w, d, r, xs, out, i, nt, t0),
            2 => ftile512::<RR, 2>(w, d, r, xs, out, i, nt, t0),
            _ => ftile512::<RR, 1>(w, d, r, xs, out, i, nt, t0),
        }
    }
}

/// Rows `r..r+RR` against the eight tokens `xs` (`t0..t0+8`); results go to
/// `out[(i + a)·nt + t0 + b]`.
///
/// # Safety
/// The CPU has AVX-512 F; rows `r..r+RR` lie inside `w`, every `xs[b]` holds `d` values, `d % 16
/// == 0`, and `out` holds row `i + RR − 1`'s token `t0 + 7`.
// Not inlined: inside `float_dots_wide` the register allocator kept three of the sixteen
// accumulators on the stack (a load and a store around every third FMA); on its own it keeps all
// in registers (the 8-token head 1.2× faster).
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn ftile8<const RR: usize>(
    w: FloatRows,
    d: usize,
    r: usize,
    xs: &[&[f32]],
    out: &mut [f32],
    i: usize,
    nt: usize,
    t0: usize,
) {
    assert!(xs.len() == 8 && xs.iter().all(|x| x.len() == d));
    let xp: [*const f32; 8] = std::array::from_fn(|t| xs[t].as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 8]; RR];
    // The eight activation rows take 8·d·4 bytes of L1 (24 KiB at d = 768), so rows fetched
    // into L1 ahead would evict them; into L2 instead. Measured at bitnet-125m, eight sequences
    // decoding together, two threads, alternating: 1188 → 1280 tok/s (medians of six rounds,
    // 8 of 10 rounds faster); wider rows (2B4T) went to L2 already.
    let ahead = Ahead::in_l2(w, d, r, RR);
    let at: [usize; RR] = std::array::from_fn(|a| float_index(d, r + a, 0));
    for c in 0..d / 16 {
        ahead.fetch(c);
        let mut wv = [_mm512_setzero_ps(); RR];
        for (a, v) in wv.iter_mut().enumerate() {
            // SAFETY: row r + a's values 16c..16c + 16 lie inside the rows (the caller's contract).
            *v = unsafe { load16_512(w, at[a] + FLOAT_GROUP * 16 * c) };
        }
        // Constant trip counts throughout, so the accumulators stay in registers.
        for t in 0..8 {
            // SAFETY: 16c + 16 ≤ d = xs[t].len() (asserted).
            let xv = unsafe { _mm512_loadu_ps(xp[t].add(16 * c)) };
            for a in 0..RR {
                acc[a][t] = _mm512_fmadd_ps(wv[a], xv, acc[a][t]);
            }
        }
    }
    // By value: an accumulator array whose address is taken stays in memory through the loop.
    for (a, row) in acc.into_iter().enumerate() {
        let at = (i + a) * nt + t0;
        out[at..at + 8].copy_from_slice(&reduce8(row));
    }
}

/// The canonical reduction ([`crate::reduce16`]: 8 + 8, 4 + 4, 2 + 2, 1 + 1) of eight
/// accumulators at once, by shuffles that pair the same lanes the scalar order pairs. Float
/// addition is commutative, so each result has the scalar order's bits.
#[inline]
#[target_feature(enable = "avx512f")]
fn reduce8(v: [__m512; 8]) -> [f32; 8] {
    // l[i] + l[i+8]: u[j] holds v[2j]'s eight sums in chunks 0–1 and v[2j+1]'s in chunks 2–3.
    let u: [__m512; 4] = std::array::from_fn(|j| {
        let (a, b) = (v[2 * j], v[2 * j + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
        )
    });
    // l[i] + l[i+4]: chunk k of q[h] holds accumulator 4h + k's four sums.
    let q: [__m512; 2] = std::array::from_fn(|h| {
        let (a, b) = (u[2 * h], u[2 * h + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        )
    });
    // l[i] + l[i+2]: chunk k holds accumulator k's two sums, then accumulator 4 + k's.
    let (q0, q1) = (_mm512_castps_pd(q[0]), _mm512_castps_pd(q[1]));
    let z = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(q0, q1)),
        _mm512_castpd_ps(_mm512_unpackhi_pd(q0, q1)),
    );
    // l[0] + l[1]: lane 4k is accumulator k, lane 4k + 1 accumulator 4 + k.
    let s = _mm512_add_ps(
        _mm512_shuffle_ps::<0b10_00_10_00>(z, z),
        _mm512_shuffle_ps::<0b11_01_11_01>(z, z),
    );
    let mut lanes = [0f32; 16];
    // SAFETY: 16 f32 into a 16-element array.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), s) };
    std::array::from_fn(|t| lanes[4 * (t % 4) + t / 4])
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn load16_512(w: FloatRows, at: usize) -> __m512 {
    // SAFETY: caller keeps `at + 16` within the rows.
    unsafe {
        match w {
            FloatRows::F32(v) => _mm512_loadu_ps(v.as_ptr().add(at)),
            FloatRows::F16(v) => _mm512_cvtph_ps(_mm256_loadu_si256(v.as_ptr().add(at).cast())),
        }
    }
}

/// How far ahead of a float tile's rows its prefetch runs into L1, and into L2 where that is too
/// short (see [`Ahead`]).
const FLOAT_PF_L1: usize = 12 << 10;
const FLOAT_PF_L2: usize = 48 << 10;

/// Bytes of weight rows [`float_dots_wide`] takes through all its token tiles at a time.
const FLOAT_BLOCK: usize = 96 << 10;

/// The float tiles' prefetch: rows r..r+rr are contiguous, so at each 16-column step fetch the
/// same share of a group further on, two lines a step, keeping more misses in flight than the
/// hardware prefetcher alone does (decode is bound by this).
///
/// Where FLOAT_PF_L1 spans two groups of rows or more, into L1 that far ahead. Wider rows need
/// a distance L1 cannot hold beside the tile's own lines, so they go FLOAT_PF_L2 ahead into L2.
/// Measured on Zen 4 (32 KiB L1D, 1 MiB L2), decode of random-weight TQ2_0 files, two threads:
/// - 768-wide f16 head (bitnet-125m): 12 KiB into L1 decoded 452–484 tok/s; 12, 24 or 48 KiB into
///   L2, 384–458.
/// - 2560-wide f16 head (2B4T, 657 MB): 12 KiB into L1 (2 rows, inside the 4-row group) left the
///   head at 23–24 GB/s beside a plain read's 52; 48 KiB into L2 gave 36–39 GB/s. Both at once
///   gained nothing over the better one. On the Xeon, 40 KiB into L1 had been evicted before use.
/// - The 125m head fetched non-temporally (`_MM_HINT_NTA` for T0), meant to stop its 49.6 MB
///   from evicting the 21 MB of ternary rows out of the 32 MiB L3 between tokens, gained nothing:
///   four alternating rounds, 470–518 tok/s against T0's 510–569 (the L2 streamer fetches the
///   same lines normally anyway).
#[derive(Clone, Copy)]
struct Ahead {
    at: *const i8,
    step: usize,
    l2: bool,
}

impl Ahead {
    fn new(w: FloatRows, d: usize, r: usize, rr: usize) -> Ahead {
        let row = d * w.elem_bytes();
        if FLOAT_PF_L1 / row < 2 * rr {
            return Ahead::in_l2(w, d, r, rr);
        }
        Ahead::at(w, d, r, rr, FLOAT_PF_L1 / row, false)
    }

    /// FLOAT_PF_L2 ahead into L2 whatever the row width: for tiles whose own activations leave
    /// L1 no room for rows fetched ahead.
    fn in_l2(w: FloatRows, d: usize, r: usize, rr: usize) -> Ahead {
        let rows_ahead = (FLOAT_PF_L2 / (d * w.elem_bytes())).max(rr);
        Ahead::at(w, d, r, rr, rows_ahead, true)
    }

    fn at(w: FloatRows, d: usize, r: usize, rr: usize, rows_ahead: usize, l2: bool) -> Ahead {
        let base = match w {
            FloatRows::F32(v) => v.as_ptr().cast::<i8>(),
            FloatRows::F16(v) => v.as_ptr().cast::<i8>(),
        };
        let row = d * w.elem_bytes();
        Ahead {
            at: base.wrapping_add((r + rows_ahead) * row),
            step: rr * row / (d / 16),
            l2,
        }
    }

    /// Step `c`'s lines. Prefetches never fault, so addresses past the end are harmless
    /// (wrapping arithmetic).
    #[inline]
    #[target_feature(enable = "sse")]
    fn fetch(self, c: usize) {
        let (p, two) = (self.at.wrapping_add(c * self.step), self.step > 64);
        if self.l2 {
            lines::<_MM_HINT_T1>(p, two);
        } else {
            lines::<_MM_HINT_T0>(p, two);
        }
    }
}

/// Prefetches the line at `p` with `HINT`, and the next one when `two`.
#[inline]
#[target_feature(enable = "sse")]
fn lines<const HINT: i32>(p: *const i8, two: bool) {
    _mm_prefetch::<HINT>(p);
    if two {
        _mm_prefetch::<HINT>(p.wrapping_add(64));
    }
}

/// Rows `r..r+RR` against tokens `t0..t0+NT`; results go to `out[(i + a)·nt + t0 + b]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn ftile512<const RR: usize, const NT: usize>(
    w: FloatRows,
    d: usize,
    r: usize,
    xs: &[&[f32]],
    out: &mut [f32],
    i: usize,
    nt: usize,
    t0: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); NT]; RR];
    let ahead = Ahead::new(w, d, r, RR);
    let at: [usize; RR] = std::array::from_fn(|a| float_index(d, r + a, 0));
    for c in 0..d / 16 {
        ahead.fetch(c);
        let mut xv = [_mm512_setzero_ps(); NT];
        for t in 0..NT {
            // SAFETY: 16c + 16 ≤ d = xs[t].len().
            xv[t] = unsafe { _mm512_loadu_ps(xs[t].as_ptr().add(16 * c)) };
        }
        for a in 0..RR {
            // SAFETY: row r + a's values 16c..16c + 16 lie inside the rows.
            let wv = unsafe { load16_512(w, at[a] + FLOAT_GROUP * 16 * c) };
            for t in 0..NT {
                acc[a][t] = _mm512_fmadd_ps(wv, xv[t], acc[a][t]);
            }
        }
    }
    for a in 0..RR {
        for t in 0..NT {
            let mut lanes = [0f32; 16];
            // SAFETY: 16 f32 into a 16-element array.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc[a][t]) };
            out[(i + a) * nt + t0 + t] = reduce16(lanes);
        }
    }
}

/// # Safety
/// The CPU must support avx2, fma and f16c; lengths as for [`float_dots_avx512`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn float_dots_avx2(
    w: FloatRows,
    d: usize,
    rows: std::ops::Range<usize>,
    xs: &[&[f32]],
    out: &mut [f32],
) {
    let nt = xs.len();
    for (i, r) in rows.enumerate() {
        let row = float_index(d, r, 0);
        for (t, x) in xs.iter().enumerate() {
            // Lanes 0–7 and 8–15 of the canonical 16 live in two registers.
            let mut lo = _mm256_setzero_ps();
            let mut hi = _mm256_setzero_ps();
            for c in 0..d / 16 {
                let at = row + FLOAT_GROUP * 16 * c;
                // SAFETY: row r's values 16c..16c + 16 (at..at + 16) lie inside the rows;
                // 16c + 16 ≤ d = x.len().
                unsafe {
                    let (wl, wh) = match w {
                        FloatRows::F32(v) => (
                            _mm256_loadu_ps(v.as_ptr().add(at)),
                            _mm256_loadu_ps(v.as_ptr().add(at + 8)),
                        ),
                        FloatRows::F16(v) => (
                            _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(at).cast())),
                            _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(at + 8).cast())),
                        ),
                    };
                    lo = _mm256_fmadd_ps(wl, _mm256_loadu_ps(x.as_ptr().add(16 * c)), lo);
                    hi = _mm256_fmadd_ps(wh, _mm256_loadu_ps(x.as_ptr().add(16 * c + 8)), hi);
                }
            }
            let mut lanes = [0f32; 16];
            // SAFETY: two 8-float stores into a 16-element array.
            unsafe {
                _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
            }
            out[i * nt + t] = reduce16(lanes);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small float helpers (attention, norms): the generic bodies, compiled with wide vectors.

/// # Safety
/// The CPU must support avx512f.
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    super::dot_body(a, b)
}

/// # Safety
/// The CPU must support avx2 and fma.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    super::dot_body(a, b)
}

/// # Safety
/// The CPU must support avx512f; the slice bounds of `super::attend` hold.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn attend_avx512<T: super::KvElem>(
    q: &[f32],
    keys: &[T],
    n: usize,
    values: &[T],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
    mut next: super::Trickle,
) {
    use super::KEY_BLOCK;
    const { assert!(KEY_BLOCK == 16) };
    let hd = q.len();
    if hd == 0 || !hd.is_multiple_of(16) || hd > 128 {
        return super::attend_body(q, keys, n, values, scale, scores, out);
    }
    let nb = n.div_ceil(KEY_BLOCK);
    scores.clear();
    scores.resize(nb * KEY_BLOCK, 0.0);
    let sp = scores.as_mut_ptr();
    let kp = keys.as_ptr();
    let bs = hd * KEY_BLOCK;
    // A block's 16 positions fill one register: Σ_j q[j]·block[j]. Four blocks at once give four
    // independent FMA chains (one alone waits on its own latency); each lane sums over j in the
    // same order either way. The last one to three blocks go together too: one at a time, each
    // waited out its hd-long chain of dependent FMAs alone, as long as a whole group of four takes
    // (short contexts, most of a served completion, are mostly such leftover blocks).
    let quad = nb / 4 * 4;
    // The next task's lines, spread evenly over this call's loop iterations (one per dimension
    // for each group of key blocks, one per pair of value rows).
    let iters = (nb.div_ceil(4) * hd + n / 2).max(1);
    let per = next.lines().div_ceil(iters);
    for b in (0..quad).step_by(4) {
        // SAFETY: blocks b..b+4 ≤ nb lie inside keys and scores.
        unsafe { score_blocks::<T, 4>(q, kp, bs, b, sp, &mut next, per) };
    }
    // SAFETY: blocks quad..nb lie inside keys and scores.
    unsafe {
        match nb - quad {
            3 => score_blocks::<T, 3>(q, kp, bs, quad, sp, &mut next, per),
            2 => score_blocks::<T, 2>(q, kp, bs, quad, sp, &mut next, per),
            1 => score_blocks::<T, 1>(q, kp, bs, quad, sp, &mut next, per),
            _ => {}
        }
    }
    let mut mx = f32::NEG_INFINITY;
    for s in scores[..n].iter_mut() {
        *s *= scale;
        mx = mx.max(*s);
    }
    // Training's exp (a polynomial that vectorizes; libm's is a call per score), then the sum in
    // position order, as the scalar body adds it.
    for s in scores[..n].iter_mut() {
        *s = crate::rows::exp(*s - mx);
    }
    let mut z = 0.0;
    for &s in &scores[..n] {
        z += s;
    }
    // SAFETY: hd = 16c with 1 ≤ c ≤ 8 (checked above); scores[..n] and values[..n·hd] exist.
    unsafe {
        match hd / 16 {
            1 => weigh_values::<T, 1>(&scores[..n], z, values, out, &mut next, per),
            2 => weigh_values::<T, 2>(&scores[..n], z, values, out, &mut next, per),
            3 => weigh_values::<T, 3>(&scores[..n], z, values, out, &mut next, per),
            4 => weigh_values::<T, 4>(&scores[..n], z, values, out, &mut next, per),
            5 => weigh_values::<T, 5>(&scores[..n], z, values, out, &mut next, per),
            6 => weigh_values::<T, 6>(&scores[..n], z, values, out, &mut next, per),
            7 => weigh_values::<T, 7>(&scores[..n], z, values, out, &mut next, per),
            8 => weigh_values::<T, 8>(&scores[..n], z, values, out, &mut next, per),
            _ => unreachable!("hd = {hd} was sent to the scalar body above"),
        }
    }
}

/// Scores of key blocks `b..b + K` (16 positions each, `bs = 16·hd` floats apart) into
/// `sp[16b..16(b + K)]`: one FMA chain per block, each lane summing over `j` in order.
///
/// # Safety
/// The CPU must support avx512f; blocks `b..b + K` lie inside `kp`'s keys and `sp`'s scores.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn score_blocks<T: super::KvElem, const K: usize>(
    q: &[f32],
    kp: *const T,
    bs: usize,
    b: usize,
    sp: *mut f32,
    next: &mut super::Trickle,
    per: usize,
) {
    let mut acc = [_mm512_setzero_ps(); K];
    for (j, &qj) in q.iter().enumerate() {
        next.fetch(per);
        let qv = _mm512_set1_ps(qj);
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: (b + k + 1)·bs ≤ the keys' length (caller).
            *a = _mm512_fmadd_ps(qv, unsafe { load16(kp.add((b + k) * bs + 16 * j)) }, *a);
        }
    }
    for (k, a) in acc.iter().enumerate() {
        // SAFETY: 16(b + k) + 16 ≤ the scores' length (caller).
        unsafe { _mm512_storeu_ps(sp.add(16 * (b + k)), *a) };
    }
}

/// Sixteen cached keys or values at `p`, widened to f32 (exactly) if they are f16.
///
/// # Safety
/// The CPU must support avx512f; sixteen elements from `p` are readable.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load16<T: super::KvElem>(p: *const T) -> __m512 {
    // SAFETY: 16 elements at p (caller): 64 bytes of f32 or 32 of f16.
    unsafe {
        if T::HALF {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        } else {
            _mm512_loadu_ps(p.cast())
        }
    }
}

/// `out = Σₚ (eₚ / z)·vₚ` for rows of `16C` values. Two positions at a time into two sets of
/// accumulators: twice the independent chains, all `C` registers wide held in registers.
///
/// # Safety
/// The CPU must support avx512f; `values` holds `e.len()` rows of `16C`, `out` has `16C`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn weigh_values<T: super::KvElem, const C: usize>(
    e: &[f32],
    z: f32,
    values: &[T],
    out: &mut [f32],
    next: &mut super::Trickle,
    per: usize,
) {
    let hd = 16 * C;
    let n = e.len();
    assert!(values.len() >= n * hd && out.len() == hd);
    let vp = values.as_ptr();
    let mut ov = [[_mm512_setzero_ps(); C]; 2];
    let pairs = n / 2 * 2;
    for p in (0..pairs).step_by(2) {
        next.fetch(per);
        for (h, o) in ov.iter_mut().enumerate() {
            let w = _mm512_set1_ps(e[p + h] / z);
            for (i, o) in o.iter_mut().enumerate() {
                // SAFETY: row p + h < n has hd = 16C values (asserted).
                *o = _mm512_fmadd_ps(w, unsafe { load16(vp.add((p + h) * hd + 16 * i)) }, *o);
            }
        }
    }
    if pairs < n {
        let w = _mm512_set1_ps(e[pairs] / z);
        for (i, o) in ov[0].iter_mut().enumerate() {
            // SAFETY: row `pairs` < n (asserted).
            *o = _mm512_fmadd_ps(w, unsafe { load16(vp.add(pairs * hd + 16 * i)) }, *o);
        }
    }
    for i in 0..C {
        // SAFETY: 16i + 16 ≤ hd = out.len() (asserted).
        unsafe {
            _mm512_storeu_ps(
                out.as_mut_ptr().add(16 * i),
                _mm512_add_ps(ov[0][i], ov[1][i]),
            )
        };
    }
}

/// # Safety
/// The CPU must support avx2 and fma.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn attend_avx2<T: super::KvElem>(
    q: &[f32],
    keys: &[T],
    n: usize,
    values: &[T],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    super::attend_body(q, keys, n, values, scale, scores, out)
}
