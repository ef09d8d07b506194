//! Ternary weight matrices in the kernels' packed layout, built from a GGUF tensor at load time,
//! and the threaded matrix × activations product.

use rayon::prelude::*;
use tritium_gguf::GgmlType;
use tritium_gguf::blocks::{
    I2S_BLOCK, QK_K, TQ1_0_BYTES, TQ2_0_BYTES, i2_s_codes, tq1_0_codes, tq2_0_codes,
};

use crate::kernels::{self, BLOCK, Block64, Isa};
use crate::quant::QuantActs;

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
        };
        // Codes and one `d` per 256 packed weights (I2_S has a single tensor scale).
        let mut codes = [0u8; QK_K];
        match ty {
            GgmlType::Tq2_0 | GgmlType::Tq1_0 => {
                let (stride, f): (usize, fn(&[u8], &mut [u8; QK_K]) -> f32) =
                    if ty == GgmlType::Tq2_0 {
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

    pub fn bytes(&self) -> usize {
        self.blocks.len() * 64 + self.scales.len() * 4
    }

    /// `out[t·rows + r] = y` for every token of `a` (rows of `a` are tokens).
    pub fn matmul(&self, isa: Isa, a: &QuantActs, out: &mut [f32]) {
        let nt = a.ntok;
        assert_eq!(a.nb, self.nb, "activation width does not match the matrix");
        assert_eq!(out.len(), nt * self.rows);
        if nt == 1 {
            self.rows_into(isa, a, 0..self.rows, out);
            return;
        }
        // Rows outer in the scratch ([row][token]) so threads own disjoint slices; transposed after.
        let mut tmp = vec![0f32; nt * self.rows];
        let chunk = chunk_rows(self.rows);
        tmp.par_chunks_mut(chunk * nt)
            .enumerate()
            .for_each(|(c, dst)| {
                let r0 = c * chunk;
                self.rows_into(isa, a, r0..r0 + dst.len() / nt, dst);
            });
        for r in 0..self.rows {
            for t in 0..nt {
                out[t * self.rows + r] = tmp[r * nt + t];
            }
        }
    }

    /// Rows `rows` into `dst[(r − rows.start)·ntok + t]`; for one token, splits across threads.
    fn rows_into(&self, isa: Isa, a: &QuantActs, rows: std::ops::Range<usize>, dst: &mut [f32]) {
        let nt = a.ntok;
        if nt == 1 && rows.len() > 64 {
            let chunk = chunk_rows(rows.len());
            dst.par_chunks_mut(chunk).enumerate().for_each(|(c, d)| {
                let r0 = rows.start + c * chunk;
                self.rows_serial(isa, a, r0..r0 + d.len(), d);
            });
        } else {
            self.rows_serial(isa, a, rows, dst);
        }
    }

    fn rows_serial(&self, isa: Isa, a: &QuantActs, rows: std::ops::Range<usize>, dst: &mut [f32]) {
        let (nt, nb) = (a.ntok, self.nb);
        if nt == 1 && !self.per_block {
            let mut dots = vec![0i32; rows.len()];
            kernels::ternary_matvec(
                isa,
                &self.blocks[rows.start * nb..rows.end * nb],
                nb,
                a.row(0),
                &mut dots,
            );
            let (sum, s) = (a.sum(0), a.scale[0]);
            for ((o, d), r) in dst.iter_mut().zip(dots).zip(rows) {
                *o = (d - sum) as f32 * self.scales[r] / s;
            }
            return;
        }
        // Token tiles outermost: a tile's activations stay in L1 while the rows stream past.
        const TILE: usize = 8;
        let mut dots = [0i32; TILE];
        for t0 in (0..nt).step_by(TILE) {
            let t1 = (t0 + TILE).min(nt);
            let xs: Vec<&[i8]> = (t0..t1).map(|t| a.row(t)).collect();
            for (i, r) in rows.clone().enumerate() {
                let w = &self.blocks[r * nb..(r + 1) * nb];
                if !self.per_block {
                    kernels::ternary_dots(isa, w, &xs, &mut dots[..t1 - t0]);
                    for t in t0..t1 {
                        let d = dots[t - t0] - a.sum(t);
                        dst[i * nt + t] = d as f32 * self.scales[r] / a.scale[t];
                    }
                } else {
                    let mut acc = [0f32; TILE];
                    for b in 0..nb {
                        let xb: Vec<&[i8]> = xs.iter().map(|x| &x[BLOCK * b..]).collect();
                        kernels::ternary_dots(isa, &w[b..b + 1], &xb, &mut dots[..t1 - t0]);
                        for t in t0..t1 {
                            let d = dots[t - t0] - a.block_sums[t * nb + b];
                            acc[t - t0] += d as f32 * self.scales[r * nb + b];
                        }
                    }
                    for t in t0..t1 {
                        dst[i * nt + t] = acc[t - t0] / a.scale[t];
                    }
                }
            }
        }
    }
}

/// Rows per parallel task: enough tasks to balance two to a few dozen threads, not so many that
/// scheduling costs show.
fn chunk_rows(rows: usize) -> usize {
    let tasks = rayon::current_num_threads() * 4;
    rows.div_ceil(tasks).max(16)
}
