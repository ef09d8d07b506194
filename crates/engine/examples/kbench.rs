//! Kernel throughput in isolation (single thread): `cargo run --release -p tritium-engine --example kbench`.
use std::time::Instant;
use tritium_engine::kernels::{self, Block64, FloatRows, Isa};

fn main() {
    let isa = Isa::detect();
    let (v, d) = (32000usize, 768usize);
    let w: Vec<u16> = (0..v * d)
        .map(|i| half::f16::from_f32(((i * 7919) % 1000) as f32 * 1e-3).to_bits())
        .collect();
    let x: Vec<f32> = (0..d).map(|i| i as f32 * 1e-3).collect();
    let mut out = vec![0f32; v];
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..10 {
            kernels::float_dots(isa, FloatRows::F16(&w), d, 0..v, &[&x], &mut out);
        }
        let s = t.elapsed().as_secs_f64() / 10.0;
        println!(
            "f16 head {v}x{d}: {:.3} ms, {:.1} GB/s",
            s * 1e3,
            (v * d * 2) as f64 / s / 1e9
        );
    }
    // Ternary: 85M weights as rows of 768.
    let rows = 85_000_000 / 768;
    let nb = 3;
    let blocks: Vec<Block64> = (0..rows * nb)
        .map(|i| Block64([(i % 251) as u8; 64]))
        .collect();
    let xq: Vec<i8> = (0..nb * 256).map(|i| (i % 255) as i8).collect();
    let mut o = [0i32; 1];
    for _ in 0..3 {
        let t = Instant::now();
        let mut acc = 0i64;
        for r in 0..rows {
            kernels::ternary_dots(isa, &blocks[r * nb..(r + 1) * nb], &[&xq], &mut o);
            acc += o[0] as i64;
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "ternary {rows}x768 matvec: {:.3} ms, {:.1} GB/s ({acc})",
            s * 1e3,
            (rows * nb * 64) as f64 / s / 1e9
        );
    }
}
