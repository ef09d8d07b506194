//! Malformed GGUF input is an error, never a panic: every truncation of a valid file, byte
//! corruptions all over it, and hand-made hostile headers.

use tritium_gguf::blocks::{encode_f32, quantize_tq2_0};
use tritium_gguf::{GgmlType, Gguf, Value, Writer};

fn sample() -> Vec<u8> {
    let mut w = Writer::new();
    w.kv("general.architecture", Value::String("bitnet".into()))
        .kv("bitnet.block_count", Value::U32(1))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        );
    w.tensor("norm", &[8], GgmlType::F32, encode_f32(&[1.0; 8]));
    let trits: Vec<f32> = (0..512).map(|i| (i % 3) as f32 - 1.0).collect();
    w.tensor(
        "blk.0.attn_q.weight",
        &[256, 2],
        GgmlType::Tq2_0,
        quantize_tq2_0(&trits),
    );
    w.to_bytes()
}

#[test]
fn the_sample_parses_and_round_trips() {
    let bytes = sample();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.tensors.len(), 2);
    assert_eq!(g.get("bitnet.block_count").unwrap().as_u32(), Some(1));
    let t = g.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(t.offset % 32, 0);
    let v = g.dequantize(t);
    assert!(
        v.iter()
            .enumerate()
            .all(|(i, x)| *x == (i % 3) as f32 - 1.0)
    );
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample();
    let full = Gguf::parse(&bytes).unwrap();
    // Only the alignment padding after the last tensor may be cut without losing anything.
    let data_end = full
        .tensors
        .iter()
        .map(|t| t.offset + t.nbytes)
        .max()
        .unwrap();
    for n in 0..data_end {
        if let Ok(g) = Gguf::parse(&bytes[..n]) {
            panic!(
                "prefix of {n} bytes parsed with {} tensors",
                g.tensors.len()
            );
        }
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    let bytes = sample();
    let mut s = 0x2545F4914F6CDD1Du64;
    for _ in 0..20_000 {
        let mut b = bytes.clone();
        for _ in 0..3 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let at = (s as usize) % b.len();
            b[at] = (s >> 32) as u8;
        }
        if let Ok(g) = Gguf::parse(&b) {
            for t in &g.tensors {
                let _ = g.dequantize(t);
            }
        }
    }
}

#[test]
fn hostile_headers_are_refused_by_name() {
    let mut h = b"GGUF".to_vec();
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&u64::MAX.to_le_bytes()); // absurd tensor count
    h.extend_from_slice(&0u64.to_le_bytes());
    let e = Gguf::parse(&h).unwrap_err().to_string();
    assert!(e.contains("tensor_count"), "{e}");
    let e = Gguf::parse(b"GGML\x03\0\0\0").unwrap_err().to_string();
    assert!(e.contains("not a GGUF"), "{e}");
    let mut v2 = b"GGUF".to_vec();
    v2.extend_from_slice(&2u32.to_le_bytes());
    assert!(
        Gguf::parse(&v2)
            .unwrap_err()
            .to_string()
            .contains("version 2")
    );
}
