//! `tritium finetune`: LoRA or full fine-tuning on instruction data.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tritium_checkpoint::AdapterSet;
use tritium_export::BaseScales;
use tritium_model::Backend;
use tritium_train::finetune::{self, FinetuneConfig, FinetuneOptions, Method, RunSpec};

use crate::progress::{Progress, stop_on_ctrl_c};

#[derive(Args)]
pub struct FinetuneArgs {
    /// Fine-tuning config (TOML with a [finetune] table), e.g. configs/lora-instruct.toml.
    #[arg(long, required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// The pretrained checkpoint or run directory.
    #[arg(long, required_unless_present = "resume")]
    pub base: Option<PathBuf>,
    /// Instruction data: JSONL or a JSON array (Alpaca, chat messages, prompt/completion); several
    /// files are joined.
    #[arg(long, required_unless_present = "resume", num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Held-out data (default: every Nth example of --data, `holdout_every`).
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Skip records that do not parse, and count them, instead of stopping.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Also fold the adapter into the weights and re-quantize (a plain checkpoint in OUT/merged;
    /// lossy, the held-out loss before and after is reported).
    #[arg(long)]
    pub merge: bool,
    /// Run directory.
    #[arg(long, default_value = "runs/finetune")]
    pub out: PathBuf,
    /// Continue the fine-tuning run in this directory from its latest checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["config", "base", "data", "eval_data"])]
    pub resume: Option<PathBuf>,
    /// Compute backend: flex (default), wgpu, wgpu:N, cuda, cuda:N (built with `--features wgpu` / `cuda`).
    #[arg(long, default_value_t = Backend::Flex)]
    pub device: Backend,
}

pub fn finetune(a: FinetuneArgs, fused: bool, check_memory: bool) -> Result<()> {
    let (spec, out) = match &a.resume {
        Some(dir) => (RunSpec::read(dir)?, dir.clone()),
        None => {
            let mut config = FinetuneConfig::load(a.config.as_ref().expect("required by clap"))?;
            config.skip_invalid |= a.skip_invalid;
            let spec = RunSpec {
                config,
                base: a.base.clone().expect("required by clap"),
                data: a.data.clone(),
                eval_data: a.eval_data.clone(),
                merge: a.merge,
            };
            (spec, a.out.clone())
        }
    };
    let stop = stop_on_ctrl_c()?;
    let config = spec.config.clone();
    let mut view = Progress::new(out.clone());
    let (model, _state, summary) = finetune::finetune(
        FinetuneOptions {
            spec: spec.clone(),
            out: out.clone(),
            resume: a.resume.is_some(),
            stop,
            device: a.device,
            fused,
            check_memory,
        },
        &mut |e| view.event(e),
    )?;
    view.finish();
    if summary.interrupted {
        println!(
            "interrupted at step {}; continue with: tritium finetune --resume {}",
            summary.step,
            out.display()
        );
        return Ok(());
    }
    if config.method == Method::Lora {
        // The run's files are written under its lock, this one too.
        let _lock = tritium_checkpoint::RunLock::acquire(&out)?;
        let gguf = out.join("adapter.gguf");
        let set = AdapterSet::from_model(&model, Some(summary.base_hash.clone()));
        // For the base as `tritium export` writes it by default (exact scales).
        tritium_export::export_lora(&set, &BaseScales::exact(&model), &gguf)?;
        println!(
            "adapter: {} and {} (llama.cpp LoRA GGUF, for the base exported with exact scales; for another export of it: tritium export --lora ADAPTER --base BASE.gguf) for base {}",
            out.join("adapter.safetensors").display(),
            gguf.display(),
            summary.adapter_base.display()
        );
        if !summary.added_tokens.is_empty() {
            println!(
                "the base gained tokens {:?}: export {} for the engine and llama.cpp",
                summary.added_tokens,
                summary.adapter_base.display()
            );
        }
    }
    println!(
        "fine-tuned checkpoint: {}",
        tritium_checkpoint::latest(&out)?.display()
    );
    println!(
        "held-out response loss: base {:.4} → fine-tuned {:.4} ({:+.1}%), {:.0} s",
        summary.base_val_loss,
        summary.final_val_loss,
        100.0 * (summary.final_val_loss / summary.base_val_loss - 1.0),
        summary.seconds
    );
    if let Some(m) = summary.merged_val_loss {
        println!(
            "merged into the ternary weights ({}): held-out loss {:.4} → {m:.4} ({:+.1}%)",
            out.join("merged").display(),
            summary.final_val_loss,
            100.0 * (m / summary.final_val_loss - 1.0)
        );
    }
    Ok(())
}
