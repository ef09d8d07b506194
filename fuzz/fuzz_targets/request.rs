//! Server request bodies: any bytes given to the completion, chat, tokenize and detokenize
//! parsers must become a validated request or an OpenAI-shaped error, never a panic; a request
//! that validates must respect every limit (prompt within the input limit and the context, ids
//! inside the vocabulary, max_tokens within the output limit).
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tritium_engine::synthetic::{Spec, gguf};
use tritium_engine::{Model, Runtime};
use tritium_serve::api::{self, Context};

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let spec = Spec {
            ctx: 64,
            ..Spec::default()
        };
        Model::from_bytes(Path::new("fuzz.gguf"), gguf(&spec), &Runtime::new(1)).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let m = model();
    let models = ["m".to_string(), "tuned".to_string()];
    let cx = Context {
        tokenizer: &m.tokenizer,
        vocab: m.cfg.vocab,
        models: &models,
        ctx: 64,
        max_input: 48,
        max_output: 32,
        chat_template: None,
    };
    for parse in [api::completion, api::chat] {
        if let Ok(req) = parse(data, &cx) {
            assert!(!req.works.is_empty());
            assert_eq!(req.works.len(), req.prompt_texts.len());
            for w in &req.works {
                assert!(!w.prompt.is_empty() && w.prompt.len() <= 48);
                assert!(w.prompt.iter().all(|&t| (t as usize) < m.cfg.vocab));
                assert!(w.max_tokens <= 32);
                assert!(w.lora.is_none_or(|l| l == 0));
                assert!(w.sampling.check().is_ok());
            }
        }
    }
    let _ = api::tokenize(data, &cx);
    if let Ok(v) = api::detokenize(data, &cx) {
        assert!(v["content"].is_string());
    }
});
