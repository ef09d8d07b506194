//! `tritium import`: a published model as a tritium checkpoint.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use tritium_model::Backend;

#[derive(Args)]
pub struct ImportArgs {
    /// A Hugging Face `BitNetForCausalLM` directory: config.json, model.safetensors (or shards
    /// with model.safetensors.index.json), tokenizer.json, tokenizer_config.json
    #[arg(long)]
    pub from: PathBuf,
    /// The run directory to write (its checkpoints/step-0)
    #[arg(long)]
    pub out: PathBuf,
    /// Where the model is assembled: flex (default), ndarray or wgpu
    #[arg(long, default_value_t = Backend::Flex)]
    pub device: Backend,
}

pub fn import(a: ImportArgs) -> Result<()> {
    if !a.from.is_dir() {
        bail!(
            "{}: not a directory; --from takes a Hugging Face model directory (config.json, model.safetensors, tokenizer.json)",
            a.from.display()
        );
    }
    let r = tritium_checkpoint::import::import_hf(&a.from, &a.out, &a.device.device()?)?;
    let c = &r.config;
    println!(
        "imported {} ({}): d_model {} · {} layers · {} heads ({} kv) · d_ff {} · vocab {} · ctx {} · {:?}; {} tensors{}",
        a.from.display(),
        r.form,
        c.d_model,
        c.n_layers,
        c.n_heads,
        c.kv_heads(),
        c.d_ff,
        c.vocab_size,
        c.max_seq_len,
        c.ffn_act,
        r.tensors,
        if r.chat_template {
            ", chat template"
        } else {
            ""
        }
    );
    println!("checkpoint: {}", r.checkpoint.display());
    Ok(())
}
