//! `tokenizer.ggml.*` metadata from a Hugging Face byte-level BPE `tokenizer.json`.

use std::path::Path;

use serde_json::Value as Json;
use tritium_gguf::Value;
use tritium_gguf::names::token_type::{CONTROL, NORMAL, UNUSED, USER_DEFINED};
use tritium_gguf::names::tokenizer as keys;

use crate::ExportError;

pub struct GgufVocab {
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    pub eot: Option<u32>,
    /// The token the tokenizer puts before every text ([`tritium_checkpoint::bos`]).
    pub bos: Option<u32>,
    /// How text is split before the merges, recorded as `tokenizer.ggml.pre`.
    pub pre: keys::Pre,
}

/// The GGUF pre-tokenizer a tokenizer.json's `pre_tokenizer` is: GPT-2's byte-level split, or
/// Llama-3's (a Split on its regex, then byte-level mapping). Another would tokenize otherwise in
/// llama.cpp than in training, so it is refused.
fn pre_of(json: &Json) -> Result<keys::Pre, String> {
    let pre = &json["pre_tokenizer"];
    let byte_level = |p: &Json| p["type"] == "ByteLevel";
    if byte_level(pre) && pre["use_regex"].as_bool() != Some(false) {
        return Ok(keys::Pre::Gpt2);
    }
    if pre["type"] == "Sequence"
        && let Some([split, bl]) = pre["pretokenizers"].as_array().map(Vec::as_slice)
        && split["type"] == "Split"
        && split["pattern"]["Regex"] == keys::LLAMA3_SPLIT
        && byte_level(bl)
        && bl["use_regex"].as_bool() == Some(false)
    {
        return Ok(keys::Pre::Llama3);
    }
    Err(format!(
        "pre_tokenizer {pre} is neither GPT-2's byte-level split nor Llama-3's; llama.cpp would \
         split text differently"
    ))
}

/// Reads vocabulary, merges and added tokens, padding with `[PAD{i}]` up to `rows` (the embedding
/// rows) so the token list and the embedding agree, as llama.cpp requires.
pub fn read(path: &Path, rows: usize) -> Result<GgufVocab, ExportError> {
    let bad = |msg: String| ExportError::Tokenizer {
        path: path.to_path_buf(),
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let json: Json = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let pre = pre_of(&json).map_err(bad)?;
    let model = &json["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(bad(format!(
            "model type {} is not BPE; only byte-level BPE tokenizers export as gpt2",
            model["type"]
        )));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("no model.vocab".into()))?;
    let mut tokens: Vec<Option<(String, i32)>> = Vec::new();
    let mut put = |id: usize, tok: &str, ty: i32| -> Result<(), ExportError> {
        if id >= rows.max(1) * 4 + 1_000_000 {
            return Err(bad(format!("token id {id} is absurd")));
        }
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
        }
        tokens[id] = Some((tok.to_string(), ty));
        Ok(())
    };
    for (tok, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| bad(format!("vocab id of {tok:?} is not a number")))?
            as usize;
        put(id, tok, NORMAL)?;
    }
    let mut eot = None;
    let mut eot_rank: Option<usize> = None;
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let id = added["id"]
            .as_u64()
            .ok_or_else(|| bad("added token without id".into()))? as usize;
        let content = added["content"]
            .as_str()
            .ok_or_else(|| bad("added token without content".into()))?;
        let special = added["special"].as_bool().unwrap_or(false);
        put(id, content, if special { CONTROL } else { USER_DEFINED })?;
        // The first document end in order of preference, whatever the ids' order.
        let rank = |t: &str| {
            tritium_gguf::names::END_OF_TEXT
                .iter()
                .position(|e| *e == t)
        };
        if let Some(r) = rank(content)
            && eot_rank.is_none_or(|best| r < best)
        {
            eot = Some(id as u32);
            eot_rank = Some(r);
        }
    }
    if tokens.len() > rows {
        return Err(bad(format!(
            "{} tokens, but the model's embedding has only {rows} rows",
            tokens.len()
        )));
    }
    let mut list = Vec::with_capacity(rows);
    let mut types = Vec::with_capacity(rows);
    let mut seen = std::collections::HashSet::new();
    for i in 0..rows {
        let (tok, ty) = match tokens.get(i).cloned().flatten() {
            Some(t) => t,
            None => (format!("[PAD{i}]"), UNUSED),
        };
        if !seen.insert(tok.clone()) {
            return Err(bad(format!(
                "token {tok:?} appears twice; GGUF token lists must be unique"
            )));
        }
        list.push(tok);
        types.push(ty);
    }
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| bad("no model.merges".into()))?
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap_or(""),
                p[1].as_str().unwrap_or("")
            )),
            other => Err(bad(format!("merge {other} is neither \"a b\" nor [a, b]"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bos = tritium_checkpoint::bos::bos_id(&json).filter(|&b| (b as usize) < list.len());
    Ok(GgufVocab {
        tokens: list,
        types,
        merges,
        eot,
        bos,
        pre,
    })
}

impl GgufVocab {
    pub fn metadata(&self) -> Vec<(&'static str, Value)> {
        let mut kv = vec![
            (keys::MODEL, Value::String("gpt2".into())),
            (keys::PRE, Value::String(self.pre.name().into())),
            (
                keys::TOKENS,
                Value::Array(
                    self.tokens
                        .iter()
                        .map(|t| Value::String(t.clone()))
                        .collect(),
                ),
            ),
            (
                keys::TOKEN_TYPE,
                Value::Array(self.types.iter().map(|&t| Value::I32(t)).collect()),
            ),
            (
                keys::MERGES,
                Value::Array(
                    self.merges
                        .iter()
                        .map(|m| Value::String(m.clone()))
                        .collect(),
                ),
            ),
            (keys::ADD_BOS, Value::Bool(self.bos.is_some())),
            (keys::ADD_EOS, Value::Bool(false)),
        ];
        // Documents start with the BOS where the tokenizer has one (llama.cpp then adds it to
        // every prompt, as training saw), else with end-of-text, which also ends them.
        if let Some(bos) = self.bos.or(self.eot) {
            kv.push((keys::BOS_ID, Value::U32(bos)));
        }
        if let Some(eot) = self.eot {
            kv.push((keys::EOS_ID, Value::U32(eot)));
        }
        kv
    }
}
