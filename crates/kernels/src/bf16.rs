//! bf16 matrix products: the operands rounded to bf16 (nearest, ties to even, as PyTorch's
//! autocast rounds), every product accumulated in f32. Two paths, chosen once per process:
//! - AMX tiles (Intel Sapphire Rapids and later): one `tdpbf16ps` multiplies a 16×32 tile of A by
//!   a 32×16 tile of B into a 16×16 f32 tile, 8192 multiply-adds, about sixteen times what
//!   AVX-512 FMA does in the same cycles;
//! - AVX512-BF16 (`vdpbf16ps`, AMD Zen 4, and Intel CPUs that have it without AMX): a pair of
//!   bf16 products added into each f32 lane, twice an f32 FMA's work per instruction.
//!
//! Both read the same packed operands.
//!
//! Operands are packed first, into the tile layouts, padded with zeros to whole tiles:
//! - A, `[m/16][k/32]` tiles of `[16 rows][32 k]` bf16 (row-major: a tile row is 64 bytes);
//! - B, `[n/16][k/32]` tiles of `[16 k-pairs][16 columns][2]` bf16: the pairs of consecutive `k`
//!   for one column side by side, the "VNNI" order the instruction reads.
//!
//! The tile unit is used only through the inline assembly below (Rust has no stable AMX
//! intrinsics); the compiler never touches tile registers itself, so they are ours between
//! `ldtilecfg` and `tilerelease` within one call.

use std::mem::MaybeUninit;

use crate::Block64;
use crate::dense::Operand;
use crate::fill::{uninit, unwritten};
use crate::panels::Panels;

/// Rows (and columns) of a tile, and `k` per tile.
const T: usize = 16;
const KT: usize = 32;
/// bf16 values in one packed tile (1 KiB).
const TILE: usize = T * KT;

/// How this CPU runs the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Amx,
    Avx512Bf16,
}

/// The path this CPU takes (AMX where it has it), or `None` without either. Decided once.
pub fn path() -> Option<Path> {
    static PATH: std::sync::OnceLock<Option<Path>> = std::sync::OnceLock::new();
    *PATH.get_or_init(|| {
        if amx() {
            Some(Path::Amx)
        } else if avx512_bf16() {
            Some(Path::Avx512Bf16)
        } else {
            None
        }
    })
}

/// What the `vdpbf16ps` path and its packing need.
fn avx512_bf16() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx512f") && has!("avx512bw") && has!("avx512bf16")
}

/// Whether this CPU runs bf16 products at all (see [`path`]).
pub fn supported() -> bool {
    path().is_some()
}

/// Whether this CPU has AMX-BF16 and the kernel lets this process use the tile registers (Linux
/// asks a process to request them once). Decided once.
fn amx() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE (std's detection of these is
        // not stable yet). Only where leaf 0 says leaf 7 exists.
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        let edx = if __cpuid(0).eax >= 7 {
            __cpuid_count(7, 0).edx
        } else {
            0
        };
        let cpu = edx & (1 << 22) != 0 && edx & (1 << 24) != 0;
        cpu && request_tiles()
    })
}

#[cfg(target_os = "linux")]
fn request_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM only sets this process's permission bits; it
    // reads and writes no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tiles() -> bool {
    false
}

/// f32 → bf16, rounded to nearest even; NaN stays NaN (quieted), infinities stay infinite.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 → f32 (exact).
#[inline(always)]
pub fn f32_of(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `q[i] / s` as bf16 ([`to_bf16`] of the f32 quotient) for each int8 of a quantized row: the
/// row back in real units, as a BitLinear's dW reads it. Sixteen at a time where the CPU has
/// AVX-512 (the division and rounding are IEEE's either way, so the bits are the scalar loop's).
pub fn int8_over_scale(q: &[i8], s: f32, dst: &mut [u16]) {
    assert_eq!(q.len(), dst.len(), "one bf16 per int8");
    let mut done = 0;
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
        done = q.len() / 16 * 16;
        // SAFETY: AVX-512 F/BW detected; both slices hold `done` elements.
        unsafe { int8_over_scale_avx512(&q[..done], s, &mut dst[..done]) };
    }
    for (d, &v) in dst[done..].iter_mut().zip(&q[done..]) {
        *d = to_bf16(v as f32 / s);
    }
}

/// [`int8_over_scale`] on whole groups of sixteen.
///
/// # Safety
/// The CPU has AVX-512 F/BW.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn int8_over_scale_avx512(q: &[i8], s: f32, dst: &mut [u16]) {
    assert!(q.len() == dst.len() && q.len().is_multiple_of(16));
    let sv = _mm512_set1_ps(s);
    for (d, v) in dst.chunks_exact_mut(16).zip(q.chunks_exact(16)) {
        // SAFETY: 16 bytes read from `v`, 32 written to `d` (16 u16), both exactly that long.
        unsafe {
            let x = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(v.as_ptr().cast())));
            let b = _mm512_srli_epi32::<16>(round16(_mm512_div_ps(x, sv)));
            _mm256_storeu_si256(d.as_mut_ptr().cast(), _mm512_cvtepi32_epi16(b));
        }
    }
}

/// A's element `(i, l)` as bf16; zero past the matrix (the tiles' padding).
fn a_at(a: Operand, m: usize, k: usize, i: usize, l: usize) -> u16 {
    match (i < m && l < k, a.t) {
        (false, _) => 0,
        (true, false) => to_bf16(a.data[i * k + l]),
        (true, true) => to_bf16(a.data[l * m + i]),
    }
}

/// B's element `(l, j)` as bf16; zero past the matrix.
fn b_at(b: Operand, k: usize, n: usize, l: usize, j: usize) -> u16 {
    match (l < k && j < n, b.t) {
        (false, _) => 0,
        (true, false) => to_bf16(b.data[l * n + j]),
        (true, true) => to_bf16(b.data[j * k + l]),
    }
}

