//! Reference kernels: plain loops that define what the SIMD versions must return, bit for bit.

use super::{Block64, FloatRows, float_index, reduce16};

pub fn ternary_dots(w: &[Block64], xs: &[&[i8]], out: &mut [i32]) {
    for (x, o) in xs.iter().zip(out.iter_mut()) {
        let mut acc = 0i32;
        for (b, blk) in w.iter().enumerate() {
            let x = &x[256 * b..256 * b + 256];
            for e in 0..256 {
                acc += blk.get(e) as i32 * x[e] as i32;
            }
        }
        *o = acc;
    }
}

fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// One row times one vector in the canonical order: lane `i` accumulates elements `16c + i` with
/// a fused multiply-add, then the lanes reduce pairwise.
fn dot(w: impl Fn(usize) -> f32, x: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    for c in 0..x.len() / 16 {
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane = w(16 * c + i).mul_add(x[16 * c + i], *lane);
        }
    }
    reduce16(lanes)
}

pub fn float_dots(
    w: FloatRows,
    d: usize,
    rows: std::ops::Range<usize>,
    xs: &[&[f32]],
    out: &mut [f32],
) {
    let nt = xs.len();
    for (i, r) in rows.enumerate() {
        for (t, x) in xs.iter().enumerate() {
            out[i * nt + t] = match w {
                FloatRows::F32(v) => dot(|j| v[float_index(d, r, j)], x),
                FloatRows::F16(v) => dot(|j| f16_to_f32(v[float_index(d, r, j)]), x),
            };
        }
    }
}

/// Plain dot products for row widths that are not a multiple of 16 (no SIMD variant; such rows
/// are row-major, see [`float_index`]).
pub fn float_dots_any(
    w: FloatRows,
    d: usize,
    rows: std::ops::Range<usize>,
    xs: &[&[f32]],
    out: &mut [f32],
) {
    assert!(
        !d.is_multiple_of(16),
        "rows a multiple of 16 wide are grouped: float_dots"
    );
    let nt = xs.len();
    for (i, r) in rows.enumerate() {
        for (t, x) in xs.iter().enumerate() {
            out[i * nt + t] = match w {
                FloatRows::F32(v) => v[r * d..(r + 1) * d]
                    .iter()
                    .zip(*x)
                    .map(|(a, b)| a * b)
                    .sum(),
                FloatRows::F16(v) => v[r * d..(r + 1) * d]
                    .iter()
                    .zip(*x)
                    .map(|(&a, b)| f16_to_f32(a) * b)
                    .sum(),
            };
        }
    }
}
