//! The GGUF's own tokenizer (`tokenizer.ggml.*`, model "gpt2": byte-level BPE, split as
//! `tokenizer.ggml.pre` says), rebuilt as a Hugging Face `tokenizers` BPE so encoding is the same
//! code training used.

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};
use tritium_gguf::names::token_type::{CONTROL, USER_DEFINED};
use tritium_gguf::names::tokenizer::{self, Pre};
use tritium_gguf::names::{END_OF_TEXT, END_OF_TURN};
use tritium_gguf::{Gguf, Value};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub eos: Option<u32>,
    /// Every token that ends a generation (llama.cpp's end-of-generation set): the EOS, the
    /// file's end-of-turn id, and control tokens spelled as a document's or a turn's end.
    ends: Vec<u32>,
    pub bos: Option<u32>,
    pub add_bos: bool,
    /// `tokenizer.chat_template`, if the file carries one.
    pub chat_template: Option<String>,
}

fn strings(v: Option<&Value>, key: &str) -> Result<Vec<String>, String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{key}[{i}] is not a string"))
            })
            .collect(),
        Some(_) => Err(format!("{key} is not an array")),
        None => Err(format!("{key} is missing")),
    }
}

impl Tokenizer {
    pub fn from_gguf(g: &Gguf, vocab_rows: usize) -> Result<Tokenizer, String> {
        match g.get(tokenizer::MODEL).and_then(Value::as_str) {
            Some("gpt2") => {}
            other => {
                return Err(format!(
                    "tokenizer.ggml.model = {other:?}; only \"gpt2\" (byte-level BPE) is supported"
                ));
            }
        }
        let tokens = strings(g.get(tokenizer::TOKENS), tokenizer::TOKENS)?;
        if tokens.len() > vocab_rows {
            return Err(format!(
                "{} tokens but the embedding has {vocab_rows} rows",
                tokens.len()
            ));
        }
        let types: Vec<i32> = match g.get(tokenizer::TOKEN_TYPE) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| if let Value::I32(t) = v { *t } else { 1 })
                .collect(),
            _ => vec![1; tokens.len()],
        };
        let merges = strings(g.get(tokenizer::MERGES), tokenizer::MERGES)?
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| format!("tokenizer.ggml.merges[{i}] = {m:?} is not \"a b\""))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut vocab = tokenizers::models::bpe::Vocab::default();
        for (i, t) in tokens.iter().enumerate() {
            if vocab.insert(t.clone(), i as u32).is_some() {
                return Err(format!("token {t:?} appears twice"));
            }
        }
        // Split as llama.cpp does for this file, or encoding gives other tokens than it does.
        let pre = Pre::of(g.get(tokenizer::PRE).and_then(Value::as_str), &tokens)?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(pre.ignore_merges())
            .build()
            .map_err(|e| format!("BPE: {e}"))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer = match pre {
            Pre::Gpt2 => PreTokenizerWrapper::ByteLevel(byte_level),
            Pre::Llama3 => {
                let split = Split::new(
                    SplitPattern::Regex(tokenizer::LLAMA3_SPLIT.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| format!("Llama-3 split: {e}"))?;
                PreTokenizerWrapper::Sequence(Sequence::new(vec![
                    PreTokenizerWrapper::Split(split),
                    PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
                ]))
            }
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_post_processor(Some(PostProcessorWrapper::ByteLevel(byte_level)));
        inner.with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)));
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == CONTROL || **t == USER_DEFINED)
            .map(|(s, t)| AddedToken::from(s.clone(), *t == CONTROL))
            .collect();
        inner.add_special_tokens(&special);
        let id = |k: &str| {
            g.get(k)
                .and_then(Value::as_u32)
                .filter(|&i| (i as usize) < tokens.len())
        };
        let mut ends: Vec<u32> = [id(tokenizer::EOS_ID), id(tokenizer::EOT_ID)]
            .into_iter()
            .flatten()
            .collect();
        for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            let spelled = END_OF_TEXT.contains(&t.as_str()) || END_OF_TURN.contains(&t.as_str());
            if *ty == CONTROL && spelled && !ends.contains(&(i as u32)) {
                ends.push(i as u32);
            }
        }
        Ok(Tokenizer {
            inner,
            ends,
            eos: id(tokenizer::EOS_ID),
            bos: id(tokenizer::BOS_ID),
            add_bos: pre.add_bos(g.get(tokenizer::ADD_BOS).and_then(Value::as_bool)),
            chat_template: g
                .get(tokenizer::CHAT_TEMPLATE)
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// Token ids of a prompt: a BOS first if the file asks for one, as llama.cpp's prompts get.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut ids: Vec<u32> = self.prompt_bos().into_iter().collect();
        ids.extend(self.encode_text(text)?);
        Ok(ids)
    }

    /// The BOS put before every prompt, if the file asks for one.
    pub fn prompt_bos(&self) -> Option<u32> {
        self.bos.filter(|_| self.add_bos)
    }

    /// Token ids of `text` alone (no BOS): pieces a scorer puts after its own document start.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, String> {
        let enc = self.inner.encode(text, false).map_err(|e| e.to_string())?;
        Ok(enc.get_ids().to_vec())
    }

    /// The token documents start with: the BOS a file adds to every prompt, else its
    /// end-of-text token (tritium's exports without a BOS), else any BOS it names.
    pub fn doc_start(&self) -> Option<u32> {
        self.prompt_bos().or(self.eos).or(self.bos)
    }

    /// Whether `id` ends a generation: a ChatML model fine-tuned with `<|endoftext|>` as its EOS
    /// still stops at `<|im_end|>`, a Llama-3 one at `<|eot_id|>`, as under llama.cpp.
    pub fn is_end(&self, id: u32) -> bool {
        self.ends.contains(&id)
    }

    /// Every token's text, control tokens (`<|im_start|>`, a BOS) spelled out: what
    /// `/detokenize` and log-probability entries show.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }

    /// The text a reader sees: control tokens render as nothing, as llama.cpp renders them
    /// unless asked for `--special` (user-defined tokens stay, as there).
    pub fn decode_text(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Turns a growing list of token ids into printable text pieces ([`Tokenizer::decode_text`]),
/// holding back bytes that do not yet form a whole UTF-8 character. Byte-level BPE decodes a
/// sequence as the concatenation of its parts' decodings wherever a part ends on a whole
/// character, so only the tokens since the last such end are decoded again: each token costs the
/// same however long the text grows (the server decodes every sequence's tokens on its engine
/// thread).
#[derive(Default)]
pub struct StreamDecoder {
    /// Tokens since the last whole character.
    pending: Vec<u32>,
}

impl StreamDecoder {
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.push(id);
        let text = tok.decode_text(&self.pending);
        if text.ends_with('\u{FFFD}') {
            return String::new();
        }
        self.pending.clear();
        text
    }

    /// What is still held back once no more tokens come: the bytes of a character the last
    /// tokens began but did not end, shown as the replacement character.
    pub fn finish(&mut self, tok: &Tokenizer) -> String {
        let rest = tok.decode_text(&self.pending);
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tritium_gguf::Writer;
    use tritium_gguf::names::token_type::NORMAL;

    /// A ChatML fine-tune whose EOS is `<|endoftext|>` still ends at `<|im_end|>` (a control
    /// token), and a file's `eot_token_id` ends generation too; ordinary tokens do not.
    #[test]
    fn generation_ends_at_every_end_token() {
        let tokens = [
            "a",
            "b",
            "<|endoftext|>",
            "<|im_end|>",
            "<|eot_id|>",
            "<|im_end|>x",
        ];
        let types = [NORMAL, NORMAL, CONTROL, CONTROL, NORMAL, CONTROL];
        let s = |v: &[&str]| Value::Array(v.iter().map(|t| Value::String(t.to_string())).collect());
        let mut w = Writer::new();
        w.kv(tokenizer::MODEL, Value::String("gpt2".into()))
            .kv(tokenizer::TOKENS, s(&tokens))
            .kv(
                tokenizer::TOKEN_TYPE,
                Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
            )
            .kv(tokenizer::MERGES, s(&[]))
            .kv(tokenizer::EOS_ID, Value::U32(2));
        let bytes = w.to_bytes();
        let tok = Tokenizer::from_gguf(&Gguf::parse(&bytes).unwrap(), tokens.len()).unwrap();
        let ends: Vec<u32> = (0..6).filter(|&i| tok.is_end(i)).collect();
        // <|eot_id|> here is an ordinary token (type NORMAL): text, not an end.
        assert_eq!(ends, vec![2, 3]);
        w.kv(tokenizer::EOT_ID, Value::U32(4));
        let bytes = w.to_bytes();
        let tok = Tokenizer::from_gguf(&Gguf::parse(&bytes).unwrap(), tokens.len()).unwrap();
        assert!(tok.is_end(4));

        // Generated text hides control tokens, as llama.cpp without --special; the spelled-out
        // form stays for /detokenize.
        let ids = [0, 3, 1, 5, 4];
        assert_eq!(tok.decode(&ids), "a<|im_end|>b<|im_end|>x<|eot_id|>");
        assert_eq!(tok.decode_text(&ids), "ab<|eot_id|>");
        let mut stream = StreamDecoder::default();
        let shown: String = ids.iter().map(|&i| stream.push(&tok, i)).collect();
        assert_eq!(shown + &stream.finish(&tok), "ab<|eot_id|>");
    }
}