/// One packed operand: `blocks` row (or column) tiles, padded to an even count for the 2 × 2
/// kernel, by `kt` tiles of k, each `len` elements. `fill(tile, start, l0)` writes every element
/// of the tile whose rows (columns) begin at `start` and whose k begins at `l0`; tiles wholly past
/// the `extent` rows (columns) are the padding and are zeroed here. Nothing else is written first:
/// zeroing the whole buffer before packing it cost a memset of every operand of every product.
fn tiles<E: Copy + Default + Send>(
    extent: usize,
    kt: usize,
    len: usize,
    fill: impl Fn(&mut [MaybeUninit<E>], usize, usize) + Sync,
) -> Vec<E> {
    use rayon::prelude::*;
    let total = extent.div_ceil(2 * T) * 2 * kt * len;
    // Tests pack into all-ones bits (bf16 NaN), so an element `fill` skips shows in the product.
    let mut p = unwritten(total);
    let spare = &mut p.spare_capacity_mut()[..total];
    // In parallel: the tied head's weight is 0.3 G elements, packed twice a training step.
    spare
        .par_chunks_exact_mut(len)
        .with_min_len(64)
        .enumerate()
        .for_each(|(i, tile)| {
            let (start, l0) = (i / kt * T, i % kt * KT);
            if start < extent {
                fill(tile, start, l0);
            } else {
                tile.fill(MaybeUninit::new(E::default()));
            }
        });
    // SAFETY: every tile was written above, by `fill` (whose contract is to write all of it) or
    // as padding.
    unsafe { p.set_len(total) };
    p
}

/// A, `m × k`, packed into tiles. Whole tiles inside the matrix take the vector path; edge
/// tiles, element by element.
fn pack_a(a: Operand, m: usize, k: usize) -> (Vec<u16>, usize, usize) {
    let kt = k.div_ceil(KT);
    let simd = crate::has_x86_v4();
    let p = tiles(m, kt, TILE, |tile, i0, l0| {
        if simd && i0 + T <= m && l0 + KT <= k {
            // SAFETY: AVX-512 F/BW present (`has_x86_v4`); the tile lies inside A.
            unsafe { tile_a(a, m, k, i0, l0, tile) };
        } else {
            for r in 0..T {
                for col in 0..KT {
                    tile[r * KT + col].write(a_at(a, m, k, i0 + r, l0 + col));
                }
            }
        }
    });
    (p, m.div_ceil(2 * T) * 2, kt)
}

/// B (`k × n`) in the tile layout, ready for any number of products.
pub struct PackedB {
    data: Vec<u32>,
    k: usize,
    n: usize,
}

/// B, `k × n`, packed into tiles of k-pairs, padded as [`pack_a`]. Each pair is one u32: the
/// lower `k` in the low half.
pub fn pack(b: Operand, k: usize, n: usize) -> PackedB {
    assert_eq!(b.data.len(), crate::elems(&[k, n]), "B's length");
    let simd = crate::has_x86_v4();
    let data = tiles(n, k.div_ceil(KT), TILE / 2, |tile, j0, l0| {
        if simd && j0 + T <= n && l0 + KT <= k {
            // SAFETY: AVX-512 F/BW present; the tile lies inside B.
            unsafe { tile_b(b, k, n, j0, l0, tile) };
        } else {
            for q in 0..T {
                for col in 0..T {
                    let (l, j) = (l0 + 2 * q, j0 + col);
                    tile[q * T + col]
                        .write(b_at(b, k, n, l, j) as u32 | (b_at(b, k, n, l + 1, j) as u32) << 16);
                }
            }
        }
    });
    PackedB { data, k, n }
}

use std::arch::x86_64::*;

/// Sixteen f32 rounded as [`to_bf16`] does, each bf16 in the high half of its 32-bit lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn round16(x: __m512) -> __m512i {
    let b = _mm512_castps_si512(x);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
    let r = _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7fff)), lsb);
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    let quiet = _mm512_or_si512(b, _mm512_set1_epi32(0x0040_0000));
    _mm512_and_si512(
        _mm512_mask_mov_epi32(r, nan, quiet),
        _mm512_set1_epi32(0xffff_0000u32 as i32),
    )
}

/// Two rows' bf16 side by side per lane: `lo`'s in the low half, `hi`'s in the high half.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn pair16(lo: __m512, hi: __m512) -> __m512i {
    _mm512_or_si512(_mm512_srli_epi32::<16>(round16(lo)), round16(hi))
}

/// Thirty-two consecutive f32 at `p` as bf16, in order (sixteen u32 pairs).
///
/// # Safety
/// `p` is readable for 32 f32; the CPU has AVX-512 F/BW.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn run32(p: *const f32) -> __m512i {
    // SAFETY: the caller's contract.
    let (x0, x1) = unsafe { (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))) };
    let n0 = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(round16(x0)));
    let n1 = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(round16(x1)));
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(n0), n1)
}

/// The transpose of a 16 × 16 matrix of 32-bit lanes: `r[i]` lane `j` becomes lane `i` of row
/// `j`. Unpacks within 128-bit lanes, then whole-lane shuffles.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    // t: lane L of t[2g] holds r[2g][4L], r[2g+1][4L], r[2g][4L+1], r[2g+1][4L+1]; t[2g+1] the
    // same of columns 4L+2, 4L+3.
    let t: [__m512i; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(a, b)
        } else {
            _mm512_unpackhi_epi32(a, b)
        }
    });
    // u[4g + e]: lane L holds rows 4g..4g+4 at column 4L + e.
    let u: [__m512i; 16] = std::array::from_fn(|i| {
        let (g, e) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + e / 2], t[4 * g + 2 + e / 2]);
        if e % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    // Row 4L + e of the result gathers lane L of u[e], u[4 + e], u[8 + e], u[12 + e].
    let mut out = [_mm512_setzero_si512(); 16];
    for e in 0..4 {
        let (a, b, c, d) = (u[e], u[4 + e], u[8 + e], u[12 + e]);
        let x0 = _mm512_shuffle_i32x4::<0b01_00_01_00>(a, b);
        let x1 = _mm512_shuffle_i32x4::<0b11_10_11_10>(a, b);
        let y0 = _mm512_shuffle_i32x4::<0b01_00_01_00>(c, d);
        let y1 = _mm512_shuffle_i32x4::<0b11_10_11_10>(c, d);
        out[e] = _mm512_shuffle_i32x4::<0b10_00_10_00>(x0, y0);
        out[4 + e] = _mm512_shuffle_i32x4::<0b11_01_11_01>(x0, y0);
        out[8 + e] = _mm512_shuffle_i32x4::<0b10_00_10_00>(x1, y1);
        out[12 + e] = _mm512_shuffle_i32x4::<0b11_01_11_01>(x1, y1);
    }
    out
}

