//! Every GGUF name tritium reads or writes, in one place: metadata keys, tensor names and the
//! seven ternary projections of a block. llama.cpp's `bitnet` architecture (`llama-arch.cpp`)
//! defines them upstream; an exporter, the engine, an importer or a test spells a name by calling
//! into this module, never as a literal, so a rename happens here once.

/// `general.architecture` of every model tritium writes and runs.
pub const ARCH: &str = "bitnet";

/// `general.*` keys.
pub mod general {
    pub const ARCHITECTURE: &str = "general.architecture";
    /// `"model"` or `"adapter"`.
    pub const TYPE: &str = "general.type";
    pub const NAME: &str = "general.name";
    pub const FILE_TYPE: &str = "general.file_type";
    pub const QUANTIZATION_VERSION: &str = "general.quantization_version";
    pub const ALIGNMENT: &str = "general.alignment";
}

/// The architecture's hyper-parameter keys (`bitnet.*`).
pub mod arch {
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
    /// Our own key: upstream llama.cpp always runs SiLU; tritium's engine reads this to run ReLU²
    /// too (`"silu"` or `"relu2"`).
    pub const FFN_ACT: &str = "bitnet.feed_forward_activation";

    /// bitnet.cpp's names for the same architecture (its 2B4T file says `"bitnet-b1.58"`, an
    /// earlier upload `"bitnet-25"`): the keys carry that prefix, and the FFN is always ReLU².
    pub const BITNET_CPP: [&str; 2] = ["bitnet-b1.58", "bitnet-25"];

    /// `key` (one of the constants above) under the architecture name `arch`.
    pub fn under(arch: &str, key: &str) -> String {
        match key.strip_prefix("bitnet.") {
            Some(rest) => format!("{arch}.{rest}"),
            None => key.to_string(),
        }
    }
}

/// `tokenizer.*` keys (llama.cpp's byte-level BPE vocabulary, `"gpt2"`).
pub mod tokenizer {
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub const PRE: &str = "tokenizer.ggml.pre";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const MERGES: &str = "tokenizer.ggml.merges";
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

    /// How text is split before byte-level BPE, by `tokenizer.ggml.pre`: the pre-tokenizers
    /// tritium rebuilds (the engine's tokenizer and `import`'s tokenizer.json alike).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Pre {
        /// GPT-2's byte-level split (tritium's own exports, and files that name none).
        Gpt2,
        /// Llama-3's (`llama-bpe`): digits in groups of three, then byte-level mapping without
        /// GPT-2's split; a pre-token found whole in the vocabulary skips the merges.
        Llama3,
    }

    impl Pre {
        /// The pre-tokenizer `tokenizer.ggml.pre` names; one tritium does not rebuild is an
        /// error (encoding with another would give other tokens than llama.cpp). A file that
        /// names none but holds Llama-3's `<|begin_of_text|>` is taken as Llama-3's: bitnet.cpp's
        /// converter writes no `pre` for BitNet b1.58 2B4T, whose tokenizer is Llama-3's.
        pub fn of(name: Option<&str>, tokens: &[String]) -> Result<Pre, String> {
            match name {
                None if tokens.iter().any(|t| t == "<|begin_of_text|>") => Ok(Pre::Llama3),
                None | Some("default") | Some("gpt2") | Some("gpt-2") => Ok(Pre::Gpt2),
                Some("llama-bpe") | Some("llama3") => Ok(Pre::Llama3),
                Some(other) => Err(format!(
                    "{PRE} = {other:?}: tritium rebuilds the gpt2 and llama-bpe pre-tokenizers"
                )),
            }
        }

        /// The name written as `tokenizer.ggml.pre`.
        pub fn name(self) -> &'static str {
            match self {
                Pre::Gpt2 => "gpt-2",
                Pre::Llama3 => "llama-bpe",
            }
        }

        /// Whether a pre-token that is in the vocabulary is taken whole (Llama-3's tokenizer.json
        /// sets `ignore_merges`, and llama.cpp does the same for `llama-bpe`).
        pub fn ignore_merges(self) -> bool {
            self == Pre::Llama3
        }

        /// Whether prompts get a BOS first: `tokenizer.ggml.add_bos_token` where the file sets
        /// it, else llama.cpp's default for the pre-tokenizer (on for `llama-bpe`, off for GPT-2's
        /// byte-level BPE). Many Llama-3 GGUFs leave the key out and still start with a BOS.
        pub fn add_bos(self, key: Option<bool>) -> bool {
            key.unwrap_or(self == Pre::Llama3)
        }
    }

    /// Llama-3's pre-tokenizer split, as its tokenizer.json spells it.
    pub const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
}

