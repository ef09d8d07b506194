//! f32 GEMM (the `gemm` crate, what training runs by default) against bf16 on AMX tiles and with
//! AVX512-BF16, on the training step's shapes (each path this CPU has):
//! `cargo run --release -p tritium-kernels --example gemm`.

use std::time::Instant;

use tritium_kernels::dense::{Operand, gemm_into};

fn main() {
    // (what, m, n, k, a transposed, b transposed): a BitLinear backward's dX = dY·W and
    // dW = dYᵀ·X, and the tied head's forward x·Eᵀ and backward, at tiny 8×128 and bitnet-125m
    // 4×512.
    let shapes = [
        ("tiny dX ffn", 1024, 256, 768, false, false),
        ("tiny dW ffn", 768, 256, 1024, true, false),
        ("tiny head", 1024, 4096, 256, false, true),
        ("125m dX attn", 2048, 768, 768, false, false),
        ("125m dW ffn", 2048, 768, 2048, true, false),
        ("125m head", 2048, 50257, 768, false, true),
        ("125m head dX", 2048, 768, 50257, false, false),
        ("125m head dW", 50257, 768, 2048, true, false),
    ];
    // One thread: the figures are a core's rate, against the instruction's peak.
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    one.install(|| shapes.into_iter().for_each(run));
}

/// Times one shape on every path.
fn run((what, m, n, k, at, bt): (&str, usize, usize, usize, bool, bool)) {
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let (oa, ob) = (Operand { data: &a, t: at }, Operand { data: &b, t: bt });
    let mut out = vec![0f32; m * n];
    let flops = 2.0 * (m * n * k) as f64;
    let time = |f: &mut dyn FnMut()| {
        f();
        let reps = (2e10 / flops).clamp(1.0, 50.0) as usize;
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        t.elapsed().as_secs_f64() / reps as f64
    };
    let f32_s = time(&mut || gemm_into(&mut out, m, n, k, oa, ob));
    print!(
        "{what:14} {m:5}×{n:5}×{k:5}: f32 {:7.1} GFLOP/s",
        flops / f32_s / 1e9
    );
    #[cfg(target_arch = "x86_64")]
    {
        use tritium_kernels::bf16::gemm_on;
        for p in bf16_paths() {
            let s = time(&mut || gemm_on(p, &mut out, m, n, k, oa, ob));
            print!(
                ", {p:?} {:6.1} GFLOP/s ({:.1}×)",
                flops / s / 1e9,
                f32_s / s
            );
        }
    }
    println!(" (one thread)");
}

/// The bf16 paths this CPU runs: both where it has AMX (which implies AVX512-BF16 here), else the
/// one it has.
#[cfg(target_arch = "x86_64")]
fn bf16_paths() -> Vec<tritium_kernels::bf16::Path> {
    use tritium_kernels::bf16::{Path, path};
    match path() {
        Some(Path::Amx) => vec![Path::Amx, Path::Avx512Bf16],
        Some(p) => vec![p],
        None => vec![],
    }
}
