//! Ternary weight matrices in the kernels' packed layout, built from a GGUF tensor at load time,
//! and the threaded matrix × activations product.

use std::ops::Range;

use tritium_gguf::GgmlType;
use tritium_gguf::blocks::{
    I2S_BLOCK, QK_K, TQ1_0_BYTES, TQ2_0_BYTES, i2_s_codes, tq1_0_codes, tq2_0_codes,
};

use crate::kernels::panels::{self, PAIR, Panels};
use crate::kernels::{self, BLOCK, Block64, Isa};
use crate::quant::QuantActs;
use crate::runtime::Runtime;

/// `rows × cols` ternary weights; `y[r] = Σ_j (t[r][j] − 1)·x[j] · scale`.
#[derive(Debug, Clone)]
pub struct TernaryMatrix {
    pub rows: usize,
    pub cols: usize,
    /// Packed blocks per row: ⌈cols / 256⌉ (the tail is padded with zero weights).
    pub nb: usize,
    /// `rows × nb` blocks.
    pub blocks: Vec<Block64>,
    /// One scale per row, or per (row, block) when `per_block` (a file whose blocks carry
    /// different `d`): the factor that turns the integer dot product into the weight side of `y`.
    pub scales: Vec<f32>,
    pub per_block: bool,
    /// The same codes in the many-token layout ([`kernels::panels`], training's forward), for
    /// prompts and batches; one token at a time stays on the row blocks, which are faster for
    /// it. Built by
    /// [`Self::with_panels`] (one scale per row only).
    pub panels: Option<Panels>,
}

impl TernaryMatrix {
    /// Packs a GGUF ternary tensor of ggml shape `[cols, rows]`, multiplying every block's own
    /// scale by `extra` (the exact `.scale` tensor tritium writes, or 1).
    pub fn from_gguf(
        ty: GgmlType,
        data: &[u8],
        cols: usize,
        rows: usize,
        extra: f32,
    ) -> Result<Self, String> {
        let nb = cols.div_ceil(BLOCK);
        let mut m = TernaryMatrix {
            rows,
            cols,
            nb,
            blocks: vec![Block64::ZERO; rows * nb],
            scales: vec![0.0; rows * nb],
            per_block: true,
            panels: None,
        };
        // Codes and one `d` per 256 packed weights (I2_S has a single tensor scale).
        let mut codes = [0u8; QK_K];
        match ty {
            GgmlType::Tq2_0 | GgmlType::Tq1_0 => {
                type Decode = fn(&[u8], &mut [u8; QK_K]) -> f32;
                let (stride, f): (usize, Decode) = if ty == GgmlType::Tq2_0 {
                    (TQ2_0_BYTES, tq2_0_codes)
                } else {
                    (TQ1_0_BYTES, tq1_0_codes)
                };
                for (i, blk) in data.chunks_exact(stride).enumerate() {
                    let d = f(blk, &mut codes);
                    m.put(i, &codes, d * extra);
                }
            }
            GgmlType::I2S => {
                let n = rows * cols;
                let scale = f32::from_le_bytes(data[n / 4..n / 4 + 4].try_into().expect("4 bytes"));
                let mut c = [0u8; I2S_BLOCK];
                // Rows are whole I2_S blocks when cols % 128 == 0, which load checks; fill the 256-blocks
                // half by half.
                for (i, blk) in data[..n / 4].chunks_exact(32).enumerate() {
                    i2_s_codes(blk, &mut c);
                    let (row, half) = (i * I2S_BLOCK / cols, (i * I2S_BLOCK % cols) / I2S_BLOCK);
                    let b = row * nb + half / 2;
                    for (e, &t) in c.iter().enumerate() {
                        m.blocks[b].set((half % 2) * 128 + e, t);
                    }
                    m.scales[b] = scale * extra;
                }
            }
            other => return Err(format!("{} is not a ternary type", other.name())),
        }
        m.compact_scales();
        Ok(m)
    }

    /// Stores the `i`-th 256-weight source block (row-major over `rows × cols/256`).
    fn put(&mut self, i: usize, codes: &[u8; QK_K], d: f32) {
        let per_row = self.cols / QK_K;
        let b = (i / per_row) * self.nb + i % per_row;
        if d == 0.0 {
            return; // all-zero block: keep the zero codes whatever the file says
        }
        for (e, &t) in codes.iter().enumerate() {
            self.blocks[b].set(e, t);
        }
        self.scales[b] = d;
    }