/// One whole A tile (rows `i0..i0+16`, columns `l0..l0+32`, inside A) into `tile`, all of it.
///
/// # Safety
/// The CPU has AVX-512 F/BW; `i0 + 16 ≤ m`, `l0 + 32 ≤ k`, `tile.len() == TILE`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn tile_a(
    a: Operand,
    m: usize,
    k: usize,
    i0: usize,
    l0: usize,
    tile: &mut [MaybeUninit<u16>],
) {
    assert!(i0 + T <= m && l0 + KT <= k && tile.len() == TILE && a.data.len() == m * k);
    let d = a.data.as_ptr();
    let out = tile.as_mut_ptr().cast::<__m512i>();
    if a.t {
        // Column pairs (l, l+1) over 16 rows, then transposed so each row's pairs line up.
        // SAFETY: rows l0..l0+32 of the stored matrix, entries i0..i0+16, are inside it.
        let cols: [__m512i; 16] = std::array::from_fn(|q| unsafe {
            let l = l0 + 2 * q;
            pair16(
                _mm512_loadu_ps(d.add(l * m + i0)),
                _mm512_loadu_ps(d.add((l + 1) * m + i0)),
            )
        });
        for (r, v) in transpose16(cols).into_iter().enumerate() {
            // SAFETY: row r of the 1 KiB tile is 64 bytes at r·64.
            unsafe { _mm512_storeu_si512(out.add(r), v) };
        }
    } else {
        for r in 0..T {
            // SAFETY: row i0 + r, columns l0..l0+32 are inside A; the tile row is 64 bytes.
            unsafe { _mm512_storeu_si512(out.add(r), run32(d.add((i0 + r) * k + l0))) };
        }
    }
}

/// One whole B tile (pairs of rows `l0..l0+32`, columns `j0..j0+16`, inside B) into `tile`, all
/// of it.
///
/// # Safety
/// The CPU has AVX-512 F/BW; `l0 + 32 ≤ k`, `j0 + 16 ≤ n`, `tile.len() == TILE / 2`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn tile_b(
    b: Operand,
    k: usize,
    n: usize,
    j0: usize,
    l0: usize,
    tile: &mut [MaybeUninit<u32>],
) {
    assert!(l0 + KT <= k && j0 + T <= n && tile.len() == TILE / 2 && b.data.len() == k * n);
    let d = b.data.as_ptr();
    let out = tile.as_mut_ptr().cast::<__m512i>();
    if b.t {
        // A column of B is a stored row: 32 consecutive k as 16 pairs, transposed to [pair][col].
        // SAFETY: stored rows j0..j0+16, entries l0..l0+32, are inside it.
        let cols: [__m512i; 16] =
            std::array::from_fn(|col| unsafe { run32(d.add((j0 + col) * k + l0)) });
        for (q, v) in transpose16(cols).into_iter().enumerate() {
            // SAFETY: pair row q of the tile is 64 bytes at q·64.
            unsafe { _mm512_storeu_si512(out.add(q), v) };
        }
    } else {
        for q in 0..T {
            let l = l0 + 2 * q;
            // SAFETY: rows l, l + 1 < k, columns j0..j0+16 are inside B.
            let v = unsafe {
                pair16(
                    _mm512_loadu_ps(d.add(l * n + j0)),
                    _mm512_loadu_ps(d.add((l + 1) * n + j0)),
                )
            };
            // SAFETY: pair row q of the tile.
            unsafe { _mm512_storeu_si512(out.add(q), v) };
        }
    }
}

/// The tile configuration: palette 1, eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct Config([u8; 64]);

impl Config {
    fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            c[48 + t] = T as u8;
        }
        Config(c)
    }
}

/// `out = a · b` (`a` read as `m × k`, `b` as `k × n`, `out` row-major `[m, n]`) on a chosen path
/// (where the CPU has several, to compare them).
///
/// # Panics
/// If the CPU lacks that path, or the lengths are wrong.
pub fn gemm_on(p: Path, out: &mut [f32], m: usize, n: usize, k: usize, a: Operand, b: Operand) {
    use crate::elems;
    assert!(
        a.data.len() == elems(&[m, k])
            && b.data.len() == elems(&[k, n])
            && out.len() == elems(&[m, n])
    );
    let ok = match p {
        Path::Amx => amx(),
        Path::Avx512Bf16 => avx512_bf16(),
    };
    assert!(ok, "{p:?} products on a CPU without them");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    gemm_packed_on(p, uninit(out), m, n, k, a, &pack(b, k, n).data);
}

