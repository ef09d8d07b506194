//! Every SIMD kernel the CPU can run equals the scalar reference bit for bit, and the packed matrix
//! product equals a float64 product of the dequantized weights and activations.

use tritium_engine::Runtime;
use tritium_engine::kernels::{self, Block64, FloatRows, Isa, Trickle};
use tritium_engine::matrix::TernaryMatrix;
use tritium_engine::quant::QuantActs;
use tritium_gguf::GgmlType;
use tritium_gguf::blocks::{dequantize, quantize_i2_s, quantize_tq1_0, quantize_tq2_0};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn f32(&mut self) -> f32 {
        (self.next() % 2_000_001) as f32 / 1_000_000.0 - 1.0
    }
}

/// `n` blocks of random bytes: codes 0..=3 (3 is not ternary, but a corrupt file may hold it and
/// every kernel must agree on it).
fn random_blocks(rng: &mut Rng, n: usize) -> Vec<Block64> {
    (0..n)
        .map(|_| {
            let mut b = Block64([0; 64]);
            b.0.iter_mut().for_each(|v| *v = rng.next() as u8);
            b
        })
        .collect()
}

#[test]
fn ternary_simd_equals_scalar() {
    let mut rng = Rng(1);
    let isas = Isa::available();
    eprintln!("testing {:?}", isas);
    for nb in [1usize, 2, 3, 8] {
        // Codes 0..=3 (3 is not ternary but a corrupt file may hold it: every kernel must agree).
        let w: Vec<Block64> = random_blocks(&mut rng, nb);
        for ntok in [1usize, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 33] {
            let xs: Vec<Vec<i8>> = (0..ntok)
                .map(|t| {
                    (0..nb * 256)
                        .map(|i| match (t + i) % 97 {
                            0 => -128,
                            1 => 127,
                            _ => rng.next() as i8,
                        })
                        .collect()
                })
                .collect();
            let refs: Vec<&[i8]> = xs.iter().map(|v| v.as_slice()).collect();
            let mut want = vec![0i32; ntok];
            kernels::ternary_dots(Isa::Scalar, &w, &refs, &mut want);
            // The reference against a direct sum from the layout's definition.
            for t in 0..ntok {
                let direct: i32 = (0..nb * 256)
                    .map(|e| w[e / 256].get(e % 256) as i32 * xs[t][e] as i32)
                    .sum();
                assert_eq!(want[t], direct);
            }
            for &isa in &isas {
                let mut got = vec![0i32; ntok];
                kernels::ternary_dots(isa, &w, &refs, &mut got);
                assert_eq!(got, want, "{isa:?} nb={nb} ntok={ntok}");
            }
        }
    }
}

#[test]
fn ternary_rows_equal_one_dot_per_row() {
    let mut rng = Rng(3);
    for nb in [1usize, 3] {
        let rows = 5;
        let w: Vec<Block64> = random_blocks(&mut rng, rows * nb);
        for ntok in 1..=16usize {
            let xs: Vec<Vec<i8>> = (0..ntok)
                .map(|_| (0..nb * 256).map(|_| rng.next() as i8).collect())
                .collect();
            let refs: Vec<&[i8]> = xs.iter().map(|v| v.as_slice()).collect();
            let mut want = vec![0i32; rows * ntok];
            for (r, o) in want.chunks_exact_mut(ntok).enumerate() {
                kernels::ternary_dots(Isa::Scalar, &w[r * nb..(r + 1) * nb], &refs, o);
            }
            for &isa in &Isa::available() {
                let mut got = vec![0i32; rows * ntok];
                kernels::ternary_rows(isa, &w, nb, &refs, &mut got);
                assert_eq!(got, want, "{isa:?} nb={nb} ntok={ntok}");
            }
        }
    }
}