    /// One scale per row when every non-zero block of the row has the same one (always true for
    /// tritium's exports and for BitNet's per-tensor scale).
    fn compact_scales(&mut self) {
        let nb = self.nb;
        let mut row_scales = Vec::with_capacity(self.rows);
        for r in 0..self.rows {
            let s = &self.scales[r * nb..(r + 1) * nb];
            let first = s.iter().copied().find(|&v| v != 0.0).unwrap_or(0.0);
            if s.iter()
                .any(|&v| v != 0.0 && v.to_bits() != first.to_bits())
            {
                return; // genuinely per-block
            }
            row_scales.push(first);
        }
        for r in 0..self.rows {
            for b in 0..nb {
                if self.scales[r * nb + b] == 0.0 {
                    // A zero-scale block contributes nothing; its codes must say so too.
                    self.blocks[r * nb + b] = Block64::ZERO;
                }
            }
        }
        self.scales = row_scales;
        self.per_block = false;
    }

    /// Stacks matrices with the same input width into one (rows of `a` first), so inputs shared by
    /// several projections (Q, K, V; gate, up) are quantized once and go through one threaded pass.
    pub fn stack(parts: Vec<TernaryMatrix>) -> TernaryMatrix {
        let cols = parts[0].cols;
        assert!(parts.iter().all(|p| p.cols == cols));
        let per_block = parts.iter().any(|p| p.per_block);
        let nb = parts[0].nb;
        let mut out = TernaryMatrix {
            rows: 0,
            cols,
            nb,
            blocks: Vec::new(),
            scales: Vec::new(),
            per_block,
            panels: None,
        };
        for p in parts {
            out.rows += p.rows;
            out.blocks.extend_from_slice(&p.blocks);
            if per_block && !p.per_block {
                out.scales
                    .extend(p.scales.iter().flat_map(|&s| std::iter::repeat_n(s, nb)));
            } else {
                out.scales.extend_from_slice(&p.scales);
            }
        }
        out
    }

    /// Adds the many-token layout of these codes (rows with one scale each; a matrix with a scale
    /// per block keeps the row blocks only). Prompts and batches then run through it; the results
    /// are the same bits (the same integer sums, rescaled in the same order).
    pub fn with_panels(mut self) -> Self {
        if self.per_block || self.rows == 0 || self.cols == 0 {
            return self;
        }
        let (blocks, nb) = (&self.blocks, self.nb);
        let p = Panels::from_rows(self.rows, self.cols, |r, dst| {
            // A block's code e is bits 2·(e / 64) of byte e % 64 ([`Block64::get`]): four planes
            // of 64, a loop that vectorizes (2B weights at load).
            for (blk, out) in blocks[r * nb..(r + 1) * nb]
                .iter()
                .zip(dst.chunks_mut(BLOCK))
            {
                for (l, plane) in out.chunks_mut(64).enumerate() {
                    for (d, &byte) in plane.iter_mut().zip(&blk.0) {
                        *d = (byte >> (2 * l)) & 3;
                    }
                }
            }
        });
        self.panels = Some(p);
        self
    }

    /// [`Self::with_panels`] when `yes`.
    pub fn with_panels_if(self, yes: bool) -> Self {
        if yes { self.with_panels() } else { self }
    }

    pub fn bytes(&self) -> usize {
        self.blocks.len() * 64 + self.scales.len() * 4
    }

