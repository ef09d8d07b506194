//! Causal self-attention with NEOX RoPE and grouped-query heads, forward and backward, for
//! training. It replaces Burn's composed attention (RoPE as slices and a concat, key/value
//! repeats, a score matmul, a causal mask fill, softmax, a value matmul, head transposes, and the
//! backward of each), taking the projections in their natural `[B, T, heads, hd]` layout so no
//! head transpose or key/value repeat is ever copied.
//!
//! Per query head, with `Q`, `K` the rotated projections and `c = 1/√hd`:
//!
//! ```text
//! P = softmax_causal(c · Q Kᵀ)        O = P V
//! dV += Pᵀ dO     dP = dO Vᵀ     dS = P ⊙ (dP − rowsum(P ⊙ dP))
//! dQ = c · dS K   dK += c · dSᵀ Q            (then each rotated back: RoPE is orthogonal)
//! ```
//!
//! The products run on the `gemm` crate (flex's own), one head per task, heads spread over
//! rayon's threads; a key/value head's gradient is summed over the query heads that share it
//! inside one task, so no two tasks write the same memory.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use crate::fill::{par_parts, unwritten};

use crate::dot_body as dot;
use crate::rows::{exp, max_map, sum_map};

/// Sizes: batch, time, query heads, key/value heads, head width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub kv: usize,
    pub hd: usize,
}

impl Shape {
    fn rep(&self) -> usize {
        self.h / self.kv
    }
}

/// `[len, hd/2]` cosine and sine tables for positions `start..start + len`,
/// angle(p, i) = p · θ^(-2i/hd) in f64, stored as f32. Training (`tritium_model::rope`), this
/// kernel and the engine's KV cache all use these, so their rotations are the same to the bit.
pub fn rope_tables(start: usize, len: usize, hd: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    let half = hd / 2;
    // Each frequency once, not once a position: a training step builds these tables in every
    // layer, on one thread.
    let freq: Vec<f64> = (0..half)
        .map(|i| (theta as f64).powf(-2.0 * i as f64 / hd as f64))
        .collect();
    let mut cos = Vec::with_capacity(len * half);
    let mut sin = Vec::with_capacity(len * half);
    for p in start..start + len {
        for f in &freq {
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (cos, sin)
}

/// What the backward pass needs from the forward one.
#[derive(Clone)]
pub struct Saved {
    pub shape: Shape,
    /// Softmax probabilities `[b, h, t, t]` (zero above the diagonal).
    pub probs: Vec<f32>,
    /// Rotated queries `[b, h, t, hd]` and keys `[b, kv, t, hd]`.
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    /// The forward's RoPE tables, which the backward rotates the gradients back with.
    rope: Rope,
}

impl std::fmt::Debug for Saved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "attention::Saved({:?})", self.shape)
    }
}

/// A strided matrix view for [`mm`]: element `(r, c)` at `ptr + r·rs + c·cs`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

fn view(s: &[f32], rs: usize, cs: usize) -> View {
    View {
        ptr: s.as_ptr(),
        rs: rs as isize,
        cs: cs as isize,
    }
}

/// `dst = (accumulate ? dst : 0) + beta · lhs[m×k] · rhs[k×n]`, single-threaded.
///
/// # Safety
/// Every view must stay inside its allocation for the given sizes and strides, and `dst` must
/// not overlap the inputs nor be written by another thread meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    beta: f32,
) {
    // SAFETY: forwarded contract; gemm reads `dst` only when `accumulate`.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0,
            beta,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Rows per causal block: smaller blocks skip more of the masked half, larger ones keep the
/// products efficient (at 64 of 512 rows, 56% of the full products remain).
const CAUSAL_BLOCK: usize = 64;

/// `[r0, r1)` blocks of `0..t`.
fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t)
        .step_by(CAUSAL_BLOCK)
        .map(move |r0| (r0, (r0 + CAUSAL_BLOCK).min(t)))
}

/// A raw pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: only used by tasks that write disjoint index ranges (argued at each use).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    // A method, not the field: closures would otherwise capture the bare `*mut f32`.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// The RoPE tables of one call.
#[derive(Clone)]
struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    fn new(s: &Shape, theta: f32) -> Rope {
        let (cos, sin) = rope_tables(0, s.t, s.hd, theta);
        Rope { cos, sin }
    }
}

