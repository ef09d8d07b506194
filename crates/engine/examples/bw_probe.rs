//! Memory bandwidth of the decode kernels with two threads, beside a plain streaming read: the
//! f16 LM head (`float_dots`, one token) and the ternary matvec, over weights far larger than the
//! caches, each pass split in 256-row chunks over the engine's thread team (diagnosis; the
//! whole step is `tritium bench --bandwidth`).
//!
//! `cargo run --release -p tritium-engine --example bw_probe -- VOCAB D_MODEL BLOCKS TERNARY_BYTES`
//! (2B4T: `128256 2560 10 523000000`; bitnet-125m: `32000 768 3 22000000`)

use std::time::Instant;

use tritium_engine::kernels::pool::Pool;
use tritium_engine::kernels::{self, Block64, FloatRows, Isa};

/// `f` over `0..n` in `chunk`s on the engine's own team of two threads.
fn par(pool: &Pool, n: usize, chunk: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    pool.run(n.div_ceil(chunk), &|c| {
        f(c * chunk..((c + 1) * chunk).min(n))
    });
}

/// GB/s of `reps` calls of `f`, each touching `bytes`.
fn rate(bytes: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    (bytes * reps) as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|x| {
            x.parse()
                .expect("usage: bw_probe VOCAB D_MODEL BLOCKS TERNARY_BYTES")
        })
        .collect();
    let [v, d, nb, ternary_bytes] = a[..] else {
        panic!("usage: bw_probe VOCAB D_MODEL BLOCKS TERNARY_BYTES");
    };
    let isa = Isa::detect();
    let pool = Pool::new(2);
    let w: Vec<u16> = (0..v * d)
        .map(|i| half::f16::from_f32(((i * 7919) % 1000) as f32 * 1e-3).to_bits())
        .collect();
    let x = kernels::Aligned::filled(d, 0.001f32);
    let rows = ternary_bytes / (nb * 64);
    let blocks: Vec<Block64> = (0..rows * nb)
        .map(|i| Block64([(i % 251) as u8; 64]))
        .collect();
    let xq: Vec<i8> = (0..nb * 256).map(|i| (i % 255) as i8).collect();
    let big: Vec<u64> = (0..(600usize << 20) / 8).map(|i| i as u64).collect();
    for _ in 0..4 {
        let read = rate(big.len() * 8, 5, || {
            par(&pool, big.len(), 1 << 17, |r| {
                std::hint::black_box(big[r].iter().fold(0u64, |a, &b| a.wrapping_add(b)));
            })
        });
        let head = rate(v * d * 2, 20, || {
            par(&pool, v, 256, |r| {
                let mut o = vec![0f32; r.len()];
                kernels::float_dots(isa, FloatRows::F16(&w), d, r, &[&x], &mut o);
                std::hint::black_box(&o);
            })
        });
        let ternary = rate(rows * nb * 64, 20, || {
            par(&pool, rows, 256, |r| {
                let mut o = vec![0i32; r.len()];
                kernels::ternary_matvec(isa, &blocks[r.start * nb..r.end * nb], nb, &xq, &mut o);
                std::hint::black_box(&o);
            })
        });
        println!(
            "read {read:.1} GB/s | f16 head {head:.1} GB/s | ternary matvec {ternary:.1} GB/s"
        );
    }
}