#[test]
fn one_token_matvec_equals_one_dot_per_row() {
    let mut rng = Rng(7);
    for nb in [1usize, 3, 6] {
        // Whole groups of 16 rows, and a remainder.
        for rows in [1usize, 5, 16, 17, 40] {
            let w: Vec<Block64> = random_blocks(&mut rng, rows * nb);
            let x: Vec<i8> = (0..nb * 256)
                .map(|i| match i % 89 {
                    0 => -128,
                    1 => 127,
                    _ => rng.next() as i8,
                })
                .collect();
            let mut want = vec![0i32; rows];
            for (r, o) in want.iter_mut().enumerate() {
                kernels::ternary_dots(
                    Isa::Scalar,
                    &w[r * nb..(r + 1) * nb],
                    &[&x],
                    std::slice::from_mut(o),
                );
            }
            for &isa in &Isa::available() {
                let mut got = vec![0i32; rows];
                kernels::ternary_matvec(isa, &w, nb, &x, &mut got);
                assert_eq!(got, want, "{isa:?} nb={nb} rows={rows}");
            }
        }
    }
}

/// The one-token path at its extremes, against sums worked out by hand: every code 3 against −128,
/// every code 2 against 127, and code 3 in the top plane only, over rows of 64 blocks.
#[test]
fn one_token_matvec_extremes() {
    let nb = 64; // 16384 weights a row
    // (every byte, every activation, a row's sum): 3 · −128 · 16384; 2 · 127 · 16384; code 3 in
    // the top plane only, so 4096 products of 3 · −128.
    for (byte, act, sum) in [
        (0xffu8, -128i8, -6_291_456),
        (0xaa, 127, 4_161_536),
        (0xc0, -128, -1_572_864),
    ] {
        let w = vec![Block64([byte; 64]); 2 * nb];
        let x = vec![act; nb * 256];
        for &isa in &Isa::available() {
            let mut got = vec![0i32; 2];
            kernels::ternary_matvec(isa, &w, nb, &x, &mut got);
            assert_eq!(got, [sum; 2], "{isa:?} byte {byte:#x}");
        }
    }
}

#[test]
fn scaled_block_rows_equal_the_per_block_sum() {
    let mut rng = Rng(5);
    for nb in [1usize, 3] {
        let rows = 5;
        let w: Vec<Block64> = random_blocks(&mut rng, rows * nb);
        let scales: Vec<f32> = (0..rows * nb).map(|_| rng.f32() + 0.5).collect();
        for ntok in 1..=16usize {
            let xs: Vec<Vec<i8>> = (0..ntok)
                .map(|_| (0..nb * 256).map(|_| rng.next() as i8).collect())
                .collect();
            let refs: Vec<&[i8]> = xs.iter().map(|v| v.as_slice()).collect();
            let sums: Vec<i32> = (0..ntok * nb)
                .map(|i| (i as i32 * 37) % 500 - 250)
                .collect();
            // The definition: each block's exact dot, less its sum, times its scale, in block order.
            let mut want = vec![0f32; rows * ntok];
            for r in 0..rows {
                for t in 0..ntok {
                    let mut acc = 0f32;
                    for b in 0..nb {
                        let dot: i32 = (0..256)
                            .map(|e| w[r * nb + b].get(e) as i32 * xs[t][256 * b + e] as i32)
                            .sum();
                        acc += (dot - sums[t * nb + b]) as f32 * scales[r * nb + b];
                    }
                    want[r * ntok + t] = acc;
                }
            }
            for &isa in &Isa::available() {
                let mut got = vec![0f32; rows * ntok];
                kernels::ternary_rows_scaled(isa, &w, nb, &refs, &sums, &scales, &mut got);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{isa:?} nb={nb} ntok={ntok}");
            }
        }
    }
}

