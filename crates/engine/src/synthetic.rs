//! Small random `bitnet` GGUF files built without Burn: seeds for the fuzzer and fixtures for the
//! loader's bad-input tests (each test corrupts one thing in an otherwise valid file).

use tritium_gguf::blocks::{encode_f16, encode_f32, quantize_i2_s, quantize_tq1_0, quantize_tq2_0};
use tritium_gguf::{GgmlType, Value, Writer};

/// Shape and format of a synthetic model.
#[derive(Debug, Clone)]
pub struct Spec {
    pub d_model: usize,
    pub d_ff: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub ctx: usize,
    pub weights: GgmlType,
    pub seed: u64,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            d_model: 256,
            d_ff: 256,
            n_layers: 1,
            n_heads: 4,
            n_kv_heads: 2,
            ctx: 16,
            weights: GgmlType::Tq2_0,
            seed: 1,
        }
    }
}

/// The vocabulary: the 256 byte tokens of GPT-2's byte-level alphabet in order, one merge, and an
/// end-of-text control token.
fn vocab() -> (Vec<String>, Vec<String>) {
    let mut tokens: Vec<String> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .map(|c| c.to_string())
        .collect();
    tokens.sort();
    tokens.push("Ġt".into());
    tokens.push("<|endoftext|>".into());
    (tokens, vec!["Ġ t".into()])
}

pub fn gguf(spec: &Spec) -> Vec<u8> {
    let mut rng = XorShift(spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let (tokens, merges) = vocab();
    let v = tokens.len();
    let (d, f) = (spec.d_model, spec.d_ff);
    let kv = d / spec.n_heads * spec.n_kv_heads;
    let mut w = Writer::new();
    let arr = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let mut types = vec![Value::I32(1); v];
    types[v - 1] = Value::I32(3);
    w.kv("general.architecture", Value::String("bitnet".into()))
        .kv("bitnet.context_length", Value::U32(spec.ctx as u32))
        .kv("bitnet.embedding_length", Value::U32(d as u32))
        .kv("bitnet.block_count", Value::U32(spec.n_layers as u32))
        .kv("bitnet.feed_forward_length", Value::U32(f as u32))
        .kv(
            "bitnet.attention.head_count",
            Value::U32(spec.n_heads as u32),
        )
        .kv(
            "bitnet.attention.head_count_kv",
            Value::U32(spec.n_kv_heads as u32),
        )
        .kv("bitnet.rope.freq_base", Value::F32(10000.0))
        .kv("bitnet.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("tokenizer.ggml.model", Value::String("gpt2".into()))
        .kv("tokenizer.ggml.tokens", arr(tokens))
        .kv("tokenizer.ggml.token_type", Value::Array(types))
        .kv("tokenizer.ggml.merges", arr(merges))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(v as u32 - 1));
    w.tensor(
        "token_embd.weight",
        &[d as u64, v as u64],
        GgmlType::F16,
        encode_f16(&rng.floats(d * v, 1.0)),
    );
    w.tensor(
        "output_norm.weight",
        &[d as u64],
        GgmlType::F32,
        encode_f32(
            &rng.floats(d, 0.5)
                .iter()
                .map(|x| x + 1.0)
                .collect::<Vec<_>>(),
        ),
    );
    for n in 0..spec.n_layers {
        for (stem, len) in [
            ("attn_norm", d),
            ("attn_sub_norm", d),
            ("ffn_norm", d),
            ("ffn_sub_norm", f),
        ] {
            let g: Vec<f32> = rng.floats(len, 0.5).iter().map(|x| x + 1.0).collect();
            w.tensor(
                &format!("blk.{n}.{stem}.weight"),
                &[len as u64],
                GgmlType::F32,
                encode_f32(&g),
            );
        }
        for (stem, cols, rows) in [
            ("attn_q", d, d),
            ("attn_k", d, kv),
            ("attn_v", d, kv),
            ("attn_output", d, d),
            ("ffn_gate", d, f),
            ("ffn_up", d, f),
            ("ffn_down", f, d),
        ] {
            let q: Vec<i8> = (0..cols * rows)
                .map(|_| (rng.next() % 3) as i8 - 1)
                .collect();
            let scale = 1.0 / (cols as f32).sqrt();
            let qf: Vec<f32> = q.iter().map(|&x| x as f32 * scale).collect();
            let data = match spec.weights {
                GgmlType::Tq1_0 => quantize_tq1_0(&qf),
                GgmlType::I2S => quantize_i2_s(&q, scale),
                _ => quantize_tq2_0(&qf),
            };
            w.tensor(
                &format!("blk.{n}.{stem}.weight"),
                &[cols as u64, rows as u64],
                spec.weights,
                data,
            );
        }
    }
    w.to_bytes()
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn floats(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next() % 2001) as f32 / 1000.0 - 1.0) * scale)
            .collect()
    }
}
