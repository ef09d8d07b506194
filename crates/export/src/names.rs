//! GGUF names for llama.cpp's `bitnet` architecture: metadata keys and tensor names, in one place.

pub const ARCH: &str = "bitnet";
/// SHA-256 of the checkpoint's `model.bpk`, in base GGUFs and adapter GGUFs alike: the engine
/// refuses an adapter whose base hash differs from the model's.
pub const BASE_HASH: &str = "tritium.base_hash";

pub const CONTEXT_LENGTH: &str = "bitnet.context_length";
pub const EMBEDDING_LENGTH: &str = "bitnet.embedding_length";
pub const BLOCK_COUNT: &str = "bitnet.block_count";
pub const FEED_FORWARD_LENGTH: &str = "bitnet.feed_forward_length";
pub const HEAD_COUNT: &str = "bitnet.attention.head_count";
pub const HEAD_COUNT_KV: &str = "bitnet.attention.head_count_kv";
pub const ROPE_FREQ_BASE: &str = "bitnet.rope.freq_base";
pub const ROPE_DIMENSION_COUNT: &str = "bitnet.rope.dimension_count";
pub const RMS_EPS: &str = "bitnet.attention.layer_norm_rms_epsilon";
pub const VOCAB_SIZE: &str = "bitnet.vocab_size";
/// Our own key: upstream llama.cpp always runs SiLU; tritium's engine reads this to run ReLU² too.
pub const FFN_ACT: &str = "bitnet.feed_forward_activation";

pub const TOKEN_EMBD: &str = "token_embd.weight";
pub const OUTPUT_NORM: &str = "output_norm.weight";

/// The seven ternary projections of block `n`, as (GGUF stem, which BitLinear).
pub const PROJECTIONS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];
/// The four RMSNorm gains of a block.
pub const BLOCK_NORMS: [&str; 4] = ["attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm"];

pub fn weight(n: usize, stem: &str) -> String {
    format!("blk.{n}.{stem}.weight")
}

pub fn scale(n: usize, stem: &str) -> String {
    format!("blk.{n}.{stem}.scale")
}