#[test]
fn float_simd_equals_scalar() {
    let mut rng = Rng(2);
    for d in [16usize, 48, 64, 256] {
        // At d = 256, more rows than one of the wide kernel's row blocks (96 KiB: 96 f32 rows,
        // 192 f16 rows), so token tiles restart at block edges.
        let rows = if d == 256 { 203 } else { 11 };
        let w32: Vec<f32> = (0..rows * d).map(|_| rng.f32()).collect();
        let w16: Vec<u16> = w32
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect();
        for ntok in [1usize, 2, 3, 4, 5, 7, 8, 9, 11, 16, 18, 24] {
            let xs: Vec<Vec<f32>> = (0..ntok)
                .map(|_| (0..d).map(|_| rng.f32() * 3.0).collect())
                .collect();
            let refs: Vec<&[f32]> = xs.iter().map(|v| v.as_slice()).collect();
            // The kernels read the grouped layout; the f64 check below reads the plain rows.
            let g32 = kernels::grouped(w32.clone(), d);
            let g16 = kernels::grouped(w16.clone(), d);
            for (w, plain) in [
                (FloatRows::F32(&g32), FloatRows::F32(&w32)),
                (FloatRows::F16(&g16), FloatRows::F16(&w16)),
            ] {
                for range in [0..rows, 3..10, 1..rows] {
                    let mut want = vec![0f32; range.len() * ntok];
                    kernels::float_dots(Isa::Scalar, w, d, range.clone(), &refs, &mut want);
                    for &isa in &Isa::available() {
                        let mut got = vec![0f32; range.len() * ntok];
                        kernels::float_dots(isa, w, d, range.clone(), &refs, &mut got);
                        let (gb, wb): (Vec<u32>, Vec<u32>) = (
                            got.iter().map(|v| v.to_bits()).collect(),
                            want.iter().map(|v| v.to_bits()).collect(),
                        );
                        assert_eq!(gb, wb, "{isa:?} d={d} ntok={ntok} rows={range:?}");
                    }
                    // And the canonical order is a dot product (f64 check, loose).
                    for (i, r) in range.clone().enumerate() {
                        for t in 0..ntok {
                            let exact: f64 = (0..d)
                                .map(|j| {
                                    let wv = match plain {
                                        FloatRows::F32(v) => v[r * d + j],
                                        FloatRows::F16(v) => {
                                            half::f16::from_bits(v[r * d + j]).to_f32()
                                        }
                                    };
                                    wv as f64 * xs[t][j] as f64
                                })
                                .sum();
                            assert!(
                                (want[i * ntok + t] as f64 - exact).abs() < 1e-4,
                                "{} vs {exact}",
                                want[i * ntok + t]
                            );
                        }
                    }
                }
            }
        }
    }
}

fn trits(rng: &mut Rng, n: usize) -> Vec<i8> {
    (0..n)
        .map(|i| {
            if (i / 256) % 7 == 5 {
                0
            } else {
                (rng.next() % 3) as i8 - 1
            }
        })
        .collect()
}

/// y = W·x with W dequantized by the GGUF reader and x = q/s, in f64.
fn reference(wdeq: &[f32], rows: usize, cols: usize, a: &QuantActs, t: usize) -> Vec<f64> {
    let x = a.row(t);
    (0..rows)
        .map(|r| {
            (0..cols)
                .map(|j| wdeq[r * cols + j] as f64 * x[j] as f64)
                .sum::<f64>()
                / a.scale[t] as f64
        })
        .collect()
}

