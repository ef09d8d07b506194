//! Aggregate decode speed of N sequences decoded together through `forward_batch` (what the
//! server's continuous batching runs each step), against one sequence.
//! `cargo run --release -p tritium-engine --example batch_decode -- FILE.gguf [THREADS] [SEQUENCES]`
//! (a 12-token prompt each, then `STEPS` decode steps, default 256)

use std::time::Instant;

use tritium_engine::forward::{Step, forward_batch};
use tritium_engine::{Logits, Model, Runtime, Session};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::Path::new(
        args.get(1)
            .expect("usage: batch_decode FILE.gguf [THREADS]"),
    );
    let threads = args.get(2).map(|t| t.parse().unwrap()).unwrap_or(0);
    let m = Model::load(path, &Runtime::new(threads)).unwrap();
    if std::env::var("HEAD_ONLY").is_ok() {
        return head_only(&m);
    }
    let prompt = 12usize;
    let steps: usize = std::env::var("STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let ns: Vec<usize> = match args.get(3) {
        Some(n) => vec![n.parse().unwrap()],
        None => vec![1, 2, 4, 8, 16],
    };
    for n in ns {
        let mut sess: Vec<Session> = (0..n)
            .map(|_| Session::new(&m, prompt + steps + 1).unwrap())
            .collect();
        let toks: Vec<Vec<u32>> = (0..n)
            .map(|i| {
                (0..prompt as u32)
                    .map(|t| (t * 31 + i as u32 * 7 + 1) % m.cfg.vocab as u32)
                    .collect()
            })
            .collect();
        run(&mut sess, &toks);
        let t = Instant::now();
        let one: Vec<Vec<u32>> = (0..n).map(|i| vec![i as u32 + 3]).collect();
        for _ in 0..steps {
            run(&mut sess, &one);
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "{n:2} sequences: {:7.1} tokens/s aggregate, {:6.2} ms a step",
            (n * steps) as f64 / s,
            s / steps as f64 * 1e3
        );
    }
}

/// One batched forward: each session runs its own tokens.
fn run(sess: &mut [Session], toks: &[Vec<u32>]) {
    let mut batch: Vec<Step> = sess
        .iter_mut()
        .zip(toks)
        .map(|(s, t)| Step {
            sess: s,
            tokens: t,
            logits: Logits::Last,
        })
        .collect();
    forward_batch(&mut batch).unwrap();
}

/// Times the LM head kernel alone for 1..16 tokens (diagnosis).
#[allow(dead_code)]
pub fn head_only(m: &Model) {
    let d = m.cfg.d_model;
    let v = m.cfg.vocab;
    let x: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin()).collect();
    for nt in [1usize, 2, 4, 8, 16] {
        let xs: Vec<&[f32]> = (0..nt).map(|_| &x[..]).collect();
        let mut out = vec![0f32; v * nt];
        let t = Instant::now();
        for _ in 0..20 {
            tritium_engine::kernels::float_dots(m.rt.isa, m.lm_head(), d, 0..v, &xs, &mut out);
        }
        println!(
            "head {nt:2} tokens: {:.3} ms (one thread)",
            t.elapsed().as_secs_f64() / 20.0 * 1e3
        );
    }
}