/// llama.cpp's `llama_token_type` values in `tokenizer.ggml.token_type`.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Tokens that end a document, in order of preference: GPT-2's (and tritium's own tokenizers'),
/// Llama-3's, SentencePiece's and Gemma's. Training puts one between documents; exports record
/// it as BOS/EOS.
pub const END_OF_TEXT: [&str; 4] = ["<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"];

/// Keys of a llama.cpp LoRA-adapter GGUF.
pub mod adapter {
    /// `"lora"`.
    pub const TYPE: &str = "adapter.type";
    pub const LORA_ALPHA: &str = "adapter.lora.alpha";
}

/// SHA-256 of the checkpoint's `model.bpk`, in base GGUFs and adapter GGUFs alike: the engine
/// refuses an adapter whose base hash differs from the model's.
pub const BASE_HASH: &str = "tritium.base_hash";
/// In a LoRA adapter GGUF: the base export it was written for, `"exact"` (trits with a `.scale`
/// tensor, so some branches hold B/s) or `"folded"` (B as trained). On the other kind of base the
/// adapter computes wrong values in llama.cpp as in the engine, so the engine refuses it.
pub const LORA_BASE_SCALES: &str = "tritium.lora_base_scales";

/// The ChatML template used when neither a config nor a file names one; fine-tuning renders
/// examples with it and the engine chats with it, so both sides agree on the markers.
pub const DEFAULT_CHAT_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
/// The special tokens [`DEFAULT_CHAT_TEMPLATE`] needs.
pub const CHAT_MARKERS: [&str; 2] = ["<|im_start|>", "<|im_end|>"];

/// Texts that end an assistant's turn in the chat templates people use: ChatML's, Llama-3's (and
/// so 2B4T's), Phi's and Gemma's. A chat reply stops at any of them.
pub const END_OF_TURN: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];

pub const TOKEN_EMBD: &str = "token_embd.weight";
pub const OUTPUT_NORM: &str = "output_norm.weight";
/// An untied output head (tritium ties it; an importer may meet one).
pub const OUTPUT: &str = "output.weight";

/// The seven ternary projections of a block, in the order the model and the engine stack them.
/// Configs spell them by their short names (`target = ["q", "v"]`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Projection {
    pub const ALL: [Projection; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// The GGUF stem: `blk.N.<stem>.weight`.
    pub fn stem(self) -> &'static str {
        match self {
            Self::Q => "attn_q",
            Self::K => "attn_k",
            Self::V => "attn_v",
            Self::O => "attn_output",
            Self::Gate => "ffn_gate",
            Self::Up => "ffn_up",
            Self::Down => "ffn_down",
        }
    }

    /// The short name configs use (`target = ["q", "v"]`).
    pub fn short(self) -> &'static str {
        match self {
            Self::Q => "q",
            Self::K => "k",
            Self::V => "v",
            Self::O => "o",
            Self::Gate => "gate",
            Self::Up => "up",
            Self::Down => "down",
        }
    }

    pub fn from_short(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.short() == s)
    }

    pub fn from_stem(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.stem() == s)
    }

    /// `(in, out)` for a model of width `d`, KV width `kv` and feed-forward width `f`: the
    /// tensor's GGUF dims `[in, out]`.
    pub fn dims(self, d: usize, kv: usize, f: usize) -> (usize, usize) {
        match self {
            Self::Q | Self::O => (d, d),
            Self::K | Self::V => (d, kv),
            Self::Gate | Self::Up => (d, f),
            Self::Down => (f, d),
        }
    }

    /// Whether llama.cpp multiplies this projection's LoRA branch by the base's `.scale` tensor
    /// too. Its `build_ffn` adds the adapter inside the up and gate products and applies
    /// `ffn_up.scale` / `ffn_gate.scale` afterwards, `(W·x + c·B·A·x)·s`; the attention
    /// projections and `ffn_down` go through `build_lora_mm(w, x, w_s)`, which scales before the
    /// adapter is added, `s·W·x + c·B·A·x` (llama.cpp's `llama-graph.cpp`, as vendored by
    /// llama-cpp-python 0.3.36 and upstream since). Without a `.scale` tensor nothing is scaled.
    pub fn lora_branch_scaled(self) -> bool {
        matches!(self, Self::Gate | Self::Up)
    }

    /// Position in [`Projection::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// `blk.N.<stem>.weight`.
    pub fn weight(self, n: usize) -> String {
        weight(n, self.stem())
    }

    /// `blk.N.<stem>.scale`: the exact per-tensor scale beside d = 1 blocks.
    pub fn scale(self, n: usize) -> String {
        format!("blk.{n}.{}.scale", self.stem())
    }
}

