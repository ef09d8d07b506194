//! Bad GGUF files and bad requests give clear errors, never a panic or a huge allocation.

use std::path::Path;

use tritium_engine::synthetic::{Spec, gguf};
use tritium_engine::{Error, Logits, Model, Runtime, Sampler, SamplerConfig, Session, generate};
use tritium_gguf::GgmlType;
use tritium_gguf::names::arch;

/// Two threads, as CI has.
fn rt() -> Runtime {
    Runtime::new(2)
}

fn load(bytes: Vec<u8>) -> Result<Model, Error> {
    Model::from_bytes(Path::new("test.gguf"), bytes, &rt())
}

fn err(bytes: Vec<u8>) -> String {
    match load(bytes) {
        Ok(_) => panic!("a corrupt file loaded"),
        Err(e) => e.to_string(),
    }
}

/// Replaces the first occurrence of `from` with `to` (same length).
fn patch(mut b: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = b
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    b[at..at + to.len()].copy_from_slice(to);
    b
}

fn valid() -> Vec<u8> {
    gguf(&Spec::default())
}

#[test]
fn synthetic_models_load_and_run_in_every_format() {
    for (weights, d) in [
        (GgmlType::Tq2_0, 256),
        (GgmlType::Tq1_0, 256),
        (GgmlType::I2S, 128),
    ] {
        let m = load(gguf(&Spec {
            d_model: d,
            d_ff: d,
            weights,
            ..Spec::default()
        }))
        .unwrap();
        let ids = m.tokenizer.encode("hi there").unwrap();
        assert_eq!(m.tokenizer.decode(&ids), "hi there");
        let mut s = Session::new(&m, 16).unwrap();
        let l = s.forward(&ids, Logits::All).unwrap();
        assert_eq!(l.len(), ids.len() * m.cfg.vocab);
        assert!(l.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn wrong_magic_version_and_truncation() {
    let mut b = valid();
    b[0] = b'X';
    assert!(err(b).contains("not a GGUF file"));
    let mut b = valid();
    b[4] = 2;
    assert!(err(b).contains("version 2"));
    let full = valid();
    // Every prefix is an error, never a panic (a step that hits header, metadata and tensor data).
    for n in (0..full.len()).step_by(997).chain([full.len() - 1]) {
        let e = err(full[..n].to_vec());
        assert!(e.starts_with("test.gguf: "), "{e}");
    }
}

#[test]
fn missing_tensor_wrong_shape_and_unknown_type_are_named() {
    let e = err(patch(
        valid(),
        b"blk.0.ffn_up.weight",
        b"blk.0.ffn_uX.weight",
    ));
    assert!(e.contains("blk.0.ffn_up.weight is missing"), "{e}");
    // A width that disagrees with the tensors.
    let mut b = valid();
    let key = arch::EMBEDDING_LENGTH.as_bytes();
    let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4;
    b[at..at + 4].copy_from_slice(&512u32.to_le_bytes());
    let e = err(b);
    assert!(e.contains("shape"), "{e}");
    // A tensor type id nobody knows: the type field follows the dims of token_embd.weight.
    let mut b = valid();
    let name = b"token_embd.weight";
    let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 16;
    b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    let e = err(b);
    assert!(e.contains("tensor type 99"), "{e}");
    // Zero heads would divide by zero.
    let mut b = valid();
    // The first match is head_count itself: its key comes before head_count_kv's.
    let key = arch::HEAD_COUNT.as_bytes();
    let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4;
    b[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
    let e = err(b);
    assert!(e.contains("head_count is 0"), "{e}");
}

#[test]
fn absurd_context_and_long_prompts_are_refused() {
    let mut b = valid();
    let key = arch::CONTEXT_LENGTH.as_bytes();
    let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4;
    b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let m = load(b).unwrap();
    // A cache for 4 billion positions is refused up front, not allocated.
    let e = Session::new(&m, m.cfg.ctx).err().unwrap().to_string();
    assert!(e.contains("GiB"), "{e}");
    let m = load(valid()).unwrap();
    let mut s = Session::new(&m, 16).unwrap();
    let long: Vec<u32> = vec![5; 17];
    let mut sampler = Sampler::new(SamplerConfig::default());
    let e = generate(&mut s, &mut sampler, &long, 4, &[], |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("the prompt has 17 tokens but the context holds 16"),
        "{e}"
    );
    let e = s
        .forward(&[100_000], Logits::Last)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
}

#[test]
fn random_corruption_never_panics() {
    // A deterministic mini-fuzz: flip bytes of the header and metadata (where parsing decides
    // things) and of tensor data, and load; the cargo-fuzz target does the same at scale.
    let base = gguf(&Spec {
        d_model: 128,
        d_ff: 128,
        weights: GgmlType::I2S,
        ..Spec::default()
    });
    let mut s = 0x1234_5678_9abc_def1u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut loaded = 0;
    for i in 0..600 {
        let mut b = base.clone();
        for _ in 0..1 + next() % 4 {
            let at = if i % 2 == 0 {
                next() as usize % 8192
            } else {
                next() as usize % b.len()
            };
            b[at] = next() as u8;
        }
        if let Ok(m) = load(b)
            && let Ok(mut sess) = Session::new(&m, m.cfg.ctx.min(4))
        {
            let _ = sess.forward(&[1, 2], Logits::All);
            loaded += 1;
        }
    }
    assert!(loaded > 0, "some corruptions (in tensor data) still load");
}