/// Rotates head `head` of `x: [b, t, heads, hd]` for batch row `b` into `dst: [t, hd]`.
fn rope_in(
    x: &[f32],
    s: &Shape,
    heads: usize,
    (b, head): (usize, usize),
    rope: &Rope,
    dst: &mut [f32],
) {
    let (hd, half) = (s.hd, s.hd / 2);
    let (cos, sin) = (&rope.cos, &rope.sin);
    for p in 0..s.t {
        let src = &x[((b * s.t + p) * heads + head) * hd..][..hd];
        let (c, sn) = (&cos[p * half..][..half], &sin[p * half..][..half]);
        let d = &mut dst[p * hd..][..hd];
        for i in 0..half {
            let (x1, x2) = (src[i], src[i + half]);
            d[i] = x1 * c[i] - x2 * sn[i];
            d[i + half] = x2 * c[i] + x1 * sn[i];
        }
    }
}

/// The transpose of [`rope_in`]: rotates the gradient `g: [t, hd]` back and writes it to head
/// `head` of `dst: [b, t, heads, hd]`.
///
/// # Safety
/// No other thread may write that head of `dst` for batch row `b` meanwhile.
unsafe fn rope_out(
    g: &[f32],
    s: &Shape,
    heads: usize,
    (b, head): (usize, usize),
    rope: &Rope,
    dst: Out,
) {
    let (hd, half) = (s.hd, s.hd / 2);
    let (cos, sin) = (&rope.cos, &rope.sin);
    for p in 0..s.t {
        let gr = &g[p * hd..][..hd];
        let (c, sn) = (&cos[p * half..][..half], &sin[p * half..][..half]);
        // SAFETY: this row of this head is inside dst and written by this task alone. It may
        // not be initialized yet: it is only written, as `MaybeUninit`, every element of it.
        let d = unsafe {
            std::slice::from_raw_parts_mut(
                dst.ptr()
                    .add(((b * s.t + p) * heads + head) * hd)
                    .cast::<std::mem::MaybeUninit<f32>>(),
                hd,
            )
        };
        for i in 0..half {
            let (g1, g2) = (gr[i], gr[i + half]);
            d[i].write(g1 * c[i] + g2 * sn[i]);
            d[i + half].write(g2 * c[i] - g1 * sn[i]);
        }
    }
}

crate::multiversion! {
    /// Row `r` of the `t × t` scores becomes the softmax of entries `starts[r]..=r` (all of
    /// `0..=r` without `starts`); the rest 0.
    fn causal_softmax(p: &mut [f32], t: usize, starts: Option<&[u32]>) {
        for r in 0..t {
            let s = starts.map_or(0, |s| s[r] as usize);
            let row = &mut p[r * t..][..t];
            let max = max_map(&row[s..=r], |x| x);
            for x in &mut row[s..=r] {
                *x = exp(*x - max);
            }
            let inv = 1.0 / sum_map(&row[s..=r], |x| x);
            row[s..=r].iter_mut().for_each(|x| *x *= inv);
            row[..s].iter_mut().for_each(|x| *x = 0.0);
            row[r + 1..].iter_mut().for_each(|x| *x = 0.0);
        }
    }
}

crate::multiversion! {
    /// `dS = P ⊙ (dP − rowsum(P ⊙ dP))` in place of `dP` (`ds`), zero above the diagonal.
    fn softmax_backward(ds: &mut [f32], p: &[f32], t: usize) {
        for row in 0..t {
            let (pr, dr) = (&p[row * t..][..=row], &mut ds[row * t..][..t]);
            let d = dot(pr, dr);
            for (x, p) in dr[..=row].iter_mut().zip(pr) {
                *x = p * (*x - d);
            }
            dr[row + 1..].iter_mut().for_each(|x| *x = 0.0);
        }
    }
}