/// B given a row at a time: `row(l, dst)` writes row `l`'s `n` values as bf16 bits. For operands
/// that are not f32 matrices (ternary codes, int8 rows) this skips the f32 copy a [`pack`] operand
/// would need; the bits are the same when `row` rounds as [`to_bf16`] does.
pub fn pack_rows(k: usize, n: usize, row: impl Fn(usize, &mut [u16]) + Sync) -> PackedB {
    use rayon::prelude::*;
    let (nt, kt) = (n.div_ceil(2 * T) * 2, k.div_ceil(KT));
    let mut data = vec![0u32; nt * kt * TILE / 2];
    /// The packed buffer shared by the tasks below.
    struct Out(*mut u32);
    // SAFETY: the tasks write disjoint elements (see below) and the buffer outlives them.
    unsafe impl Sync for Out {}
    impl Out {
        fn at(&self, i: usize) -> *mut u32 {
            self.0.wrapping_add(i)
        }
    }
    let out = Out(data.as_mut_ptr());
    let len = data.len();
    // Pairs of rows in parallel (a layer's rows are decoded from codes: real work).
    (0..k.div_ceil(2))
        .into_par_iter()
        .with_min_len(8)
        .for_each_init(
            || (vec![0u16; n], vec![0u16; n]),
            |(r0, r1), q| {
                let l = 2 * q;
                row(l, r0);
                if l + 1 < k {
                    row(l + 1, r1);
                } else {
                    r1.fill(0);
                }
                let (c, pr) = (l / KT, (l % KT) / 2);
                for tj in 0..n.div_ceil(T) {
                    let at = ((tj * kt + c) * T + pr) * T;
                    let cols = tj * T..n.min((tj + 1) * T);
                    let w = cols.len();
                    // Checked once for the run, so the loop below is a plain vector interleave
                    // (an assert per element kept it scalar: 1-2% of a tiny training step).
                    assert!(at + w <= len);
                    let dst = out.at(at);
                    for (i, (&lo, &hi)) in r0[cols.clone()].iter().zip(&r1[cols]).enumerate() {
                        // SAFETY: at + i < at + w ≤ len (asserted); element (tile (tj, c), pair
                        // row pr, column i) belongs to pair q alone, since (c, pr) is q's, so no
                        // two tasks write it and nothing reads `data` until every task has
                        // finished.
                        unsafe { *dst.add(i) = lo as u32 | (hi as u32) << 16 };
                    }
                }
            },
        );
    PackedB { data, k, n }
}

/// A ternary matrix `W` (`rows × cols`, its codes in [`Panels`]) as B (`k = rows`, `n = cols`),
/// each code mapped to `−g, 0, +g` (`g` a bf16): the same bits as [`pack_rows`] of its unpacked
/// rows, straight from the codes. A panel row pair (32 rows) is exactly one B tile's `k` and a
/// 16-column run one tile's columns, so each tile comes from two 64-byte panel blocks with no
/// row buffer in between; the padding codes (weight 0) become the tiles' zero padding.
pub fn pack_ternary(w: &Panels, g: u16) -> PackedB {
    use rayon::prelude::*;
    const _: () = assert!(KT == crate::panels::PAIR && T == crate::panels::RUN);
    let (k, n) = (w.rows, w.cols);
    let levels = [g ^ 0x8000, 0, g];
    if !crate::has_x86_v4() {
        return pack_rows(k, n, |r, dst| w.unpack_row(r, dst, levels));
    }
    let (nt, kt) = (n.div_ceil(2 * T) * 2, k.div_ceil(KT));
    let per = kt * TILE / 2;
    if nt * per == 0 {
        return PackedB {
            data: Vec::new(),
            k,
            n,
        };
    }
    let mut data: Vec<u32> = unwritten(nt * per);
    data.spare_capacity_mut()[..nt * per]
        .par_chunks_mut(per)
        .enumerate()
        .for_each(|(tj, column)| {
            for (c, tile) in column.chunks_exact_mut(TILE / 2).enumerate() {
                if tj < w.nq {
                    let pair = w.pair(c);
                    // SAFETY: AVX-512 F present (`has_x86_v4`); the tile is TILE / 2 long.
                    unsafe { tile_ternary([&pair[2 * tj], &pair[2 * tj + 1]], levels, tile) };
                } else {
                    tile.fill(MaybeUninit::new(0));
                }
            }
        });
    // SAFETY: every tile of every column chunk was written above.
    unsafe { data.set_len(nt * per) };
    PackedB { data, k, n }
}

/// One B tile from a row pair's two blocks of one column run (rows 0–15, then 16–31): pair row
/// `q` holds rows `2q`, `2q + 1`, i.e. words `2q`, `2q + 1` of block `q / 8`.
///
/// # Safety
/// The CPU has AVX-512 F.
#[target_feature(enable = "avx512f")]
unsafe fn tile_ternary(blocks: [&Block64; 2], levels: [u16; 3], tile: &mut [MaybeUninit<u32>]) {
    assert_eq!(tile.len(), TILE / 2);
    // Lane i decodes column i: byte i % 4 of the row's word, bits 2·(i / 4) (see `panels`).
    let shifts = _mm512_setr_epi32(0, 8, 16, 24, 2, 10, 18, 26, 4, 12, 20, 28, 6, 14, 22, 30);
    let [neg, zero, pos] = levels.map(|v| v as i32);
    // Code 3 never occurs; it reads 0.
    let table = _mm512_setr_epi32(neg, zero, pos, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    let three = _mm512_set1_epi32(3);
    let decode = |word: u32| {
        let codes = _mm512_and_si512(
            _mm512_srlv_epi32(_mm512_set1_epi32(word as i32), shifts),
            three,
        );
        _mm512_permutexvar_epi32(codes, table)
    };
    let out = tile.as_mut_ptr().cast::<__m512i>();
    for (h, block) in blocks.into_iter().enumerate() {
        let word = |j: usize| u32::from_le_bytes(block.0[4 * j..4 * j + 4].try_into().unwrap());
        for q in 0..T / 2 {
            let v = _mm512_or_si512(
                decode(word(2 * q)),
                _mm512_slli_epi32::<16>(decode(word(2 * q + 1))),
            );
            // SAFETY: pair row 8h + q of the 1 KiB tile is 64 bytes at that index.
            unsafe { _mm512_storeu_si512(out.add(T / 2 * h + q), v) };
        }
    }
}

/// `a · b` for `a` read as `m × k` and B packed, into a new `[m, n]` matrix written without
/// being zeroed first; with `split`, the rows of (untransposed) `a` in two halves side by side.
/// The `vdpbf16ps` path splits its rows into tasks itself, so `split` only matters on AMX, whose
/// tile loop runs on one thread (a lone product there would otherwise leave the other core idle).
pub fn product_packed(m: usize, a: Operand, b: &PackedB, split: bool) -> Vec<f32> {
    let (k, n) = (b.k, b.n);
    assert!(
        supported(),
        "bf16 products on a CPU without AMX-BF16 or AVX512-BF16"
    );
    assert_eq!(a.data.len(), crate::elems(&[m, k]), "A's length");
    let mn = crate::elems(&[m, n]);
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; mn];
    }
    let mut out = unwritten(mn);
    let dst = &mut out.spare_capacity_mut()[..mn];
    if split && !a.t && m >= 2 {
        let half = m / 2;
        let (top, bottom) = dst.split_at_mut(half * n);
        let (a_top, a_bottom) = a.data.split_at(half * k);
        rayon::join(
            || gemm_packed(top, half, n, k, Operand::n(a_top), &b.data),
            || gemm_packed(bottom, m - half, n, k, Operand::n(a_bottom), &b.data),
        );
    } else {
        gemm_packed(dst, m, n, k, a, &b.data);
    }
    // SAFETY: with m, n, k ≥ 1 `gemm_packed` writes every element of its part (whole blocks by
    // the tile stores, partial ones by the edge copy).
    unsafe { out.set_len(m * n) };
    out
}

