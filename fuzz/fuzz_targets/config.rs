//! Run and fine-tuning configs: any text must parse or give an error, never panic, and a config
//! that parses must have a memory estimate (the sizes it multiplies must not overflow).
//! The first line is also tried as a `--set` override on the bundled tiny config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tritium_model::ModelConfig;
use tritium_train::RunConfig;
use tritium_train::chat::Template;
use tritium_train::finetune::config::FinetuneConfig;
use tritium_train::instruct::{Message, Role};

const TINY: &str = include_str!("../../configs/tiny.toml");

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = RunConfig::parse(text, "fuzz.toml", &[]) {
        estimate(&cfg.model, cfg.train.batch_size, cfg.train.seq_len);
    }
    if let Ok(m) = ModelConfig::from_toml_str(text) {
        estimate(&m, 8, m.max_seq_len);
    }
    // A template the config names must render or fail, never panic or hang.
    if let Ok(Some(source)) = FinetuneConfig::parse(text, "fuzz.toml").map(|c| c.template) {
        if let Ok(t) = Template::new(&source) {
            let _ = t.pieces(&conversation());
        }
    }
    let first = text.lines().next().unwrap_or_default().to_string();
    if let Ok(cfg) = RunConfig::parse(TINY, "tiny.toml", &[first]) {
        estimate(&cfg.model, cfg.train.batch_size, cfg.train.seq_len);
    }
});

fn estimate(m: &ModelConfig, batch: usize, seq: usize) {
    let _ = m.param_count();
    let _ = m.train_step_bytes(batch, seq).total();
    let _ = m.warnings();
}

fn conversation() -> Vec<Message> {
    let m = |role, content: &str| Message {
        role,
        content: content.to_string(),
    };
    vec![
        m(Role::System, "Be brief."),
        m(Role::User, "Hi"),
        m(Role::Assistant, "Hello."),
    ]
}