/// Forward. `q: [b, t, h, hd]`, `k`, `v: [b, t, kv, hd]` (before RoPE) → `o: [b, t, h, hd]`.
///
/// `starts` (`[b, t]`, for rows that pack several examples) cuts each query's keys further: the
/// query at position `p` sees keys `starts[p]..=p`, where `starts[p] ≤ p` is the first position
/// of its example. The backward needs nothing more: the probabilities it reads are 0 outside.
pub fn forward(
    s: Shape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    theta: f32,
    starts: Option<&[u32]>,
) -> (Vec<f32>, Saved) {
    let Shape { b, t, h, kv, hd } = s;
    if let Some(st) = starts {
        assert_eq!(st.len(), b * t, "one start a position");
        assert!(
            st.iter().enumerate().all(|(i, &x)| x as usize <= i % t),
            "a start past its own position"
        );
    }
    // At least one query head per key/value head: the backward's first query head of each group
    // is what writes that group's dV.
    assert!(
        hd % 2 == 0 && kv > 0 && h % kv == 0 && h >= kv,
        "attention shape {s:?}"
    );
    assert!(
        q.len() == crate::elems(&[b, t, h, hd])
            && k.len() == crate::elems(&[b, t, kv, hd])
            && v.len() == k.len(),
        "attention input lengths"
    );
    let rope = Rope::new(&s, theta);
    let scale = 1.0 / (hd as f32).sqrt();

    let (kr, _) = par_parts(b * kv * t * hd, t * hd, |i, d| {
        rope_in(k, &s, kv, (i / kv, i % kv), &rope, d)
    });
    let (qr, _) = par_parts(b * h * t * hd, t * hd, |i, d| {
        rope_in(q, &s, h, (i / h, i % h), &rope, d)
    });

    // Not zeroed: the value products below store every element (see the `set_len`).
    let len = b * t * h * hd;
    let mut o = unwritten::<f32>(len);
    let out = Out(o.as_mut_ptr());
    let (probs, _) = par_parts(b * h * t * t, t * t, |i, p: &mut [f32]| {
        let (bi, hh) = (i / h, i % h);
        let g = hh / s.rep();
        let qh = &qr[i * t * hd..][..t * hd];
        let kg = &kr[(bi * kv + g) * t * hd..][..t * hd];
        // Query block [r0, r1) only meets keys [0, r1): the products skip most of the masked
        // half (the entries left out stay 0 and the softmax zeroes everything past the diagonal).
        for (r0, r1) in blocks(t) {
            // SAFETY: rows r0..r1 of the t×t p; rows r0..r1 of qh (t×hd, row stride hd); kgᵀ
            // reads kg[j·hd + c] for c < hd, j < r1 ≤ t.
            unsafe {
                mm(
                    r1 - r0,
                    r1,
                    hd,
                    p.as_mut_ptr().add(r0 * t),
                    t,
                    false,
                    view(&qh[r0 * hd..], hd, 1),
                    view(kg, 1, hd),
                    scale,
                )
            };
        }
        causal_softmax(p, t, starts.map(|st| &st[bi * t..][..t]));
        let vg = &v[g * hd..];
        for (r0, r1) in blocks(t) {
            // SAFETY: rows j < r1 ≤ t of head g of v lie at (bi·t + j)·kv·hd + g·hd, all inside v;
            // rows r0..r1 of p (row stride t) are read up to column r1. The output rows of head
            // hh of batch row bi are written by this task alone.
            unsafe {
                mm(
                    r1 - r0,
                    hd,
                    r1,
                    out.ptr().add(((bi * t + r0) * h + hh) * hd),
                    h * hd,
                    false,
                    view(&p[r0 * t..], t, 1),
                    View {
                        ptr: vg.as_ptr().add(bi * t * kv * hd),
                        rs: (kv * hd) as isize,
                        cs: 1,
                    },
                    1.0,
                )
            };
        }
    });
    // SAFETY: task (bi, hh) stored rows r0..r1 of head hh of batch row bi, hd wide, for blocks
    // that cover 0..t, with `accumulate` false (gemm then writes without reading); the tasks
    // cover every (bi, hh), so all b·t·h·hd elements are initialized. A panicking task leaves
    // through the loop above, before this.
    unsafe { o.set_len(len) };
    (
        o,
        Saved {
            shape: s,
            probs,
            q: qr,
            k: kr,
            rope,
        },
    )
}