/// The four RMSNorm gains of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockNorm {
    Attn,
    AttnSub,
    Ffn,
    FfnSub,
}

impl BlockNorm {
    pub const ALL: [BlockNorm; 4] = [Self::Attn, Self::AttnSub, Self::Ffn, Self::FfnSub];

    pub fn stem(self) -> &'static str {
        match self {
            Self::Attn => "attn_norm",
            Self::AttnSub => "attn_sub_norm",
            Self::Ffn => "ffn_norm",
            Self::FfnSub => "ffn_sub_norm",
        }
    }

    /// `blk.N.<stem>.weight`.
    pub fn weight(self, n: usize) -> String {
        weight(n, self.stem())
    }
}

fn weight(n: usize, stem: &str) -> String {
    format!("blk.{n}.{stem}.weight")
}

/// The LoRA tensors of a base tensor in an adapter file: `<base>.lora_a`, `<base>.lora_b`.
pub fn lora_a(base: &str) -> String {
    format!("{base}.lora_a")
}
pub fn lora_b(base: &str) -> String {
    format!("{base}.lora_b")
}

/// Which half of a LoRA pair a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraPart {
    A,
    B,
}

/// `<base>.lora_a` / `<base>.lora_b` → (base, part); anything else is not an adapter tensor.
pub fn parse_lora(name: &str) -> Option<(&str, LoraPart)> {
    name.strip_suffix(".lora_a")
        .map(|b| (b, LoraPart::A))
        .or_else(|| name.strip_suffix(".lora_b").map(|b| (b, LoraPart::B)))
}

/// The block and projection a base tensor name `blk.N.<stem>.weight` stands for.
pub fn parse_projection(name: &str) -> Option<(usize, Projection)> {
    let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (n, stem) = rest.split_once('.')?;
    Some((n.parse().ok()?, Projection::from_stem(stem)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_llama_cpp_s() {
        assert_eq!(Projection::O.weight(3), "blk.3.attn_output.weight");
        assert_eq!(Projection::Down.scale(0), "blk.0.ffn_down.scale");
        assert_eq!(BlockNorm::FfnSub.weight(11), "blk.11.ffn_sub_norm.weight");
        assert_eq!(lora_b("blk.0.attn_q.weight"), "blk.0.attn_q.weight.lora_b");
        assert_eq!(
            parse_lora(&lora_a("blk.2.ffn_up.weight")),
            Some(("blk.2.ffn_up.weight", LoraPart::A))
        );
        assert_eq!(parse_lora("blk.0.attn_q.weight"), None);
        assert_eq!(arch::HEAD_COUNT_KV, "bitnet.attention.head_count_kv");
    }

    #[test]
    fn projections_round_trip_through_every_spelling() {
        for (i, p) in Projection::ALL.into_iter().enumerate() {
            assert_eq!(p.index(), i);
            assert_eq!(Projection::from_short(p.short()), Some(p));
            assert_eq!(Projection::from_stem(p.stem()), Some(p));
            assert_eq!(parse_projection(&p.weight(7)), Some((7, p)));
        }
        assert_eq!(parse_projection("blk.x.attn_q.weight"), None);
        assert_eq!(parse_projection("blk.0.attn_norm.weight"), None);
        assert_eq!(Projection::from_short("attn_q"), None);
    }
}
