//! `tritium finetune`: LoRA or full fine-tuning on instruction data.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tritium_train::finetune::{self, FinetuneConfig, FinetuneOptions, FtEvent, Method};
use tritium_train::optim::{AdamW, AdamWConfig};

#[derive(Args)]
pub struct FinetuneArgs {
    /// Fine-tuning config (TOML with a [finetune] table), e.g. configs/lora-instruct.toml.
    #[arg(long)]
    pub config: PathBuf,
    /// The pretrained checkpoint or run directory.
    #[arg(long)]
    pub base: PathBuf,
    /// Instruction data: JSONL or a JSON array (Alpaca, chat messages, prompt/completion).
    #[arg(long)]
    pub data: PathBuf,
    /// Held-out data (default: every Nth example of --data, `holdout_every`).
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Skip records that do not parse, and count them, instead of stopping.
    #[arg(long)]
    pub skip_invalid: bool,
    #[arg(long, default_value = "runs/finetune")]
    pub out: PathBuf,
}

pub fn finetune(a: FinetuneArgs) -> Result<()> {
    let mut config = FinetuneConfig::load(&a.config)?;
    config.skip_invalid |= a.skip_invalid;
    let steps = config.steps as u64;
    let pb = ProgressBar::new(steps);
    pb.set_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    let mut log = Vec::new();
    let (model, mut state, summary) = finetune::finetune(
        FinetuneOptions {
            config: config.clone(),
            base: a.base.clone(),
            data: a.data.clone(),
            eval_data: a.eval_data.clone(),
            out: a.out.clone(),
        },
        &mut |e| match e {
            FtEvent::Start(s) => {
                pb.println(format!(
                    "trainable params: {} || all params: {} || trainable%: {:.4}",
                    s.trainable_params,
                    s.total_params,
                    100.0 * s.trainable_params as f64 / s.total_params as f64
                ));
                pb.println(format!(
                    "{} training / {} held-out examples; {} skipped, {} truncated to seq_len, {} dropped (no response left){}",
                    s.examples,
                    s.held_out,
                    s.skipped,
                    s.truncated,
                    s.dropped_no_target,
                    if s.added_tokens.is_empty() { String::new() } else { format!("; added tokens {:?}", s.added_tokens) }
                ));
            }
            FtEvent::Step { step, loss, lr } => {
                pb.set_position(step as u64);
                pb.set_message(format!("loss {loss:.4} lr {lr:.2e}"));
                log.push(serde_json::json!({ "step": step, "loss": loss, "lr": lr }));
            }
            FtEvent::Eval { step, val_loss } => {
                pb.println(format!("step {step}: held-out response loss {val_loss:.4}"));
                log.push(serde_json::json!({ "step": step, "val_loss": val_loss }));
            }
        },
    )?;
    pb.finish_and_clear();
    let lines: String = log.iter().map(|l| format!("{l}\n")).collect();
    tritium_train::fsutil::write_atomic(&a.out.join("metrics.jsonl"), lines.as_bytes())?;
    state.config.data.tokenizer = a.out.join("tokenizer.json");
    match config.method {
        Method::Lora => {
            let st = finetune::save_adapter(&model, &config, &a.base, &a.out)?;
            let gguf = a.out.join("adapter.gguf");
            tritium_export::export_lora(&model, &gguf)?;
            println!("adapter: {} and {}", st.display(), gguf.display());
            if !summary.added_tokens.is_empty() {
                // The base gained token rows: save it so its GGUF carries them.
                let base = finetune::without_adapters(&model);
                let p = tritium_train::checkpoint::save(
                    &a.out.join("base"),
                    &base,
                    &AdamW::new(AdamWConfig::default()),
                    &state,
                    1,
                )?;
                println!(
                    "base with the added tokens: {} (export it for the engine)",
                    p.display()
                );
            }
        }
        Method::Full => {
            state.step += config.steps;
            let p = tritium_train::checkpoint::save(
                &a.out,
                &model,
                &AdamW::new(AdamWConfig::default()),
                &state,
                1,
            )?;
            println!("fine-tuned checkpoint: {}", p.display());
        }
    }
    println!(
        "held-out response loss: base {:.4} → fine-tuned {:.4} ({:+.1}%), {:.0} s",
        summary.base_val_loss,
        summary.final_val_loss,
        100.0 * (summary.final_val_loss / summary.base_val_loss - 1.0),
        summary.seconds
    );
    Ok(())
}
