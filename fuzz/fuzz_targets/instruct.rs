//! Instruction data (JSONL or a JSON array, in any of the accepted shapes): any bytes must load
//! or give an error naming the record, never panic; every example that loads must render with
//! the default chat template into the pieces fine-tuning trains on.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tritium_gguf::names::DEFAULT_CHAT_TEMPLATE;
use tritium_train::chat::Template;
use tritium_train::instruct;

fuzz_target!(|data: &[u8]| {
    let template = Template::new(DEFAULT_CHAT_TEMPLATE).expect("the default template parses");
    for skip_invalid in [false, true] {
        if let Ok(loaded) = instruct::from_bytes(Path::new("fuzz.jsonl"), data, skip_invalid) {
            for ex in &loaded.examples {
                let _ = template.pieces(&ex.messages);
            }
        }
    }
});
