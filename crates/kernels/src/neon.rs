//! aarch64 NEON ternary kernel (baseline NEON only: widening multiplies, no `sdot`), so it runs on
//! every ARMv8 core. Float dot products use the scalar reference on this architecture.

use std::arch::aarch64::*;

use super::Block64;

/// # Safety
/// The CPU must support neon; every `xs[t]` holds `256·w.len()` values; `out.len() == xs.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn ternary_dots(w: &[Block64], xs: &[&[i8]], out: &mut [i32]) {
    let m = vdupq_n_u8(3);
    for (x, o) in xs.iter().zip(out.iter_mut()) {
        let mut acc = vdupq_n_s32(0);
        for (b, blk) in w.iter().enumerate() {
            for q in 0..4 {
                // SAFETY: bytes 16q..16q+16 of a 64-byte block.
                let wv = unsafe { vld1q_u8(blk.0.as_ptr().add(16 * q)) };
                let c = [
                    vandq_u8(wv, m),
                    vandq_u8(vshrq_n_u8::<2>(wv), m),
                    vandq_u8(vshrq_n_u8::<4>(wv), m),
                    vandq_u8(vshrq_n_u8::<6>(wv), m),
                ];
                for (l, c) in c.iter().enumerate() {
                    // SAFETY: 256·b + 64·l + 16·q + 16 ≤ x.len().
                    let xv = unsafe { vld1q_s8(x.as_ptr().add(256 * b + 64 * l + 16 * q)) };
                    let c = vreinterpretq_s8_u8(*c);
                    let lo = vmull_s8(vget_low_s8(c), vget_low_s8(xv));
                    let hi = vmull_high_s8(c, xv);
                    acc = vpadalq_s16(acc, lo);
                    acc = vpadalq_s16(acc, hi);
                }
            }
        }
        *o = vaddvq_s32(acc);
    }
}