/// Backward: from `dO: [b, t, h, hd]` and the forward's `v`, the gradients of the unrotated
/// `q: [b, t, h, hd]`, `k`, `v: [b, t, kv, hd]`.
pub fn backward(saved: &Saved, v: &[f32], d_o: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let s = saved.shape;
    let Shape { b, t, h, kv, hd } = s;
    assert_eq!(
        d_o.len(),
        crate::elems(&[b, t, h, hd]),
        "attention output gradient length"
    );
    // The views below read `v` through raw pointers: its length is what bounds them.
    assert_eq!(
        v.len(),
        crate::elems(&[b, t, kv, hd]),
        "attention value length"
    );
    let rope = &saved.rope;
    let scale = 1.0 / (hd as f32).sqrt();
    // Not zeroed: every element is stored below (see the `set_len`s).
    let (q_len, kv_len) = (b * t * h * hd, b * t * kv * hd);
    let mut dq = unwritten::<f32>(q_len);
    let mut dk = unwritten::<f32>(kv_len);
    let mut dv = unwritten::<f32>(kv_len);
    let (dq_out, dk_out, dv_out) = (
        Out(dq.as_mut_ptr()),
        Out(dk.as_mut_ptr()),
        Out(dv.as_mut_ptr()),
    );

    (0..b * kv).into_par_iter().for_each(|i| {
        let (bi, g) = (i / kv, i % kv);
        let kg = &saved.k[i * t * hd..][..t * hd];
        let mut ds = vec![0f32; t * t];
        let mut dqr = vec![0f32; t * hd];
        let mut dkr = vec![0f32; t * hd];
        let v_g = View {
            ptr: v[(bi * t * kv + g) * hd..].as_ptr(),
            rs: (kv * hd) as isize,
            cs: 1,
        };
        for r in 0..s.rep() {
            let hh = g * s.rep() + r;
            let p = &saved.probs[(bi * h + hh) * t * t..][..t * t];
            let qh = &saved.q[(bi * h + hh) * t * hd..][..t * hd];
            let do_h = View {
                ptr: d_o[(bi * t * h + hh) * hd..].as_ptr(),
                rs: (h * hd) as isize,
                cs: 1,
            };
            // SAFETY (all products below): each view stays inside its slice for its sizes (rows
            // of head hh / g at stride h·hd / kv·hd, row or column blocks of the t×t p and ds
            // within t²); ds, dqr, dkr are this task's own; the dv rows of head g of batch row
            // bi are written by this task alone (one task per key/value head), accumulating
            // over its r query heads. Causality: P and dS are zero above the diagonal, so key
            // block [c0, c1) only meets query rows c0.., and query block [r0, r1) only keys ..r1.
            for (c0, c1) in blocks(t) {
                // dV_g[c0..c1] += P[c0.., c0..c1]ᵀ dO[c0..]
                unsafe {
                    mm(
                        c1 - c0,
                        hd,
                        t - c0,
                        dv_out.ptr().add(((bi * t + c0) * kv + g) * hd),
                        kv * hd,
                        r > 0,
                        view(&p[c0 * t + c0..], 1, t),
                        View {
                            ptr: do_h.ptr.wrapping_offset(c0 as isize * do_h.rs),
                            ..do_h
                        },
                        1.0,
                    )
                };
            }
            for (r0, r1) in blocks(t) {
                // dP[r0..r1, ..r1] = dO[r0..r1] V_g[..r1]ᵀ
                unsafe {
                    mm(
                        r1 - r0,
                        r1,
                        hd,
                        ds.as_mut_ptr().add(r0 * t),
                        t,
                        false,
                        View {
                            ptr: do_h.ptr.wrapping_offset(r0 as isize * do_h.rs),
                            ..do_h
                        },
                        View {
                            ptr: v_g.ptr,
                            rs: 1,
                            cs: v_g.rs,
                        },
                        1.0,
                    )
                };
            }
            softmax_backward(&mut ds, p, t);
            for (r0, r1) in blocks(t) {
                // dQ[r0..r1] = c · dS[r0..r1, ..r1] K_g[..r1]
                unsafe {
                    mm(
                        r1 - r0,
                        hd,
                        r1,
                        dqr.as_mut_ptr().add(r0 * hd),
                        hd,
                        false,
                        view(&ds[r0 * t..], t, 1),
                        view(kg, hd, 1),
                        scale,
                    )
                };
            }
            for (c0, c1) in blocks(t) {
                // dK_g[c0..c1] += c · dS[c0.., c0..c1]ᵀ Q[c0..]
                unsafe {
                    mm(
                        c1 - c0,
                        hd,
                        t - c0,
                        dkr.as_mut_ptr().add(c0 * hd),
                        hd,
                        r > 0,
                        view(&ds[c0 * t + c0..], 1, t),
                        view(&qh[c0 * hd..], hd, 1),
                        scale,
                    )
                };
            }
            // SAFETY: head hh of batch row bi of dq is this task's alone.
            unsafe { rope_out(&dqr, &s, h, (bi, hh), rope, dq_out) };
        }
        // SAFETY: head g of batch row bi of dk is this task's alone.
        unsafe { rope_out(&dkr, &s, kv, (bi, g), rope, dk_out) };
    });
    // SAFETY: task (bi, g) wrote, for every query head hh of its group, head hh of batch row bi
    // of dq (all t rows, by `rope_out`), head g of dk likewise, and head g of dv: its first
    // query head (r = 0) stores key blocks covering 0..t with `accumulate` false. The tasks cover
    // every (bi, g) and the groups every query head, so all elements are initialized. A
    // panicking task leaves through the loop above, before this.
    unsafe {
        dq.set_len(q_len);
        dk.set_len(kv_len);
        dv.set_len(kv_len);
    }
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::lcg;

    /// Straight loops in f64, no RoPE shortcuts: the definition.
    fn reference(
        s: Shape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        theta: f32,
        starts: Option<&[u32]>,
    ) -> Vec<f64> {
        let Shape { b, t, h, kv, hd } = s;
        let half = hd / 2;
        let rot = |x: &[f32], heads: usize, bi: usize, p: usize, hh: usize| -> Vec<f64> {
            let src = &x[((bi * t + p) * heads + hh) * hd..][..hd];
            let mut out = vec![0f64; hd];
            for i in 0..half {
                let a = p as f64 * (theta as f64).powf(-2.0 * i as f64 / hd as f64);
                let (c, sn) = (a.cos(), a.sin());
                out[i] = src[i] as f64 * c - src[i + half] as f64 * sn;
                out[i + half] = src[i + half] as f64 * c + src[i] as f64 * sn;
            }
            out
        };
        let mut o = vec![0f64; b * t * h * hd];
        for bi in 0..b {
            for hh in 0..h {
                let g = hh / (h / kv);
                for i in 0..t {
                    let qi = rot(q, h, bi, i, hh);
                    let first = starts.map_or(0, |st| st[bi * t + i] as usize);
                    let scores: Vec<f64> = (first..=i)
                        .map(|j| {
                            rot(k, kv, bi, j, g)
                                .iter()
                                .zip(&qi)
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (j, ej) in (first..).zip(&e) {
                        for d in 0..hd {
                            o[((bi * t + i) * h + hh) * hd + d] +=
                                ej / z * v[((bi * t + j) * kv + g) * hd + d] as f64;
                        }
                    }
                }
            }
        }
        o
    }

    /// The forward against the f64 definition, and the gradients of `loss = Σ w ⊙ O` against
    /// central differences of that definition, at the coordinates `pick` chooses for each
    /// input (`q`, `k`, `v`) of the given length.
    fn check(
        s: Shape,
        theta: f32,
        seed: u64,
        starts: Option<&[u32]>,
        pick: impl Fn(usize, usize) -> Vec<usize>,
    ) {
        let (nq, nk) = (s.b * s.t * s.h * s.hd, s.b * s.t * s.kv * s.hd);
        let (q, k, v) = (lcg(seed, nq), lcg(seed + 1, nk), lcg(seed + 2, nk));
        let (o, saved) = forward(s, &q, &k, &v, theta, starts);
        let want = reference(s, &q, &k, &v, theta, starts);
        for (a, b) in o.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
        }
        let w = lcg(seed + 3, nq);
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            reference(s, q, k, v, theta, starts)
                .iter()
                .zip(&w)
                .map(|(a, b)| a * *b as f64)
                .sum()
        };
        let (dq, dk, dv) = backward(&saved, &v, &w);
        let h = 1e-3f32;
        for (which, (name, grad)) in [("q", &dq), ("k", &dk), ("v", &dv)].into_iter().enumerate() {
            let heads = if which == 0 { s.h } else { s.kv };
            for i in pick(grad.len(), heads) {
                let base = [q.clone(), k.clone(), v.clone()];
                let (mut a, mut b) = (base.clone(), base);
                a[which][i] += h;
                b[which][i] -= h;
                let n = (loss(&a[0], &a[1], &a[2]) - loss(&b[0], &b[1], &b[2])) / (2.0 * h as f64);
                assert!(
                    (grad[i] as f64 - n).abs() < 1e-3,
                    "d{name}[{i}] {} vs {n}",
                    grad[i]
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "attention value length")]
    fn backward_checks_the_values_it_reads() {
        let s = Shape {
            b: 1,
            t: 4,
            h: 2,
            kv: 1,
            hd: 4,
        };
        let (q, k) = (lcg(1, 32), lcg(2, 16));
        let (_, saved) = forward(s, &q, &k, &k, 10000.0, None);
        // Too short by one head row: the value products would read past its end.
        backward(&saved, &k[..12], &lcg(3, 32));
    }

    /// The tables are the definition's f64 angles rounded to f32, to the bit (the engine's KV
    /// cache and training must rotate alike), from a start past 0.
    #[test]
    fn rope_tables_are_the_definition_to_the_bit() {
        let (start, len, hd, theta) = (5, 7, 12, 10000.0f32);
        let (cos, sin) = rope_tables(start, len, hd, theta);
        for p in 0..len {
            for i in 0..hd / 2 {
                let a = (start + p) as f64 * (theta as f64).powf(-2.0 * i as f64 / hd as f64);
                assert_eq!(cos[p * hd / 2 + i].to_bits(), (a.cos() as f32).to_bits());
                assert_eq!(sin[p * hd / 2 + i].to_bits(), (a.sin() as f32).to_bits());
            }
        }
        assert_eq!(cos.len(), len * hd / 2);
    }

    #[test]
    fn forward_equals_the_definition_and_backward_equals_finite_differences() {
        let s = Shape {
            b: 2,
            t: 5,
            h: 4,
            kv: 2,
            hd: 6,
        };
        // Every coordinate.
        check(s, 100.0, 1, None, |len, _| (0..len).collect());
    }

    #[test]
    fn packed_rows_attend_within_their_examples() {
        let s = Shape {
            b: 2,
            t: 9,
            h: 4,
            kv: 2,
            hd: 6,
        };
        // Row 0: examples at 0..4 and 4..9; row 1: 0..2, 2..7, 7..9.
        let starts = [0, 0, 0, 0, 4, 4, 4, 4, 4, 0, 0, 2, 2, 2, 2, 2, 7, 7];
        check(s, 100.0, 2, Some(&starts), |len, _| (0..len).collect());
        // A start of 0 everywhere is the plain causal attention, to the bit.
        let (n, nk) = (s.b * s.t * s.h * s.hd, s.b * s.t * s.kv * s.hd);
        let (q, k, v) = (lcg(3, n), lcg(4, nk), lcg(5, nk));
        let zeros = [0u32; 18];
        assert_eq!(
            forward(s, &q, &k, &v, 10.0, None).0,
            forward(s, &q, &k, &v, 10.0, Some(&zeros)).0
        );
    }

    #[test]
    fn causal_blocks_give_the_same_attention_past_one_block() {
        // t = 150: blocks of 64, 64 and 22 rows.
        let s = Shape {
            b: 1,
            t: 150,
            h: 2,
            kv: 1,
            hd: 8,
        };
        // Two columns of the last head at rows in every block, both block edges included.
        let rows = [0, 1, 63, 64, 65, 100, 127, 128, 140, 149];
        check(s, 1000.0, 5, None, |_, heads| {
            rows.iter()
                .flat_map(|r| [0, 5].map(|c| (r * heads + heads - 1) * s.hd + c))
                .collect()
        });
    }
}
