//! Block formats, packed and unpacked exactly as ggml's reference code (and bitnet.cpp for I2_S)
//! does, so our bytes equal `gguf.quants.quantize` byte for byte.
//!
//! Ternary codes are `t = q + 1 ∈ {0, 1, 2}` for `q ∈ {-1, 0, +1}`. The TQ quantizers take any f32
//! values and, like ggml, use the block's absmax as its scale `d` and round half away from zero
//! (`lroundf`): fed `q` they store the trits with `d = 1` (or 0 for an all-zero block); fed `q·s`
//! they store the same trits with `d = fp16(s)`.

use half::f16;

use crate::types::GgmlType;

pub const QK_K: usize = 256;

/// `block_tq2_0`: 2.0625 bits per weight. Mirrors ggml-common.h `block_tq2_0`.
#[repr(C)]
pub struct BlockTq2_0 {
    /// Element `e = 128h + 32l + m` is at bits `2l..2l+2` of byte `32h + m`.
    pub qs: [u8; QK_K / 4],
    /// Value = `(t − 1)·d`.
    pub d: f16,
}
pub const TQ2_0_BYTES: usize = size_of::<BlockTq2_0>();
const _: () = assert!(TQ2_0_BYTES == 66);

/// `block_tq1_0`: 1.6875 bits per weight, base-3 (5 trits per byte, most significant first, stored
/// as ⌈v·256/243⌉ so a multiply-shift extracts digits). Mirrors ggml-common.h `block_tq1_0`.
#[repr(C)]
pub struct BlockTq1_0 {
    /// Bytes 0..32: elements `m + 32n` (n < 5); 32..48: elements `160 + m + 16n`.
    pub qs: [u8; (QK_K - 4 * QK_K / 64) / 5],
    /// Elements `240 + j + 4n` (n < 4, 5th trit 0).
    pub qh: [u8; QK_K / 64],
    pub d: f16,
}
pub const TQ1_0_BYTES: usize = size_of::<BlockTq1_0>();
const _: () = assert!(TQ1_0_BYTES == 54);

/// `block_q8_0`: value = `q·d`.
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}
pub const Q8_0_BYTES: usize = size_of::<BlockQ8_0>();
const _: () = assert!(Q8_0_BYTES == 34);

/// I2_S (bitnet.cpp, x86 "ACT_PARALLEL" layout): blocks of 128 elements in 32 bytes, byte
/// `32b + j` = `t[128b+j]<<6 | t[128b+32+j]<<4 | t[128b+64+j]<<2 | t[128b+96+j]`; after all codes a
/// 32-byte tail whose first 4 bytes are the tensor's f32 scale.
pub const I2S_BLOCK: usize = 128;

