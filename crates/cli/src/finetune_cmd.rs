//! `tritium finetune`: LoRA or full fine-tuning on instruction data.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tritium_train::finetune::{self, FinetuneConfig, FinetuneOptions, FtEvent, Method, RunSpec};

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
}

pub fn finetune(a: FinetuneArgs) -> Result<()> {
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
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130); // a second Ctrl-C: leave now, the last checkpoint stands
            }
        })?;
    }
    let config = spec.config.clone();
    let pb = ProgressBar::new(config.steps as u64);
    let tty = std::io::stderr().is_terminal();
    if !tty {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    let log = |pb: &ProgressBar, line: String| {
        if tty {
            pb.println(line)
        } else {
            println!("{line}")
        }
    };
    let (model, _state, summary) = finetune::finetune(
        FinetuneOptions {
            spec: spec.clone(),
            out: out.clone(),
            resume: a.resume.is_some(),
            stop,
        },
        &mut |e| match e {
            FtEvent::Start(s) => {
                pb.set_position(s.step as u64);
                log(
                    &pb,
                    format!(
                        "trainable params: {} || all params: {} || trainable%: {:.4}",
                        s.trainable_params,
                        s.total_params,
                        100.0 * s.trainable_params as f64 / s.total_params as f64
                    ),
                );
                log(
                    &pb,
                    format!(
                        "{} training examples{} / {} held-out; {} skipped, {} truncated to seq_len, {} dropped (no response left){}",
                        s.examples,
                        if s.rows != s.examples {
                            format!(" packed into {} rows", s.rows)
                        } else {
                            String::new()
                        },
                        s.held_out,
                        s.skipped,
                        s.truncated,
                        s.dropped_no_target,
                        if s.added_tokens.is_empty() {
                            String::new()
                        } else {
                            format!("; added tokens {:?}", s.added_tokens)
                        }
                    ),
                );
            }
            FtEvent::Step { step, loss, lr } => {
                pb.set_position(step as u64);
                pb.set_message(format!("loss {loss:.4} lr {lr:.2e}"));
                if !tty {
                    println!("step {step} | loss {loss:.4} | lr {lr:.2e}");
                }
            }
            FtEvent::Eval { step, val_loss } => log(
                &pb,
                format!("step {step}: held-out response loss {val_loss:.4}"),
            ),
            FtEvent::Checkpoint { step, path } => {
                log(&pb, format!("step {step} | checkpoint {}", path.display()))
            }
        },
    )?;
    pb.finish_and_clear();
    if summary.interrupted {
        println!(
            "interrupted at step {}; continue with: tritium finetune --resume {}",
            summary.step,
            out.display()
        );
        return Ok(());
    }
    if config.method == Method::Lora {
        let gguf = out.join("adapter.gguf");
        tritium_export::export_lora(&model, Some(&summary.base_hash), &gguf)?;
        println!(
            "adapter: {} and {} (llama.cpp LoRA GGUF) for base {}",
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
        tritium_train::checkpoint::latest(&out)?.display()
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
