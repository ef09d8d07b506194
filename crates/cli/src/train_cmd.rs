//! `tritium train`, `tritium tokenizer train`, `tritium data prepare`: flags → library calls (the
//! progress display is `progress.rs`, shared with fine-tuning).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use tritium_checkpoint::fsutil::check_output;
use tritium_model::Backend;
use tritium_train::prepare::{PrepareOptions, prepare};
use tritium_train::text::documents;
use tritium_train::tokenizer::{Tokenizer, train_bpe};
use tritium_train::{RunConfig, TrainOptions};

use crate::progress::{Progress, stop_on_ctrl_c};

#[derive(Args)]
pub struct TrainArgs {
    /// Run config (TOML with [model], [data], [train]). With --resume, defaults to the run's own config.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. --set max_steps=100 --set model.quant=none (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Run directory (default: runs/<config file stem>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its latest checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Compute device, overriding the config's [train].device (and .devices): flex, wgpu,
    /// wgpu:N, cuda, cuda:N (the last two need builds with `--features wgpu` / `cuda`).
    #[arg(long)]
    device: Option<Backend>,
    /// Data-parallel training over several devices, comma-separated (cuda:0,cuda:1): a replica
    /// on each, the step's micro-batches dealt out, gradients summed by Burn's all-reduce.
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    devices: Vec<Backend>,
}

#[derive(Subcommand)]
pub enum TokenizerCmd {
    /// Train a byte-level BPE (GPT-2 pre-tokenizer, <|endoftext|> special token).
    Train {
        /// Text files (.txt, .gz, .xz, JSONL with "text").
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        #[arg(long)]
        vocab_size: usize,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum DataCmd {
    /// Tokenize a corpus into token shards (train-*.bin, val-*.bin, meta.json) for training. Run
    /// the same command again to finish an interrupted preparation.
    Prepare {
        #[arg(long)]
        tokenizer: PathBuf,
        /// Files (.txt, .jsonl, .parquet; text and JSONL also .gz/.zst/.xz), directories of
        /// them, or quoted glob patterns ('shards/*.parquet').
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Every n-th document goes to the validation split (at least 2: 1 would leave nothing
        /// to train on).
        #[arg(long, default_value_t = 20, value_parser = crate::run_cmd::at_least(2))]
        val_every: usize,
        /// The JSONL field or Parquet column holding the text.
        #[arg(long, default_value = tritium_train::text::DEFAULT_FIELD)]
        field: String,
        /// Train tokens per shard (what an interrupted run may have to redo; a shard is built in
        /// memory, so at most 2^31).
        #[arg(long, default_value_t = tritium_train::prepare::DEFAULT_SHARD_TOKENS,
              value_parser = crate::run_cmd::between(1, tritium_train::prepare::MAX_SHARD_TOKENS))]
        shard_tokens: usize,
    },
}

pub fn tokenizer(cmd: TokenizerCmd) -> Result<()> {
    match cmd {
        TokenizerCmd::Train {
            input,
            vocab_size,
            out,
        } => {
            if vocab_size < 257 {
                bail!("--vocab-size {vocab_size}: must exceed the 256 byte tokens");
            }
            check_output(&out, &input).map_err(anyhow::Error::msg)?;
            let mut docs = Vec::new();
            for p in &input {
                docs.extend(documents(p)?);
            }
            if docs.is_empty() {
                let names: Vec<String> = input.iter().map(|p| p.display().to_string()).collect();
                bail!(
                    "no text in the inputs ({}): nothing to train on",
                    names.join(", ")
                );
            }
            train_bpe(&docs, vocab_size, &out)?;
            let t = Tokenizer::load(&out)?;
            println!(
                "wrote {} ({} tokens, end-of-text id {})",
                out.display(),
                t.vocab_size(),
                t.eot_id
            );
            Ok(())
        }
    }
}

pub fn data(cmd: DataCmd) -> Result<()> {
    match cmd {
        DataCmd::Prepare {
            tokenizer,
            input,
            out,
            val_every,
            field,
            shard_tokens,
        } => {
            let tok = Tokenizer::load(&tokenizer)?;
            let opts = PrepareOptions {
                val_every,
                field,
                shard_tokens,
            };
            let r = prepare(&tok, &input, &out, &opts, &mut |_| {
                std::ops::ControlFlow::Continue(())
            })?
            .expect("runs to the end unless its callback stops it");
            let m = &r.meta;
            if r.resumed_shards > 0 {
                println!(
                    "resumed after {} shards written by an earlier run",
                    r.resumed_shards
                );
            }
            println!(
                "{}: {} train tokens ({} documents), {} validation tokens ({} documents) in {} shards, {} per token; {:.1} MB of text in {:.2} s = {:.2} MB/s",
                out.display(),
                m.train_tokens,
                m.train_documents,
                m.val_tokens,
                m.val_documents,
                m.shards.len(),
                if m.token_bytes == 2 { "u16" } else { "u32" },
                r.bytes_this_run as f64 / 1e6,
                r.seconds,
                r.bytes_this_run as f64 / 1e6 / r.seconds
            );
            Ok(())
        }
    }
}

pub fn train(a: TrainArgs, fused: bool, check_memory: bool) -> Result<()> {
    let (config_path, out, resume) = match (&a.resume, &a.config) {
        (Some(run), cfg) => (
            cfg.clone().unwrap_or_else(|| run.join("config.toml")),
            run.clone(),
            true,
        ),
        (None, Some(cfg)) => {
            let stem = cfg
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into());
            (
                cfg.clone(),
                a.out
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("runs").join(stem)),
                false,
            )
        }
        (None, None) => bail!("give --config FILE for a new run, or --resume RUN_DIR"),
    };
    if resume && a.config.is_none() && out.is_dir() && !config_path.exists() {
        bail!(
            "{}: not a training run (no config.toml); --resume takes the --out of `tritium train`",
            out.display()
        );
    }
    let mut config = RunConfig::load(&config_path, &a.set)?;
    if let Some(d) = a.device {
        config.train.device = d;
        config.train.devices.clear();
    }
    if !a.devices.is_empty() {
        config.train.devices = a.devices.clone();
    }
    for w in config.model.warnings() {
        eprintln!("warning: {}: {w}", config_path.display());
    }
    let stop = stop_on_ctrl_c()?;
    let mut view = Progress::new(out.clone());
    let summary = tritium_train::train(
        TrainOptions {
            config,
            out: out.clone(),
            resume,
            stop,
            fused,
            check_memory,
        },
        &mut |e| view.event(e),
    )
    .with_context(|| format!("training run {}", out.display()))?;
    view.finish();
    if summary.interrupted {
        println!(
            "interrupted at step {}; continue with: tritium train --resume {}",
            summary.step,
            out.display()
        );
    } else {
        let val = summary
            .last_val_loss
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "n/a".into());
        let rss = tritium_train::bench::peak_rss_mib()
            .map(|m| format!("{m:.0} MiB"))
            .unwrap_or_else(|| "n/a".into());
        println!(
            "done: step {}, validation loss {val}; {:.1} tokens/s over the loop (evaluation and checkpoints included), peak RSS {rss}; run in {}",
            summary.step,
            summary.loop_tokens_per_s,
            out.display()
        );
    }
    Ok(())
}