/// The product with B already packed by [`pack`] for this `k × n`, writing every element of
/// `out` (`[m, n]`).
fn gemm_packed(out: &mut [MaybeUninit<f32>], m: usize, n: usize, k: usize, a: Operand, pb: &[u32]) {
    let p = path().expect("bf16 products on a CPU without AMX-BF16 or AVX512-BF16");
    gemm_packed_on(p, out, m, n, k, a, pb)
}

/// [`gemm_packed`] on a given path (the tests run both where the CPU has both).
fn gemm_packed_on(
    p: Path,
    out: &mut [MaybeUninit<f32>],
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    pb: &[u32],
) {
    assert_eq!(out.len(), m * n, "output length");
    if m == 0 {
        return;
    }
    let (pa, mt, kt) = pack_a(a, m, k);
    assert_eq!(
        pb.len(),
        n.div_ceil(2 * T) * 2 * kt * TILE / 2,
        "packed B's size"
    );
    // The tile loop runs at least once (its counter would wrap at zero).
    assert!(kt > 0, "k ≥ 1");
    let nt = n.div_ceil(2 * T) * 2;
    if p == Path::Avx512Bf16 {
        use rayon::prelude::*;
        // Row blocks as tasks: a training step runs its two backward products (dX, dW) side by
        // side, and whichever finishes first takes the other's blocks instead of idling. One
        // pass of k tiles at a time across all the tasks, so the pass's block of B (shared by
        // every row) is read from L3, not all of B from memory for every task's rows (the tied
        // head's dX, k = the vocabulary).
        let per = DP_TASK_ROWS * n;
        assert!(per > 0, "n ≥ 1");
        for c0 in (0..kt).step_by(DP_PASS) {
            let ks = c0..(c0 + DP_PASS).min(kt);
            out.par_chunks_mut(per).enumerate().for_each(|(c, part)| {
                let pa = &pa[c * DP_TASK_ROWS / T * kt * TILE..];
                // SAFETY: `path` (or the test that chose it) found AVX-512 F/BW/BF16; `pa` from
                // this block's first tile row holds its rows (DP_TASK_ROWS is whole tiles), and
                // the passes before `ks` wrote every element of `part`.
                unsafe { gemm_dp(part, part.len() / n, n, pa, (kt, ks.clone()), pb, DP_PASS) };
            });
        }
        return;
    }
    assert!(amx(), "AMX products on a CPU without them");
    let cfg = Config::new();
    let mut edge = [0f32; 4 * T * T];
    // SAFETY: the CPU has AMX-BF16 and the process may use tiles (`supported`, asserted).
    unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) &cfg.0, options(nostack, readonly)) };
    // Column blocks outside, so one block of B (2 tiles × kt, ≤ 128 KiB at k = 2048) stays in
    // L2 while every row block of A streams past it.
    for tj in (0..nt).step_by(2) {
        for ti in (0..mt).step_by(2) {
            let (i0, j0) = (ti * T, tj * T);
            let full = i0 + 2 * T <= m && j0 + 2 * T <= n;
            let (c, stride) = if full {
                // SAFETY: i0·n + j0 < m·n = out.len().
                (
                    unsafe { out.as_mut_ptr().add(i0 * n + j0).cast::<f32>() },
                    n * 4,
                )
            } else {
                (edge.as_mut_ptr(), 2 * T * 4)
            };
            // SAFETY: the four tile pointers start blocks of kt packed tiles inside `pa`/`pb`
            // (ti + 1 < mt and tj + 1 < nt, both even counts); each tileloadd reads 16 rows of 64
            // bytes at a 64-byte stride, one 1 KiB tile, and the loop advances kt tiles. The
            // stores write a 32×32 f32 block at `stride` bytes a row: inside `out` when `full`
            // (rows i0..i0+32 ≤ m, columns j0..j0+32 ≤ n), else inside `edge` (32 × 32).
            unsafe {
                std::arch::asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    "2:",
                    "tileloadd tmm4, [{a0} + {s64}*1]",
                    "tileloadd tmm5, [{a1} + {s64}*1]",
                    "tileloadd tmm6, [{b0} + {s64}*1]",
                    "tileloadd tmm7, [{b1} + {s64}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "add {a0}, 1024",
                    "add {a1}, 1024",
                    "add {b0}, 1024",
                    "add {b1}, 1024",
                    "dec {kc}",
                    "jnz 2b",
                    "tilestored [{c} + {cs}*1], tmm0",
                    "tilestored [{c} + {cs}*1 + 64], tmm1",
                    "add {c}, {c16}",
                    "tilestored [{c} + {cs}*1], tmm2",
                    "tilestored [{c} + {cs}*1 + 64], tmm3",
                    a0 = inout(reg) pa.as_ptr().add(ti * kt * TILE) => _,
                    a1 = inout(reg) pa.as_ptr().add((ti + 1) * kt * TILE) => _,
                    b0 = inout(reg) pb.as_ptr().add(tj * kt * TILE / 2) => _,
                    b1 = inout(reg) pb.as_ptr().add((tj + 1) * kt * TILE / 2) => _,
                    kc = inout(reg) kt => _,
                    s64 = in(reg) 64usize,
                    c = inout(reg) c => _,
                    cs = in(reg) stride,
                    c16 = in(reg) stride * T,
                    options(nostack),
                );
            }
            if !full {
                for r in 0..(2 * T).min(m - i0) {
                    let w = (2 * T).min(n - j0);
                    let row = &mut out[(i0 + r) * n + j0..][..w];
                    for (o, &v) in row.iter_mut().zip(&edge[r * 2 * T..][..w]) {
                        o.write(v);
                    }
                }
            }
        }
    }
    // SAFETY: releases this thread's tile state; no tile is used after it.
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
}