fn absmax_scale(x: &[f32]) -> (f32, f32) {
    let d = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    (d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

/// ggml's `lroundf(x·id) + 1`, clamped into the code range (inputs here are ternary already).
fn trit(x: f32, id: f32) -> u8 {
    ((x * id).round() as i32 + 1).clamp(0, 2) as u8
}

/// `quantize_row_tq2_0_ref`. `x.len()` must be a multiple of 256.
pub fn quantize_tq2_0(x: &[f32]) -> Vec<u8> {
    assert_eq!(
        x.len() % QK_K,
        0,
        "TQ2_0 rows hold whole 256-element blocks"
    );
    let mut out = Vec::with_capacity(x.len() / QK_K * TQ2_0_BYTES);
    for b in x.chunks_exact(QK_K) {
        let (d, id) = absmax_scale(b);
        for h in 0..2 {
            for m in 0..32 {
                let mut q = 0u8;
                for l in 0..4 {
                    q |= trit(b[128 * h + 32 * l + m], id) << (2 * l);
                }
                out.push(q);
            }
        }
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    }
    out
}

pub fn dequantize_tq2_0(bytes: &[u8], out: &mut Vec<f32>) {
    for blk in bytes.chunks_exact(TQ2_0_BYTES) {
        let d = f16::from_le_bytes([blk[64], blk[65]]).to_f32();
        let start = out.len();
        out.resize(start + QK_K, 0.0);
        for h in 0..2 {
            for m in 0..32 {
                let byte = blk[32 * h + m];
                for l in 0..4 {
                    let t = (byte >> (2 * l)) & 3;
                    out[start + 128 * h + 32 * l + m] = (t as f32 - 1.0) * d;
                }
            }
        }
    }
}

fn pack5(trits: impl Iterator<Item = u8>) -> u8 {
    let v = trits.fold(0u16, |v, t| v * 3 + t as u16);
    // ggml: (v·256 + 242) / 243, i.e. ⌈v·256/243⌉.
    (v * 256).div_ceil(243) as u8
}

/// `quantize_row_tq1_0_ref`.
pub fn quantize_tq1_0(x: &[f32]) -> Vec<u8> {
    assert_eq!(
        x.len() % QK_K,
        0,
        "TQ1_0 rows hold whole 256-element blocks"
    );
    let mut out = Vec::with_capacity(x.len() / QK_K * TQ1_0_BYTES);
    for b in x.chunks_exact(QK_K) {
        let (d, id) = absmax_scale(b);
        for m in 0..32 {
            out.push(pack5((0..5).map(|n| trit(b[m + 32 * n], id))));
        }
        for m in 0..16 {
            out.push(pack5((0..5).map(|n| trit(b[160 + m + 16 * n], id))));
        }
        for j in 0..4 {
            // Four trits, then ×3 so the first sits in the most significant place.
            out.push(pack5(
                (0..4)
                    .map(|n| trit(b[240 + j + 4 * n], id))
                    .chain(std::iter::once(0)),
            ));
        }
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    }
    out
}

/// Digit `n` of a base-3 byte: `((byte·3ⁿ mod 256)·3) >> 8`.
fn digit(byte: u8, n: u32) -> u8 {
    let q = byte.wrapping_mul(3u8.wrapping_pow(n));
    ((q as u16 * 3) >> 8) as u8
}

pub fn dequantize_tq1_0(bytes: &[u8], out: &mut Vec<f32>) {
    for blk in bytes.chunks_exact(TQ1_0_BYTES) {
        let d = f16::from_le_bytes([blk[52], blk[53]]).to_f32();
        let v = |t: u8| (t as f32 - 1.0) * d;
        for n in 0..5 {
            out.extend(blk[..32].iter().map(|&b| v(digit(b, n))));
        }
        for n in 0..5 {
            out.extend(blk[32..48].iter().map(|&b| v(digit(b, n))));
        }
        for n in 0..4 {
            out.extend(blk[48..52].iter().map(|&b| v(digit(b, n))));
        }
    }
}

/// The codes `t ∈ {0, 1, 2, 3}` (value `(t − 1)·d`) of one 66-byte TQ2_0 block, in element order,
/// and its `d`.
pub fn tq2_0_codes(blk: &[u8], out: &mut [u8; QK_K]) -> f32 {
    for h in 0..2 {
        for m in 0..32 {
            let byte = blk[32 * h + m];
            for l in 0..4 {
                out[128 * h + 32 * l + m] = (byte >> (2 * l)) & 3;
            }
        }
    }
    f16::from_le_bytes([blk[64], blk[65]]).to_f32()
}

/// The codes (always 0..=2) of one 54-byte TQ1_0 block, in element order, and its `d`.
pub fn tq1_0_codes(blk: &[u8], out: &mut [u8; QK_K]) -> f32 {
    for n in 0..5 {
        for m in 0..32 {
            out[m + 32 * n] = digit(blk[m], n as u32);
        }
        for m in 0..16 {
            out[160 + m + 16 * n] = digit(blk[32 + m], n as u32);
        }
    }
    for n in 0..4 {
        for j in 0..4 {
            out[240 + j + 4 * n] = digit(blk[48 + j], n as u32);
        }
    }
    f16::from_le_bytes([blk[52], blk[53]]).to_f32()
}

/// The codes of one 32-byte I2_S block of 128 elements, in element order.
pub fn i2_s_codes(blk: &[u8], out: &mut [u8; I2S_BLOCK]) {
    for j in 0..32 {
        for (g, shift) in [6u8, 4, 2, 0].into_iter().enumerate() {
            out[32 * g + j] = (blk[j] >> shift) & 3;
        }
    }
}

/// `quantize_row_q8_0_ref`: per 32 values, `d = absmax/127`, `q = round(x/d)` (half away from zero).
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    assert_eq!(x.len() % 32, 0, "Q8_0 rows hold whole 32-element blocks");
    let mut out = Vec::with_capacity(x.len() / 32 * Q8_0_BYTES);
    for b in x.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(
            b.iter()
                .map(|v| ((v * id).round() as i32).clamp(-128, 127) as i8 as u8),
        );
    }
    out
}

