//! Writes valid synthetic GGUF files into fuzz/corpus/load_gguf as the fuzzer's starting corpus.
use tritium_engine::synthetic::{Spec, gguf};
use tritium_gguf::GgmlType;

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/load_gguf");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (weights, d)) in [
        (GgmlType::I2S, 128),
        (GgmlType::Tq2_0, 256),
        (GgmlType::Tq1_0, 256),
    ]
    .into_iter()
    .enumerate()
    {
        let spec = Spec {
            d_model: d,
            d_ff: d,
            weights,
            ..Spec::default()
        };
        std::fs::write(dir.join(format!("seed{i}.gguf")), gguf(&spec)).unwrap();
    }
}