/// k tiles per pass of [`gemm_dp`]: a pass's block of two B column tiles (2 KiB a k tile, 64 KiB
/// here) stays in L2 while every row block of A streams past it. Without passes, a product with a
/// long k (the tied head's dX, k = the vocabulary) streamed its B block from L3 for every row block
/// and ran at half the rate.
const DP_PASS: usize = 32;

/// Output rows per parallel task of the `vdpbf16ps` product: whole tiles, so a task's rows start
/// at a tile row of packed A, and whole [`DP_ROWS`] blocks, so no block straddles two tasks.
const DP_TASK_ROWS: usize = 64;
const _: () = assert!(DP_TASK_ROWS.is_multiple_of(T) && DP_TASK_ROWS.is_multiple_of(DP_ROWS));

/// Rows of A per block of [`gemm_dp`] when B is the narrower operand: a pass of them (64 KiB here)
/// is read once from memory and used against every column pair.
const DP_ROWS: usize = 32;

/// The packed product with `vdpbf16ps` over k tiles `ks`: blocks of 8 rows × 32 columns in 16
/// registers, each A pair broadcast against a row of k-pairs of the two B tiles, in passes of
/// `pass` k tiles. A pass after k tile 0 starts each accumulator from the f32 sum the previous one
/// stored, so every lane adds its products in the same order as one pass over all of k would
/// (the same bits).
///
/// # Safety
/// The CPU has AVX-512 F/BW/BF16; `pa` and `pb` are [`pack_a`]/[`pack`] of an `m × k` and `k × n`
/// operand (`kt` tiles of k), `out` has `m·n` elements, and `ks ⊆ 0..kt`, all of whose earlier k
/// tiles were summed into `out` already.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn gemm_dp(
    out: &mut [MaybeUninit<f32>],
    m: usize,
    n: usize,
    pa: &[u16],
    (kt, ks): (usize, std::ops::Range<usize>),
    pb: &[u32],
    pass: usize,
) {
    let nt = n.div_ceil(2 * T) * 2;
    let mt = pa.len() / (kt * TILE);
    assert!(
        out.len() == m * n && m <= mt * T && pb.len() == nt * kt * TILE / 2 && nt.is_multiple_of(2)
    );
    assert!(pass > 0, "a pass takes at least one k tile");
    assert!(ks.end <= kt, "k tiles inside the operands");
    // Rows of A per block: with fewer columns than rows, blocks of DP_ROWS rows stay in L2 while
    // the (smaller) pass of B streams past each; otherwise all of A streams past each column pair.
    let mc = if n <= m {
        DP_ROWS
    } else {
        m.next_multiple_of(DP_R)
    };
    for c0 in ks.clone().step_by(pass) {
        let passed = c0..(c0 + pass).min(ks.end);
        for ic in (0..m).step_by(mc) {
            for tj in (0..nt).step_by(2) {
                for i0 in (ic..(ic + mc).min(m)).step_by(DP_R) {
                    // SAFETY: the caller's contract, and i0 < m, tj + 1 < nt, passed ⊆ 0..kt.
                    unsafe { dp_block(out, (m, n), pa, (kt, pb), (i0, tj), passed.clone()) };
                }
            }
        }
    }
}

/// Rows of one [`gemm_dp`] block.
const DP_R: usize = 8;

