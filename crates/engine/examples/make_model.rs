//! Random-weight `bitnet` GGUF files at the shapes the engine is benchmarked on (what
//! `scripts/bench-shapes.sh` runs):
//! `cargo run --release -p tritium-engine --example make_model -- SHAPE OUT.gguf [tq2_0|tq1_0|i2_s]`
//! with SHAPE one of
//! - `125m`: bitnet-125m (hidden 768, 12 layers, 12 heads, d_ff 2048, vocab 32000, SiLU);
//! - `700m`: 1bitLLM's bitnet_b1_58-large (hidden 1536, 24 layers, 16 heads, d_ff 4096, vocab
//!   32002, SiLU);
//! - `2b4t`: BitNet b1.58 2B4T (hidden 2560, 30 layers, 20 heads and 5 key/value heads, d_ff 6912,
//!   vocab 128256, ReLU²).
//!
//! Trits are uniform over {-1, 0, 1} with one scale per projection; the embedding (also the LM
//! head) is F16.

use tritium_engine::synthetic::{Spec, gguf};
use tritium_gguf::GgmlType;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: make_model 125m|700m|2b4t OUT.gguf [tq2_0|tq1_0|i2_s]";
    let (shape, out) = (args.get(1).expect(usage), args.get(2).expect(usage));
    let weights = match args.get(3).map(String::as_str) {
        None | Some("tq2_0") => GgmlType::Tq2_0,
        Some("tq1_0") => GgmlType::Tq1_0,
        Some("i2_s") => GgmlType::I2S,
        Some(other) => panic!("{other}: {usage}"),
    };
    // (hidden, layers, heads, kv heads, d_ff, vocab, relu²)
    let (d_model, n_layers, n_heads, n_kv_heads, d_ff, vocab, relu2) = match shape.as_str() {
        "125m" => (768, 12, 12, 12, 2048, 32000, false),
        "700m" => (1536, 24, 16, 16, 4096, 32002, false),
        "2b4t" => (2560, 30, 20, 5, 6912, 128256, true),
        _ => panic!("{shape}: {usage}"),
    };
    let spec = Spec {
        d_model,
        d_ff,
        n_layers,
        n_heads,
        n_kv_heads,
        ctx: 4096,
        weights,
        // The scale in every block, as llama.cpp's own TQ files have it (it reads these too).
        exact_scales: false,
        seed: 7,
        vocab,
        relu2,
    };
    let bytes = gguf(&spec);
    std::fs::write(out, &bytes).unwrap_or_else(|e| panic!("{out}: {e}"));
    eprintln!("{out}: {shape}, {} MB", bytes.len() / 1_000_000);
}