pub fn dequantize_q8_0(bytes: &[u8], out: &mut Vec<f32>) {
    for blk in bytes.chunks_exact(Q8_0_BYTES) {
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        out.extend(blk[2..].iter().map(|&q| q as i8 as f32 * d));
    }
}

/// I2_S from ternary values `q ∈ {-1, 0, 1}` (row-major, output rows outer) and the tensor scale.
pub fn quantize_i2_s(q: &[i8], scale: f32) -> Vec<u8> {
    assert_eq!(
        q.len() % I2S_BLOCK,
        0,
        "I2_S packs whole 128-element blocks"
    );
    let mut out = Vec::with_capacity(q.len() / 4 + 32);
    for b in q.chunks_exact(I2S_BLOCK) {
        for j in 0..32 {
            let t = |k: usize| (b[k] + 1) as u8 & 3;
            out.push(t(j) << 6 | t(32 + j) << 4 | t(64 + j) << 2 | t(96 + j));
        }
    }
    out.extend_from_slice(&scale.to_le_bytes());
    out.extend_from_slice(&[0u8; 28]);
    out
}

pub fn dequantize_i2_s(bytes: &[u8], n: usize, out: &mut Vec<f32>) {
    let scale = f32::from_le_bytes(bytes[n / 4..n / 4 + 4].try_into().expect("4 bytes"));
    for blk in bytes[..n / 4].chunks_exact(32) {
        let start = out.len();
        out.resize(start + I2S_BLOCK, 0.0);
        for j in 0..32 {
            for (g, shift) in [6u8, 4, 2, 0].into_iter().enumerate() {
                let t = (blk[j] >> shift) & 3;
                out[start + 32 * g + j] = (t as f32 - 1.0) * scale;
            }
        }
    }
}

pub fn encode_f16(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect()
}