/// One block of [`gemm_dp`]: rows `i0..i0 + 8` (fewer at the end) by the columns of B tiles `tj`
/// and `tj + 1`, over k tiles `ks`, starting from the sums in `out` unless `ks` starts at 0.
///
/// # Safety
/// As [`gemm_dp`]'s, with `i0 < m` a multiple of 8, `tj + 1 < nt` and `ks ⊆ 0..kt`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn dp_block(
    out: &mut [MaybeUninit<f32>],
    (m, n): (usize, usize),
    pa: &[u16],
    (kt, pb): (usize, &[u32]),
    (i0, tj): (usize, usize),
    ks: std::ops::Range<usize>,
) {
    let bh = |v: __m512i| -> __m512bh {
        // SAFETY: both are 64-byte plain vectors; the instruction reads the lanes as bf16 pairs.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    };
    let (ti, r0) = (i0 / T, i0 % T);
    let rows = DP_R.min(m - i0);
    let j0 = tj * T;
    let w = (2 * T).min(n - j0);
    // A row's columns j0..j0+w as two masked halves: lanes past `w` are neither read nor written.
    let (k0, k1) = (lanes_mask(w), lanes_mask(w.saturating_sub(T)));
    assert!(out.len() == m * n && i0 < m && j0 + w <= n);
    let base = out.as_mut_ptr().cast::<f32>();
    // SAFETY: element (i0 + i)·n + j0 of `out`, for rows i0 + i < m (i < rows) and j0 < n.
    let at_row = |i: usize| unsafe { base.add((i0 + i) * n + j0) };
    let mut acc = [[_mm512_setzero_ps(); 2]; DP_R];
    if ks.start > 0 {
        // The previous pass wrote these rows' columns j0..j0+w.
        for (i, acc) in acc.iter_mut().enumerate().take(rows) {
            let p = at_row(i);
            // SAFETY: the masks keep the reads inside columns j0..j0+w of the row; the second
            // half starts inside it (w > 16).
            unsafe {
                acc[0] = _mm512_maskz_loadu_ps(k0, p);
                if w > T {
                    acc[1] = _mm512_maskz_loadu_ps(k1, p.add(T));
                }
            }
        }
    }
    for c in ks {
        // SAFETY: tile (ti, c) of A and tiles (tj, c), (tj + 1, c) of B lie inside the packs
        // (ti < mt, tj + 1 < nt, c < kt); rows r0..r0+8 ≤ 16 of the A tile, each 16 u32 pairs,
        // and the B tiles' 16 rows of 16 u32 pairs are read.
        unsafe {
            let at = pa
                .as_ptr()
                .add((ti * kt + c) * TILE)
                .cast::<u32>()
                .add(r0 * T);
            let b0 = pb.as_ptr().add((tj * kt + c) * TILE / 2);
            let b1 = pb.as_ptr().add(((tj + 1) * kt + c) * TILE / 2);
            for q in 0..T {
                let v0 = bh(_mm512_loadu_si512(b0.add(q * T).cast()));
                let v1 = bh(_mm512_loadu_si512(b1.add(q * T).cast()));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let a = bh(_mm512_broadcastd_epi32(_mm_loadu_si32(
                        at.add(i * T + q).cast(),
                    )));
                    acc[0] = _mm512_dpbf16_ps(acc[0], a, v0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], a, v1);
                }
            }
        }
    }
    for (i, acc) in acc.iter().enumerate().take(rows) {
        let p = at_row(i);
        // SAFETY: as the reads above; `out` is exclusively borrowed, so nothing else sees the
        // writes.
        unsafe {
            _mm512_mask_storeu_ps(p, k0, acc[0]);
            if w > T {
                _mm512_mask_storeu_ps(p.add(T), k1, acc[1]);
            }
        }
    }
}

