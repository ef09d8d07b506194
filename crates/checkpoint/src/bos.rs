//! The token a tokenizer puts before every text: Llama-3's `<|begin_of_text|>`, declared in
//! tokenizer.json as a `TemplateProcessing` post-processor (alone, or inside a `Sequence` after
//! the byte-level step). A model pretrained that way saw it at the start of every document, so
//! training, fine-tuning and evaluation start documents with it, and a GGUF export asks llama.cpp
//! to add it. Tokenizers without one (GPT-2's, tritium's own) start documents with end-of-text.

use serde_json::{Value, json};

/// The id `tokenizer` (a parsed tokenizer.json) puts first in every encoded text, if any.
pub fn bos_id(tokenizer: &Value) -> Option<u32> {
    let post = &tokenizer["post_processor"];
    let template = match post["type"].as_str() {
        Some("TemplateProcessing") => post,
        Some("Sequence") => post["processors"]
            .as_array()?
            .iter()
            .find(|p| p["type"] == "TemplateProcessing")?,
        _ => return None,
    };
    let name = template["single"].as_array()?.first()?["SpecialToken"]["id"].as_str()?;
    match template["special_tokens"][name]["ids"]
        .as_array()?
        .as_slice()
    {
        [id] => id.as_u64().and_then(|i| u32::try_from(i).ok()),
        _ => None,
    }
}

/// The post-processor of a byte-level tokenizer that starts every text with `bos` (token `name`):
/// what Llama-3's tokenizer.json holds, so [`bos_id`] reads it back.
pub fn post_processor(name: &str, bos: u32) -> Value {
    let start = json!({"SpecialToken": {"id": name, "type_id": 0}});
    json!({
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            {
                "type": "TemplateProcessing",
                "single": [start, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [
                    start, {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": name, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {name: {"id": name, "ids": [bos], "tokens": [name]}},
            },
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama-3's post-processor as its tokenizer.json ships it, GPT-2's, and ours round trip.
    #[test]
    fn the_start_token_is_read_from_the_template() {
        let llama3 = json!({"post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>",
                                "ids": [128000], "tokens": ["<|begin_of_text|>"]}}}]}});
        assert_eq!(bos_id(&llama3), Some(128000));
        let gpt2 = json!({"post_processor": {"type": "ByteLevel", "add_prefix_space": false}});
        assert_eq!(bos_id(&gpt2), None);
        // A template that opens with the text itself adds nothing before it.
        let mut late = llama3.clone();
        late["post_processor"]["processors"][1]["single"] =
            json!([{"Sequence": {"id": "A", "type_id": 0}}]);
        assert_eq!(bos_id(&late), None);
        let ours = json!({"post_processor": post_processor("<s>", 1)});
        assert_eq!(bos_id(&ours), Some(1));
    }
}