    /// `out[t·rows + r] = y` for every token of `a` (rows of `a` are tokens).
    pub fn matmul(&self, rt: &Runtime, a: &QuantActs, out: &mut [f32]) {
        let (isa, pool) = (rt.isa, &*rt.pool);
        let nt = a.ntok;
        assert_eq!(a.nb, self.nb, "activation width does not match the matrix");
        assert_eq!(out.len(), nt * self.rows);
        let panels = self.panels.as_ref().filter(|_| panels::preferred(isa));
        if let (Some(p), true) = (panels, nt >= 2 * TILE) {
            // Many tokens (prompts) on the many-token layout: threads take token ranges, each
            // streaming the whole matrix against its tokens. The kernel's factor 1 leaves each
            // integer sum as an f32; the rescale is then `rescale`'s, in its order.
            let ones = [1f32; PROMPT_TOKENS];
            // Tasks of at most PROMPT_TOKENS, as many as a whole multiple of the threads, evenly.
            let threads = pool.threads().max(1);
            let tasks = nt.div_ceil(PROMPT_TOKENS).div_ceil(threads) * threads;
            let per = nt.div_ceil(tasks);
            pool.for_each_chunk(out, per * self.rows, |c, dst| {
                let t0 = c * per;
                let n = dst.len() / self.rows;
                let xs: Vec<&[i8]> = (t0..t0 + n).map(|t| a.row(t)).collect();
                let out = kernels::fill::uninit(dst);
                panels::product(isa, p, &xs, &a.sums()[t0..t0 + n], &ones[..n], out);
                self.rescale_panels(a, t0, 0..self.rows, dst);
            });
            return;
        }
        if nt >= 2 * TILE {
            // Many tokens (prompts): threads take token tiles, each streaming the whole matrix
            // (from L2/L3) against its tile and writing its own output rows.
            pool.for_each_chunk(out, TILE * self.rows, |c, dst| {
                let t0 = c * TILE;
                self.tile_into(
                    isa,
                    a,
                    t0..t0 + dst.len() / self.rows,
                    0..self.rows,
                    dst,
                    self.rows,
                    1,
                );
            });
        } else {
            // One or a few tokens (decode): threads take row ranges.
            if nt == 1 {
                // One token: [row][token] is [token][row]; write in place. Each thread streams
                // its own share of the rows (see `for_each_share`).
                pool.for_each_share(out, SHARE_BLOCK, |r0, dst| {
                    self.matvec_into(isa, a, r0..r0 + dst.len(), dst);
                });
                return;
            }
            let outs = out.chunks_exact_mut(self.rows).collect();
            if let Some(p) = panels {
                // A few tokens (batched decode) on the many-token layout: its lanes are rows, so
                // no dot product is summed across lanes (twice the row blocks' rate at 2–16
                // tokens). Threads take runs of whole row pairs of every token's output, on
                // shares; a block of two pairs is the most one thread then waits for the other.
                let block = 2 * PAIR;
                let ones = [1f32; TILE];
                let sums = a.sums();
                pool.for_each_row_part(outs, block, |rows, parts| {
                    let pairs = rows.start / PAIR..rows.end.div_ceil(PAIR);
                    for (t0, part) in (0..nt).step_by(TILE).zip(parts.chunks_mut(TILE)) {
                        let t1 = t0 + part.len();
                        let mut xs: [&[i8]; TILE] = [&[]; TILE];
                        for (x, t) in xs.iter_mut().zip(t0..t1) {
                            *x = a.row(t);
                        }
                        let xs = &xs[..t1 - t0];
                        let ones = &ones[..t1 - t0];
                        // The rows as write-only storage, on the stack (no allocation a call).
                        let mut rows = part.iter_mut();
                        let mut out: [&mut [std::mem::MaybeUninit<f32>]; TILE] =
                            std::array::from_fn(|_| {
                                rows.next()
                                    .map_or(&mut [][..], |r| kernels::fill::uninit(r))
                            });
                        let out = &mut out[..t1 - t0];
                        panels::product_pairs(isa, p, pairs.clone(), xs, &sums[t0..t1], ones, out);
                    }
                    for (t, part) in parts.iter_mut().enumerate() {
                        self.rescale_panels(a, t, rows.clone(), part);
                    }
                });
                return;
            }
            // A few tokens (batched decode): threads take row ranges of every token's output.
            let chunk = chunk_rows(self.rows, pool.threads());
            pool.for_each_row_range(outs, chunk, |rows, buf| {
                for t0 in (0..nt).step_by(TILE) {
                    let t1 = (t0 + TILE).min(nt);
                    self.tile_into(isa, a, t0..t1, rows.clone(), &mut buf[t0..], 1, nt);
                }
            });
        }
    }

    /// Panel products (factor 1, so each integer sum as an f32) back to real units in
    /// [`rescale`]'s order: `dst` holds rows `rows` of tokens `t0..`, token after token.
    fn rescale_panels(&self, a: &QuantActs, t0: usize, rows: Range<usize>, dst: &mut [f32]) {
        let scales = &self.scales[rows.clone()];
        for (row, t) in dst.chunks_exact_mut(rows.len()).zip(t0..) {
            let inv = a.inv_scale[t];
            for (o, &ws) in row.iter_mut().zip(scales) {
                *o = *o * ws * inv;
            }
        }
    }