/// The first `w` of sixteen lanes (all sixteen for `w` ≥ 16).
fn lanes_mask(w: usize) -> __mmask16 {
    (((1u32 << w.min(T)) - 1) & 0xffff) as __mmask16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::lcg;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2⁻⁸ is halfway between bf16 1.0 and 1 + 2⁻⁷: ties go to the even mantissa (1.0).
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        // Just above halfway rounds up.
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 0x3f81);
        // 1 + 3·2⁻⁸ is halfway between 1 + 2⁻⁷ (odd) and 1 + 2⁻⁶ (even): up.
        assert_eq!(to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        assert_eq!(to_bf16(-2.0), 0xc000);
        assert_eq!(to_bf16(f32::INFINITY), 0x7f80);
        assert!(f32_of(to_bf16(f32::NAN)).is_nan());
        // The largest finite f32 rounds up to infinity, as IEEE rounding does.
        assert_eq!(to_bf16(f32::MAX), 0x7f80);
    }

    #[test]
    fn vector_packing_equals_the_element_definition() {
        // Whole tiles (vector path) and edges (element path), both layouts, NaN included.
        let (m, k, n) = (48, 96, 40);
        let mut x = lcg(3, m * k);
        x[5] = f32::NAN;
        x[m * k - 1] = -0.0;
        let y = lcg(4, k * n);
        for t in [false, true] {
            let a = Operand { data: &x, t };
            let (p, mt, kt) = pack_a(a, m, k);
            for i in 0..mt * T {
                for l in 0..kt * KT {
                    let got = p[((i / T) * kt + l / KT) * TILE + (i % T) * KT + l % KT];
                    let want = a_at(a, m, k, i, l);
                    assert_eq!(got, want, "A t={t} ({i}, {l})");
                }
            }
            let b = Operand { data: &y, t };
            let (p, kt) = (pack(b, k, n).data, k.div_ceil(KT));
            for l in 0..kt * KT {
                for j in 0..n.div_ceil(2 * T) * 2 * T {
                    let w = p[((j / T) * kt + l / KT) * TILE / 2 + ((l % KT) / 2) * T + j % T];
                    let got = if l % 2 == 0 {
                        w as u16
                    } else {
                        (w >> 16) as u16
                    };
                    assert_eq!(got, b_at(b, k, n, l, j), "B t={t} ({l}, {j})");
                }
            }
        }
    }

    #[test]
    fn rows_packed_one_at_a_time_equal_the_matrix_packing() {
        for (k, n) in [(1, 1), (64, 32), (37, 50)] {
            let y = lcg(9, k * n);
            let want = pack(Operand::n(&y), k, n).data;
            let got = pack_rows(k, n, |l, dst| {
                for (d, &v) in dst.iter_mut().zip(&y[l * n..(l + 1) * n]) {
                    *d = to_bf16(v);
                }
            });
            assert_eq!(got.data, want, "k={k} n={n}");
            let x = lcg(10, 5 * k);
            let direct = product_packed(5, Operand::n(&x), &pack(Operand::n(&y), k, n), false);
            for split in [false, true] {
                assert_eq!(product_packed(5, Operand::n(&x), &got, split), direct);
            }
        }
    }

    #[test]
    fn ternary_tiles_equal_the_unpacked_rows_packed() {
        // Odd rows and columns (partial row pairs and runs), an odd run count (a padding column
        // tile) and an even one.
        for (rows, cols) in [(1, 1), (37, 50), (64, 32), (33, 17), (96, 48), (70, 129)] {
            let w = crate::bitlinear::TernaryMatrix::quantize(
                &lcg(rows as u64, rows * cols),
                rows,
                cols,
            );
            let g = to_bf16(w.scale);
            let levels = [g ^ 0x8000, 0, g];
            let want = pack_rows(rows, cols, |r, dst| w.panels.unpack_row(r, dst, levels));
            // The reference holds every code: all three levels occur (past one weight).
            assert!(
                rows * cols == 1
                    || levels
                        .iter()
                        .all(|l| want.data.iter().any(|&v| v as u16 == *l))
            );
            let got = pack_ternary(&w.panels, g);
            assert_eq!((got.k, got.n), (rows, cols));
            assert_eq!(got.data, want.data, "{rows} x {cols}");
        }
        // An empty matrix packs to nothing on either path.
        let empty = Panels::zeros(0, 5);
        assert!(pack_ternary(&empty, 0x3f80).data.is_empty());
        assert!(pack_rows(0, 5, |_, _| {}).data.is_empty());
        eprintln!("vector path tested: {}", crate::has_x86_v4());
    }

    /// The product of the bf16-rounded operands in f64: what the tile unit computes, up to the
    /// f32 accumulation.
    fn reference(m: usize, n: usize, k: usize, a: Operand, b: Operand) -> Vec<f64> {
        let at = |i: usize, l: usize| {
            f32_of(to_bf16(if a.t {
                a.data[l * m + i]
            } else {
                a.data[i * k + l]
            })) as f64
        };
        let bt = |l: usize, j: usize| {
            f32_of(to_bf16(if b.t {
                b.data[j * k + l]
            } else {
                b.data[l * n + j]
            })) as f64
        };
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|l| at(i, l) * bt(l, j)).sum();
            }
        }
        out
    }

    /// The paths this CPU can run, AMX first.
    fn paths() -> Vec<Path> {
        let mut p = Vec::new();
        if amx() {
            p.push(Path::Amx);
        }
        if avx512_bf16() {
            p.push(Path::Avx512Bf16);
        }
        p
    }

    #[test]
    fn products_equal_the_rounded_reference_for_every_layout_and_odd_shapes() {
        let paths = paths();
        if paths.is_empty() {
            eprintln!("skipped: this CPU has neither AMX-BF16 nor AVX512-BF16");
            return;
        }
        eprintln!("paths tested: {paths:?}");
        for &(m, n, k) in &[
            (1, 1, 1),
            (16, 16, 32),
            (32, 32, 64),
            (33, 17, 31),
            (7, 70, 100),
            (64, 96, 257),
            (100, 33, 3),
            (50, 45, 300),
            // Several row tasks of the vdpbf16ps product, the last one partial; n < m and n > m.
            (150, 40, 70),
            (130, 200, 50),
            // More than one pass of the vdpbf16ps kernel (the last one partial).
            (9, 40, 32 * KT * 2 + 70),
        ] {
            let (x, y) = (lcg(m as u64 + 7, m * k), lcg(n as u64 + 11, k * n));
            for (at, bt) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = Operand { data: &x, t: at };
                let b = Operand { data: &y, t: bt };
                let pb = pack(b, k, n);
                let got = product_packed(m, a, &pb, false);
                // Halves side by side give the same bits: an element's sum never depends on
                // which tile its row shares.
                let split = product_packed(m, a, &pb, true);
                assert_eq!(split, got, "split m={m} n={n} k={k}");
                let want = reference(m, n, k, a, b);
                // Exact products of bf16 values summed in f32: within k f32 roundings of the
                // sum of magnitudes (|a|, |b| ≤ 1 here).
                let bound = k as f64 * f32::EPSILON as f64;
                for &p in &paths {
                    let mut on = vec![f32::NAN; m * n];
                    gemm_on(p, &mut on, m, n, k, a, b);
                    if Some(p) == path() {
                        assert_eq!(on, got, "{p:?} is the default path");
                    }
                    for (idx, (g, w)) in on.iter().zip(&want).enumerate() {
                        assert!(
                            (*g as f64 - w).abs() <= bound,
                            "{p:?} m={m} n={n} k={k} at={at} bt={bt} [{idx}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    /// Passes over k resume each lane's sum where the previous one stored it, so any pass length
    /// gives the bits of one pass over all of k.
    #[test]
    fn vdpbf16ps_passes_give_the_bits_of_one_pass() {
        if !avx512_bf16() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        // Wider than tall (column pairs outside), then taller than wide (row blocks outside).
        for (m, n, k) in [(19, 70, 5 * KT + 9), (75, 40, 5 * KT + 9)] {
            let (x, y) = (lcg(5, m * k), lcg(6, k * n));
            let (pa, _, kt) = pack_a(Operand::n(&x), m, k);
            let pb = pack(Operand::n(&y), k, n);
            let run = |pass: usize| {
                let mut out = vec![f32::NAN; m * n];
                // SAFETY: AVX512-BF16 checked above; the packs are of these shapes.
                unsafe { gemm_dp(uninit(&mut out), m, n, &pa, (kt, 0..kt), &pb.data, pass) };
                out
            };
            let one = run(kt);
            assert!(one.iter().all(|v| v.is_finite()));
            for pass in [1, 2, 5] {
                assert_eq!(run(pass), one, "{m}×{n}: passes of {pass} k tiles");
            }
            // k tiles in two calls, as the parallel product runs a pass across all its tasks.
            let mut two = vec![f32::NAN; m * n];
            for ks in [0..2, 2..kt] {
                // SAFETY: as above; the second call's earlier k tiles are the first call's.
                unsafe { gemm_dp(uninit(&mut two), m, n, &pa, (kt, ks), &pb.data, 2) };
            }
            assert_eq!(two, one, "{m}×{n}: k tiles 0..2, then the rest");
        }
    }

    #[test]
    fn int8_rows_over_their_scale_equal_the_scalar_rounding() {
        // Every int8 value, a length with a tail past the groups of sixteen, awkward scales.
        let q: Vec<i8> = (0..=255u8).map(|v| v as i8).chain([5, -7, 127]).collect();
        for s in [1.0f32, 3.0, 0.013_7, 127.0 / 0.9, 1e-30, 7e30] {
            let mut got = vec![0u16; q.len()];
            int8_over_scale(&q, s, &mut got);
            let want: Vec<u16> = q.iter().map(|&v| to_bf16(v as f32 / s)).collect();
            assert_eq!(got, want, "scale {s}");
        }
    }
}
