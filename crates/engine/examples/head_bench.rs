//! Times the LM head kernel alone for 1..64 tokens on one thread (diagnosis; the whole batched
//! step is `tritium bench --batch N`).
//! `cargo run --release -p tritium-engine --example head_bench -- FILE.gguf`

use std::time::Instant;

use tritium_engine::{Model, Runtime};

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: head_bench FILE.gguf");
    let m = Model::load(std::path::Path::new(&path), &Runtime::new(1)).unwrap();
    let (d, v) = (m.cfg.d_model, m.cfg.vocab);
    for nt in [1usize, 2, 4, 8, 16, 64] {
        // On cache lines, as the engine's forward passes them.
        let mut x = tritium_engine::kernels::Aligned::filled(nt * d, 0f32);
        for (i, v) in x.iter_mut().enumerate() {
            *v = (i as f32 * 0.37).sin();
        }
        let xs: Vec<&[f32]> = x.chunks_exact(d).collect();
        let mut out = vec![0f32; v * nt];
        let t = Instant::now();
        for _ in 0..20 {
            tritium_engine::kernels::float_dots(m.rt.isa, m.lm_head(), d, 0..v, &xs, &mut out);
        }
        println!(
            "head {nt:2} tokens: {:.3} ms",
            t.elapsed().as_secs_f64() / 20.0 * 1e3
        );
    }
}
