//! Small random `bitnet` GGUF files built without Burn: seeds for the fuzzer and fixtures for the
//! loader's bad-input tests (each test corrupts one thing in an otherwise valid file).

use tritium_gguf::blocks::{encode_f16, encode_f32, quantize_i2_s, quantize_tq1_0, quantize_tq2_0};
use tritium_gguf::names::{self, BlockNorm, Projection, arch, general, token_type, tokenizer};
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
    /// TQ weights as trits with d = 1 plus an F32 `.scale` tensor per projection (the exact form
    /// `tritium export` writes by default) instead of the scale in every block.
    pub exact_scales: bool,
    pub seed: u64,
    /// Vocabulary size: 0 for the byte-level one below (258 tokens), else (at least 258) padded
    /// to this with tokens that never merge (benchmark shapes need the real LM head's size).
    pub vocab: usize,
    /// ReLU² feed-forward (2B4T) instead of SiLU.
    pub relu2: bool,
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
            exact_scales: false,
            seed: 1,
            vocab: 0,
            relu2: false,
        }
    }
}

/// The vocabulary: the 256 byte tokens of GPT-2's byte-level alphabet in order, one merge, and an
/// end-of-text control token.
fn vocab(size: usize) -> (Vec<String>, Vec<String>) {
    let mut tokens: Vec<String> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .map(|c| c.to_string())
        .collect();
    tokens.sort();
    tokens.push("Ġt".into());
    let extra = size.saturating_sub(tokens.len() + 1);
    tokens.extend((0..extra).map(|i| format!("<|extra_{i}|>")));
    tokens.push("<|endoftext|>".into());
    (tokens, vec!["Ġ t".into()])
}

pub fn gguf(spec: &Spec) -> Vec<u8> {
    let mut rng = XorShift(spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    assert!(
        spec.vocab == 0 || spec.vocab >= 258,
        "a vocabulary holds at least the 256 bytes, one merge and end-of-text"
    );
    let (tokens, merges) = vocab(spec.vocab);
    let v = tokens.len();
    let (d, f) = (spec.d_model, spec.d_ff);
    let kv = d / spec.n_heads * spec.n_kv_heads;
    let mut w = Writer::new();
    let arr = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let mut types = vec![Value::I32(token_type::NORMAL); v];
    types[v - 1] = Value::I32(token_type::CONTROL);
    w.kv(general::ARCHITECTURE, Value::String(names::ARCH.into()))
        .kv(arch::CONTEXT_LENGTH, Value::U32(spec.ctx as u32))
        .kv(arch::EMBEDDING_LENGTH, Value::U32(d as u32))
        .kv(arch::BLOCK_COUNT, Value::U32(spec.n_layers as u32))
        .kv(arch::FEED_FORWARD_LENGTH, Value::U32(f as u32))
        .kv(arch::HEAD_COUNT, Value::U32(spec.n_heads as u32))
        .kv(arch::HEAD_COUNT_KV, Value::U32(spec.n_kv_heads as u32))
        .kv(arch::ROPE_FREQ_BASE, Value::F32(10000.0))
        .kv(arch::RMS_EPS, Value::F32(1e-5))
        .kv(tokenizer::MODEL, Value::String("gpt2".into()))
        .kv(tokenizer::TOKENS, arr(tokens))
        .kv(tokenizer::TOKEN_TYPE, Value::Array(types))
        .kv(tokenizer::MERGES, arr(merges))
        .kv(tokenizer::EOS_ID, Value::U32(v as u32 - 1));
    if spec.relu2 {
        // Absent, the `bitnet` architecture means SiLU.
        w.kv(arch::FFN_ACT, Value::String("relu2".into()));
    }
    w.tensor(
        names::TOKEN_EMBD,
        &[d as u64, v as u64],
        GgmlType::F16,
        encode_f16(&rng.floats(d * v, 1.0)),
    );
    w.tensor(
        names::OUTPUT_NORM,
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
        for norm in BlockNorm::ALL {
            let len = if norm == BlockNorm::FfnSub { f } else { d };
            let g: Vec<f32> = rng.floats(len, 0.5).iter().map(|x| x + 1.0).collect();
            w.tensor(
                &norm.weight(n),
                &[len as u64],
                GgmlType::F32,
                encode_f32(&g),
            );
        }
        for p in Projection::ALL {
            let (cols, rows) = p.dims(d, kv, f);
            let q: Vec<i8> = (0..cols * rows)
                .map(|_| (rng.next() % 3) as i8 - 1)
                .collect();
            // Each projection its own scale, so a scale applied to the wrong one shows.
            let scale = (1.0 + p.index() as f32 / 8.0) / (cols as f32).sqrt();
            let exact = spec.exact_scales && spec.weights != GgmlType::I2S;
            let in_blocks = if exact { 1.0 } else { scale };
            let qf: Vec<f32> = q.iter().map(|&x| x as f32 * in_blocks).collect();
            if exact {
                w.tensor(&p.scale(n), &[1], GgmlType::F32, encode_f32(&[scale]));
            }
            let data = match spec.weights {
                GgmlType::Tq1_0 => quantize_tq1_0(&qf),
                GgmlType::I2S => quantize_i2_s(&q, scale),
                _ => quantize_tq2_0(&qf),
            };
            w.tensor(
                &p.weight(n),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmark_shapes_keep_their_vocabulary_and_activation() {
        let spec = Spec {
            vocab: 600,
            relu2: true,
            ..Spec::default()
        };
        let path = std::path::Path::new("synthetic.gguf");
        let m = crate::Model::from_bytes(path, gguf(&spec), &crate::Runtime::new(1)).unwrap();
        assert_eq!(m.cfg.vocab, 600);
        assert_eq!(m.cfg.act, tritium_gguf::hparams::Act::Relu2);
        // The default stays the byte vocabulary with SiLU (the fuzz seeds and fixtures).
        let m = crate::Model::from_bytes(path, gguf(&Spec::default()), &crate::Runtime::new(1))
            .unwrap();
        assert_eq!(m.cfg.vocab, 258);
        assert_eq!(m.cfg.act, tritium_gguf::hparams::Act::Silu);
    }
}