pub fn encode_f32(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Any supported type to f32 (`n` elements).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
        ),
        GgmlType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => dequantize_q8_0(bytes, &mut out),
        GgmlType::Tq1_0 => dequantize_tq1_0(bytes, &mut out),
        GgmlType::Tq2_0 => dequantize_tq2_0(bytes, &mut out),
        GgmlType::I2S => dequantize_i2_s(bytes, n, &mut out),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random ternary values with some all-zero blocks.
    fn trits(n: usize, seed: u64) -> Vec<i8> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if (i / 256) % 5 == 3 {
                    0
                } else {
                    ((s >> 33) % 3) as i8 - 1
                }
            })
            .collect()
    }

    #[test]
    fn ternary_formats_round_trip_exactly() {
        for seed in 0..4 {
            let q = trits(256 * 6, seed);
            let scale = 0.0371f32;
            let qf: Vec<f32> = q.iter().map(|&v| v as f32).collect();
            // d = 1 (exact) form: trits come back exactly.
            for (ty, bytes) in [
                (GgmlType::Tq2_0, quantize_tq2_0(&qf)),
                (GgmlType::Tq1_0, quantize_tq1_0(&qf)),
            ] {
                assert_eq!(bytes.len(), ty.nbytes(q.len()));
                assert_eq!(dequantize(ty, &bytes, q.len()), qf, "{}", ty.name());
            }
            // Folded form: the same trits times fp16(scale).
            let folded: Vec<f32> = qf.iter().map(|v| v * scale).collect();
            let s16 = f16::from_f32(scale).to_f32();
            let want: Vec<f32> = qf.iter().map(|v| v * s16).collect();
            assert_eq!(
                dequantize(GgmlType::Tq2_0, &quantize_tq2_0(&folded), q.len()),
                want
            );
            assert_eq!(
                dequantize(GgmlType::Tq1_0, &quantize_tq1_0(&folded), q.len()),
                want
            );
            // I2_S keeps the exact f32 scale.
            let i2 = quantize_i2_s(&q, scale);
            assert_eq!(i2.len(), GgmlType::I2S.nbytes(q.len()));
            let exact: Vec<f32> = qf.iter().map(|v| v * scale).collect();
            assert_eq!(dequantize(GgmlType::I2S, &i2, q.len()), exact);
        }
    }

    #[test]
    fn codes_agree_with_dequantize() {
        let q = trits(512, 9);
        let qf: Vec<f32> = q.iter().map(|&v| v as f32 * 0.5).collect();
        let mut c = [0u8; QK_K];
        for (ty, bytes, stride) in [
            (GgmlType::Tq2_0, quantize_tq2_0(&qf), TQ2_0_BYTES),
            (GgmlType::Tq1_0, quantize_tq1_0(&qf), TQ1_0_BYTES),
        ] {
            let deq = dequantize(ty, &bytes, 512);
            for (b, blk) in bytes.chunks_exact(stride).enumerate() {
                let d = if ty == GgmlType::Tq2_0 {
                    tq2_0_codes(blk, &mut c)
                } else {
                    tq1_0_codes(blk, &mut c)
                };
                for e in 0..QK_K {
                    assert_eq!(
                        (c[e] as f32 - 1.0) * d,
                        deq[256 * b + e],
                        "{} block {b} element {e}",
                        ty.name()
                    );
                }
            }
        }
        let i2 = quantize_i2_s(&q, 0.25);
        let mut c = [0u8; I2S_BLOCK];
        for (b, blk) in i2[..128].chunks_exact(32).enumerate() {
            i2_s_codes(blk, &mut c);
            for e in 0..I2S_BLOCK {
                assert_eq!(c[e] as i8 - 1, q[128 * b + e]);
            }
        }
    }

    #[test]
    fn all_zero_block_has_zero_scale() {
        let z = vec![0f32; 256];
        let b = quantize_tq2_0(&z);
        assert_eq!(&b[64..66], &[0, 0]);
        assert!(
            b[..64].iter().all(|&x| x == 0x55),
            "code 1 (zero) in all four slots"
        ); // 0b01010101
        assert_eq!(dequantize(GgmlType::Tq1_0, &quantize_tq1_0(&z), 256), z);
    }

    #[test]
    fn tq2_0_layout_by_hand() {
        // Element 0 = +1 (t=2), element 32 = −1 (t=0), element 129 = +1: byte 0 = 2 | 0<<2 | 1<<4 | 1<<6.
        let mut x = vec![0f32; 256];
        x[0] = 1.0;
        x[32] = -1.0;
        x[129] = 1.0;
        let b = quantize_tq2_0(&x);
        assert_eq!(b[0], 0b0101_0010);
        assert_eq!(b[33], 0b0101_0110); // byte 32 + 1 holds elements 129, 161, 193, 225
        assert_eq!(f16::from_le_bytes([b[64], b[65]]).to_f32(), 1.0);
    }

    #[test]
    fn tq1_0_digits_by_hand() {
        // Trits (2, 0, 1, 2, 1) → v = ((((2·3+0)·3+1)·3+2)·3+1 = 178 → ⌈178·256/243⌉ = ⌈187.5⌉ = 188.
        assert_eq!(pack5([2u8, 0, 1, 2, 1].into_iter()), 188);
        let got: Vec<u8> = (0..5).map(|n| digit(188, n)).collect();
        assert_eq!(got, vec![2, 0, 1, 2, 1]);
    }

    #[test]
    fn q8_0_by_hand() {
        let mut x = vec![0f32; 32];
        x[0] = 127.0;
        x[1] = -63.5; // half away from zero → -64
        x[2] = 0.4;
        let b = quantize_q8_0(&x);
        assert_eq!(f16::from_le_bytes([b[0], b[1]]).to_f32(), 1.0);
        assert_eq!((b[2] as i8, b[3] as i8, b[4] as i8), (127, -64, 0));
    }
}