    /// One token, rows `rows`, into `dst[r − rows.start]`.
    fn matvec_into(&self, isa: Isa, a: &QuantActs, rows: Range<usize>, dst: &mut [f32]) {
        let nb = self.nb;
        if self.per_block {
            return self.tile_into(isa, a, 0..1, rows, dst, dst.len(), 1);
        }
        // The row scales are read once a token, after the kernel: without this their misses
        // came one after another at the end of every task (3% of 125m decode).
        let scales = &self.scales[rows.clone()];
        let mut ahead = kernels::Trickle::of(scales, &[] as &[f32]);
        ahead.fetch(ahead.lines());
        // The integer sums go into `dst` itself and are rescaled in place: no allocation a task.
        let dots: &mut [i32] = bytemuck::cast_slice_mut(dst);
        kernels::ternary_matvec(
            isa,
            &self.blocks[rows.start * nb..rows.end * nb],
            nb,
            a.row(0),
            dots,
        );
        let (sum, inv) = (a.sum(0), a.inv_scale[0]);
        for (o, &ws) in dst.iter_mut().zip(scales) {
            let d = o.to_bits() as i32;
            *o = rescale(d - sum, ws, inv);
        }
    }

    /// Tokens `toks` (at most [`TILE`]) × rows `rows` into
    /// `dst[(t − toks.start)·tok_stride + (r − rows.start)·row_stride]`. Nothing is allocated:
    /// decode calls this for every row range of every matrix.
    #[allow(clippy::too_many_arguments)]
    fn tile_into(
        &self,
        isa: Isa,
        a: &QuantActs,
        toks: Range<usize>,
        rows: Range<usize>,
        dst: &mut [f32],
        tok_stride: usize,
        row_stride: usize,
    ) {
        let nb = self.nb;
        let n = toks.len();
        let mut rows_of: [&[i8]; TILE] = [&[]; TILE];
        for (x, t) in rows_of.iter_mut().zip(toks.clone()) {
            *x = a.row(t);
        }
        let xs = &rows_of[..n];
        if !self.per_block {
            // One kernel call for the whole row range, a bounded slice of it at a time.
            const PER: usize = 64;
            let mut all = [0i32; PER * TILE];
            let (sums, inv) = (&a.sums()[toks.clone()], &a.inv_scale[toks.clone()]);
            for r0 in rows.clone().step_by(PER) {
                let r1 = (r0 + PER).min(rows.end);
                let out = &mut all[..(r1 - r0) * n];
                kernels::ternary_rows(isa, &self.blocks[r0 * nb..r1 * nb], nb, xs, out);
                for (j, r) in (r0..r1).enumerate() {
                    let (i, ws, dots) = (r - rows.start, self.scales[r], &out[j * n..(j + 1) * n]);
                    if tok_stride == 1 {
                        // Batched decode: a row's tokens side by side, a loop that vectorizes.
                        let d = &mut dst[i * row_stride..i * row_stride + n];
                        for (((o, &v), &s), &f) in d.iter_mut().zip(dots).zip(sums).zip(inv) {
                            *o = rescale(v - s, ws, f);
                        }
                    } else {
                        for (k, ((&v, &s), &f)) in dots.iter().zip(sums).zip(inv).enumerate() {
                            dst[k * tok_stride + i * row_stride] = rescale(v - s, ws, f);
                        }
                    }
                }
            }
            return;
        }
        // A scale per (row, block): the kernel sums the scaled blocks, a slice of rows a call.
        const PER: usize = 64;
        let mut all = [0f32; PER * TILE];
        let sums = &a.block_sums[toks.start * nb..toks.end * nb];
        for r0 in rows.clone().step_by(PER) {
            let r1 = (r0 + PER).min(rows.end);
            let out = &mut all[..(r1 - r0) * n];
            kernels::ternary_rows_scaled(
                isa,
                &self.blocks[r0 * nb..r1 * nb],
                nb,
                xs,
                sums,
                &self.scales[r0 * nb..r1 * nb],
                out,
            );
            for (j, r) in (r0..r1).enumerate() {
                let i = r - rows.start;
                for (k, t) in toks.clone().enumerate() {
                    dst[k * tok_stride + i * row_stride] = out[j * n + k] * a.inv_scale[t];
                }
            }
        }
    }
}

/// Tokens per task on the many-token layout: their int8 rows stay in L2 while the matrix streams
/// past (as training's forward does).
const PROMPT_TOKENS: usize = 64;

/// Tokens per kernel call: the activations of a tile stay in L1 while weight rows stream past.
const TILE: usize = 16;

/// The integer dot product back to real units, one rounding order for every path.
#[inline(always)]
fn rescale(d: i32, w_scale: f32, inv_act_scale: f32) -> f32 {
    d as f32 * w_scale * inv_act_scale
}

/// Rows a one-token product's threads claim and steal at a time at least.
const SHARE_BLOCK: usize = 16;

/// Rows per parallel task: enough tasks to balance two to a few dozen threads, not so many that
/// scheduling costs show.
fn chunk_rows(rows: usize, threads: usize) -> usize {
    let tasks = threads * 4;
    rows.div_ceil(tasks).max(16)
}
