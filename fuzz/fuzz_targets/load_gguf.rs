//! Feeds arbitrary bytes to the engine's GGUF loader, and runs two tokens through any model that
//! loads. Every outcome must be `Ok` or a clean `Err`: no panic, no out-of-bounds read, no huge
//! allocation. Run: `cargo fuzz run load_gguf fuzz/corpus/load_gguf -- -max_total_time=600`
//! (seed the corpus with `cargo run --release -p tritium-engine --example fuzz_seeds`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tritium_engine::{Logits, Model, Runtime, Session};

fuzz_target!(|data: &[u8]| {
    // One thread: the fuzzer runs inputs back to back, and a team per input would only add noise.
    let Ok(model) = Model::from_bytes(Path::new("fuzz.gguf"), data.to_vec(), &Runtime::new(1))
    else {
        return;
    };
    let ctx = model.cfg.ctx.min(4);
    if let Ok(mut s) = Session::new(&model, ctx) {
        let v = model.cfg.vocab as u32;
        let _ = s.forward(&[0, (v - 1).min(7)], Logits::All);
    }
    let _ = model.tokenizer.encode("Once upon a time");
});
