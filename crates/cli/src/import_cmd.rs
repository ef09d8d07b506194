//! `tritium import`: a published model as a tritium checkpoint.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use tritium_model::Backend;

#[derive(Args)]
pub struct ImportArgs {
    /// A Hugging Face `BitNetForCausalLM` directory (config.json, model.safetensors or shards
    /// with model.safetensors.index.json, tokenizer.json, tokenizer_config.json), or a GGUF file
    /// of llama.cpp's `bitnet` architecture (TQ2_0, TQ1_0 or I2_S)
    #[arg(long)]
    pub from: PathBuf,
    /// The run directory to write (its checkpoints/step-0)
    #[arg(long)]
    pub out: PathBuf,
    /// Where the model is assembled: flex (default), wgpu[:N] or cuda[:N] (with their cargo feature)
    #[arg(long, default_value_t = Backend::Flex)]
    pub device: Backend,
}

pub fn import(a: ImportArgs) -> Result<()> {
    let device = a.device.device()?;
    let r = if a.from.is_dir() {
        tritium_checkpoint::import::import_hf(&a.from, &a.out, &device)?
    } else if a.from.is_file() && is_gguf(&a.from) {
        tritium_checkpoint::import::import_gguf(&a.from, &a.out, &device)?
    } else {
        bail!(
            "{}: neither a directory nor a GGUF file; --from takes a Hugging Face model directory (config.json, model.safetensors, tokenizer.json) or a bitnet GGUF",
            a.from.display()
        );
    };
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

/// Whether the file starts with GGUF's magic.
fn is_gguf(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}