#[test]
fn packed_matmul_equals_dequantized_product_for_every_format() {
    let rt = Runtime::new(2);
    let mut rng = Rng(3);
    for (rows, cols) in [(5usize, 256usize), (33, 768), (7, 512)] {
        let q = trits(&mut rng, rows * cols);
        let s = 0.0123f32;
        let qf: Vec<f32> = q.iter().map(|&v| v as f32).collect();
        let folded: Vec<f32> = qf.iter().map(|v| v * s).collect();
        let mut files = vec![
            (GgmlType::Tq2_0, quantize_tq2_0(&qf), s), // exact form: d = 1, scale tensor s
            (GgmlType::Tq2_0, quantize_tq2_0(&folded), 1.0), // folded: d = fp16(s)
            (GgmlType::Tq1_0, quantize_tq1_0(&qf), s),
            (GgmlType::I2S, quantize_i2_s(&q, s), 1.0),
        ];
        // Per-block scales that differ (a file quantized from float weights by llama.cpp).
        let varied: Vec<f32> = qf
            .iter()
            .enumerate()
            .map(|(i, v)| v * (1.0 + (i / 256) as f32 * 0.25))
            .collect();
        files.push((GgmlType::Tq2_0, quantize_tq2_0(&varied), 1.0));
        for (k, (ty, bytes, extra)) in files.into_iter().enumerate() {
            let m = TernaryMatrix::from_gguf(ty, &bytes, cols, rows, extra).unwrap();
            // One block per row still has one scale per row.
            assert_eq!(m.per_block, k == 4 && cols > 256, "case {k}");
            let wdeq: Vec<f32> = dequantize(ty, &bytes, rows * cols)
                .iter()
                .map(|v| v * extra)
                .collect();
            for ntok in [1usize, 3, 10, 40] {
                let x: Vec<f32> = (0..ntok * cols).map(|_| rng.f32() * 4.0).collect();
                let mut a = QuantActs::default();
                a.quantize(&x, cols);
                for &isa in &Isa::available() {
                    let mut y = vec![0f32; ntok * rows];
                    m.matmul(&rt.clone().with_isa(isa), &a, &mut y);
                    for t in 0..ntok {
                        let want = reference(&wdeq, rows, cols, &a, t);
                        let scale = want.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
                        for r in 0..rows {
                            let err = (y[t * rows + r] as f64 - want[r]).abs() / scale;
                            assert!(
                                err < 1e-5,
                                "{} case {k} {isa:?} t={t} r={r}: {} vs {}",
                                ty.name(),
                                y[t * rows + r],
                                want[r]
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn batches_and_prompts_on_panels_equal_the_row_blocks_and_one_token_at_a_time_bit_for_bit() {
    let rt = Runtime::new(2);
    let mut rng = Rng(6);
    for (rows, cols) in [(5usize, 256usize), (33, 768), (70, 512)] {
        let q = trits(&mut rng, rows * cols);
        let qf: Vec<f32> = q.iter().map(|&v| v as f32).collect();
        let bytes = quantize_tq2_0(&qf);
        let m = TernaryMatrix::from_gguf(GgmlType::Tq2_0, &bytes, cols, rows, 0.0123).unwrap();
        let mp = m.clone().with_panels();
        assert!(m.panels.is_none() && mp.panels.is_some());
        // 2 to 31 tokens (batched decode) split rows between threads, in tiles of 16 tokens;
        // 32 and up take the many-token path; 130 leaves a partial task of 2.
        for ntok in [2usize, 3, 8, 9, 17, 32, 40, 64, 130] {
            let x: Vec<f32> = (0..ntok * cols).map(|_| rng.f32() * 4.0).collect();
            let mut a = QuantActs::default();
            a.quantize(&x, cols);
            for &isa in &Isa::available() {
                let rt = rt.clone().with_isa(isa);
                let (mut rows_y, mut panels_y) = (vec![0f32; ntok * rows], vec![0f32; ntok * rows]);
                m.matmul(&rt, &a, &mut rows_y);
                mp.matmul(&rt, &a, &mut panels_y);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&panels_y),
                    bits(&rows_y),
                    "{isa:?} {rows}x{cols} ntok={ntok}"
                );
                // And what decoding the same tokens one at a time gives.
                for t in [0, ntok / 2, ntok - 1] {
                    let mut one = QuantActs::default();
                    one.quantize(&x[t * cols..(t + 1) * cols], cols);
                    let mut y = vec![0f32; rows];
                    mp.matmul(&rt, &one, &mut y);
                    assert_eq!(bits(&y), bits(&panels_y[t * rows..(t + 1) * rows]), "t={t}");
                }
            }
        }
    }
    // A matrix with a scale per block keeps its row blocks only.
    let varied: Vec<f32> = (0..4 * 512)
        .map(|i| ((i % 3) as f32 - 1.0) * (1 + i / 256) as f32)
        .collect();
    let m =
        TernaryMatrix::from_gguf(GgmlType::Tq2_0, &quantize_tq2_0(&varied), 512, 4, 1.0).unwrap();
    assert!(m.per_block && m.with_panels().panels.is_none());
}

#[test]
fn i2_s_rows_of_128_are_padded() {
    // cols = 384 = 1.5 packed blocks: the half block is padded with zero weights.
    let mut rng = Rng(4);
    let (rows, cols) = (3, 384);
    let q = trits(&mut rng, rows * cols);
    let m =
        TernaryMatrix::from_gguf(GgmlType::I2S, &quantize_i2_s(&q, 0.5), cols, rows, 1.0).unwrap();
    assert_eq!(m.nb, 2);
    for r in 0..rows {
        for j in 0..512 {
            let want = if j < cols {
                (q[r * cols + j] + 1) as u8
            } else {
                1
            };
            assert_eq!(m.blocks[r * 2 + j / 256].get(j % 256), want);
        }
    }
}

/// An f16 cache widens each value exactly, so attention over it must give the bits attention
/// gives over the same values stored as f32, on every ISA (and the SIMD load must widen the
/// right halves: odd lengths leave partial blocks).
#[test]
fn attention_over_f16_equals_attention_over_its_f32_values() {
    use half::f16;
    let mut rng = Rng(9);
    for hd in [16usize, 64, 40, 128] {
        for n in [1usize, 3, 16, 17, 50, 129] {
            let q: Vec<f32> = (0..hd).map(|_| rng.f32()).collect();
            let k16: Vec<f16> = (0..kernels::key_len(hd, n))
                .map(|_| f16::from_f32(rng.f32() * 2.0))
                .collect();
            let v16: Vec<f16> = (0..n * hd).map(|_| f16::from_f32(rng.f32())).collect();
            let k32: Vec<f32> = k16.iter().map(|x| x.to_f32()).collect();
            let v32: Vec<f32> = v16.iter().map(|x| x.to_f32()).collect();
            let mut scratch = Vec::new();
            for &isa in &Isa::available() {
                let (mut want, mut got) = (vec![0f32; hd], vec![0f32; hd]);
                let none = Trickle::default();
                kernels::attend(isa, &q, &k32, n, &v32, 0.125, &mut scratch, &mut want, none);
                // With lines to prefetch meanwhile (the other cache): the bits must not move.
                let busy = Trickle::of(&k32, &v32);
                kernels::attend(isa, &q, &k16, n, &v16, 0.125, &mut scratch, &mut got, busy);
                assert_eq!(
                    got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "{isa:?} hd={hd} n={n}"
                );
            }
        }
    }
}

#[test]
fn attention_simd_matches_scalar() {
    let mut rng = Rng(5);
    for hd in [16usize, 64, 40, 128, 160] {
        for n in [1usize, 2, 7, 16, 24, 33, 96, 100, 200, 257] {
            let q: Vec<f32> = (0..hd).map(|_| rng.f32()).collect();
            let k: Vec<f32> = (0..n * hd).map(|_| rng.f32() * 2.0).collect();
            let v: Vec<f32> = (0..n * hd).map(|_| rng.f32()).collect();
            let mut want = vec![0f32; hd];
            let mut scratch = Vec::new();
            // The engine's blocked key layout; the last block's lanes past n hold garbage, which
            // must not reach the result.
            let mut kt = vec![f32::NAN; kernels::key_len(hd, n)];
            for p in 0..n {
                for j in 0..hd {
                    kt[kernels::key_index(hd, p, j)] = k[p * hd + j];
                }
            }
            let none = Trickle::default();
            kernels::attend(
                Isa::Scalar,
                &q,
                &kt,
                n,
                &v,
                0.125,
                &mut scratch,
                &mut want,
                none,
            );
            // The reference against a direct softmax in f64.
            let s: Vec<f64> = (0..n)
                .map(|p| {
                    (0..hd)
                        .map(|j| q[j] as f64 * k[p * hd + j] as f64)
                        .sum::<f64>()
                        * 0.125
                })
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for j in 0..hd {
                let o: f64 = (0..n)
                    .map(|p| (s[p] - m).exp() / z * v[p * hd + j] as f64)
                    .sum();
                assert!((want[j] as f64 - o).abs() < 1e-5, "hd={hd} n={n}");
            }
            for &isa in &Isa::available() {
                let mut got = vec![0f32; hd];
                kernels::attend(isa, &q, &kt, n, &v, 0.125, &mut scratch, &mut got, none);
                for j in 0..hd {
                    assert!(
                        (got[j] - want[j]).abs() <= 1e-6 * (1.0 + want[j].abs()),
                        "{isa:?} hd={hd} n={n}: {} vs {}",
                        got[j],
                        want[j]
                    );
                }
            }
        }
    }
}
