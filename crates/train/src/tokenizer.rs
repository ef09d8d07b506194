//! Tokenizers: training a GPT-2-style byte-level BPE, loading any Hugging Face `tokenizer.json`, and
//! the hash that ties prepared data and checkpoints to the tokenizer that made them.

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerImpl,
};

use tritium_checkpoint::sha256_hex;

use crate::text::EOT_MARKER;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a tokenizer.json this build can load: {msg}")]
    Load { path: PathBuf, msg: String },
    #[error("training the tokenizer failed: {0}")]
    Train(String),
    #[error(
        "{path}: the tokenizer has no end-of-text token (looked for {:?})",
        tritium_gguf::names::END_OF_TEXT
    )]
    NoEot { path: PathBuf },
}

/// A loaded tokenizer with what training needs to know about it.
pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    /// Hex SHA-256 of the tokenizer.json bytes.
    pub hash: String,
    /// The end-of-text token inserted between documents.
    pub eot_id: u32,
    /// The token the tokenizer puts before every text (Llama-3's `<|begin_of_text|>`), if any:
    /// see [`tritium_checkpoint::bos`].
    pub bos_id: Option<u32>,
    pub path: PathBuf,
}

impl Tokenizer {
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| TokenizerError::Load {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        let eot_id = tritium_gguf::names::END_OF_TEXT
            .iter()
            .find_map(|t| inner.token_to_id(t))
            .ok_or_else(|| TokenizerError::NoEot {
                path: path.to_path_buf(),
            })?;
        let bos_id = serde_json::from_slice(&bytes)
            .ok()
            .and_then(|json| tritium_checkpoint::bos::bos_id(&json))
            .filter(|&id| inner.id_to_token(id).is_some());
        Ok(Self {
            inner,
            hash: sha256_hex(&bytes),
            eot_id,
            bos_id,
            path: path.to_path_buf(),
        })
    }

    /// The token every document starts with: the BOS where the tokenizer has one, else the
    /// end-of-text token (which also ends the document before).
    pub fn doc_start(&self) -> u32 {
        self.bos_id.unwrap_or(self.eot_id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Train(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner
            .decode(ids, false)
            .unwrap_or_else(|e| format!("<undecodable: {e}>"))
    }
}

/// Gives the tokenizer.json at `path` a Llama-3 style `<|begin_of_text|>` that its
/// post-processor puts before every text; returns its id.
#[cfg(test)]
pub(crate) fn add_bos_for_tests(path: &Path) -> u32 {
    let id = Tokenizer::load(path).unwrap().vocab_size() as u32;
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let name = "<|begin_of_text|>";
    json["added_tokens"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "id": id, "content": name, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true,
        }));
    json["post_processor"] = tritium_checkpoint::bos::post_processor(name, id);
    std::fs::write(path, json.to_string()).unwrap();
    id
}

/// Trains a byte-level BPE (GPT-2's pre-tokenizer, no prefix space, so GGUF can declare it `gpt2`)
/// with `<|endoftext|>` as its one special token, and writes `out` (tokenizer.json).
pub fn train_bpe(
    documents: &[String],
    vocab_size: usize,
    out: &Path,
) -> Result<(), TokenizerError> {
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(true)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(vec![AddedToken::from(EOT_MARKER, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let byte_level = ByteLevel::new(false, true, true);
    let mut tok: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerImpl::new(BPE::default());
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)));
    tok.with_post_processor(Some(PostProcessorWrapper::ByteLevel(byte_level)));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)));
    tok.train(&mut trainer, documents.iter())
        .map_err(|e| TokenizerError::Train(e.to_string()))?;
    let json = tok
        .to_string(true)
        .map_err(|e| TokenizerError::Train(e.to_string()))?;
    tritium_checkpoint::fsutil::write_atomic(out, json.as_bytes()).map_err(|source| {
        TokenizerError::Io {
            path: out.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_round_trips_and_has_eot() {
        let d = tempfile::tempdir().unwrap();
        let docs: Vec<String> = (0..50)
            .map(|i| format!("the cat sat on the mat {i} times. The dog did not."))
            .collect();
        let out = d.path().join("tok.json");
        train_bpe(&docs, 300, &out).unwrap();
        let t = Tokenizer::load(&out).unwrap();
        assert!(
            t.vocab_size() <= 300 && t.vocab_size() > 256,
            "{}",
            t.vocab_size()
        );
        let ids = t.encode("the cat sat on the mat").unwrap();
        assert!(ids.len() < 22, "merges were learned: {ids:?}");
        assert_eq!(t.decode(&ids), "the cat sat on the mat");
        // Unseen bytes still encode (byte-level alphabet) and round-trip.
        let ids = t.encode("zebra ünïcode ✓").unwrap();
        assert_eq!(t.decode(&ids), "zebra ünïcode ✓");
        assert_eq!(t.inner.id_to_token(t.eot_id).as_deref(), Some(EOT_MARKER));
        assert_eq!(t.hash, sha256_hex(&std::fs::read(&out).unwrap()));
    }

    #[test]
    fn loads_the_gpt2_tokenizer() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../datasets/tokenizers/gpt2/tokenizer.json");
        let t = Tokenizer::load(&p).unwrap();
        assert_eq!(t.vocab_size(), 50257);
        assert_eq!(t.eot_id, 50256);
        // GPT-2's ids for "Hello world" are [15496, 995].
        assert_eq!(t.encode("Hello world").unwrap(), vec![15496, 995]);
    }

    #[test]
    fn bad_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.json");
        std::fs::write(&p, "{not json").unwrap();
        let e = Tokenizer::load(&p).err().unwrap().to_string();
        assert!(e.contains("bad.json"), "{e}");
    }
}
