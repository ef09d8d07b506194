//! `tritium`: the one command. Each subcommand is a thin wrapper: parse flags, call one library
//! function, print. Errors are printed once, with their chain, and give exit code 1.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tritium_model::{Backend, ModelConfig};
use tritium_train::{BenchConfig, run_bench};

// Training allocates and frees tensors of hundreds of megabytes every step. glibc's malloc
// returns each to the kernel (mmap/munmap) and the next step faults every page back in, zeroed:
// at bitnet-125m a quarter of a training step went to the kernel's page clearing. mimalloc with
// purging off keeps freed memory for the next step (see `keep_freed_memory`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns off mimalloc's purging (returning freed memory to the OS after a delay), which would
/// bring the page faults back between training steps. `mi_option_purge_delay` is index 15 of the
/// option enum of the mimalloc that libmimalloc-sys 0.1.49 (pinned) builds, default 1000 ms; the
/// default is checked first, so another layout leaves the setting alone instead of changing
/// another option.
fn keep_freed_memory() {
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: called at the top of `main`, before any other thread exists (mi_option_set is not
    // thread safe); both calls take plain integers.
    unsafe {
        if libmimalloc_sys::mi_option_get(PURGE_DELAY) == 1000 {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        }
    }
}

mod eval_cmd;
mod finetune_cmd;
mod gguf_cmd;
mod import_cmd;
mod progress;
mod run_cmd;
mod serve_cmd;
mod train_cmd;

#[derive(Parser)]
#[command(
    name = "tritium",
    version,
    about = "Train, fine-tune, export and run BitNet b1.58 (ternary) language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Run the model as plain chains of tensor ops (the reference) instead of the fused CPU ops
    /// (int8 BitLinear, attention, RMSNorm, SiLU gate, cross-entropy); for comparisons.
    #[arg(long, global = true)]
    unfused: bool,
    /// Start a training or fine-tuning step even when its memory estimate exceeds the memory
    /// available (by default such a run is refused before anything is allocated).
    #[arg(long, global = true)]
    ignore_memory: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Train a BitNet b1.58 model from scratch (or resume a run).
    Train(train_cmd::TrainArgs),
    /// Tokenizer tools.
    #[command(subcommand)]
    Tokenizer(train_cmd::TokenizerCmd),
    /// Data tools.
    #[command(subcommand)]
    Data(train_cmd::DataCmd),
    /// Write a checkpoint as a GGUF file for llama.cpp's `bitnet` architecture.
    Export(gguf_cmd::ExportArgs),
    /// Show a GGUF file's metadata and tensors.
    Inspect(gguf_cmd::InspectArgs),
    /// Parameter counts and the memory a training step needs, for a run config.
    Info(InfoArgs),
    /// Time training steps (forward + backward + AdamW) on random tokens: tokens/s and peak RSS.
    BenchTrain(BenchTrainArgs),
    /// Generate text from a GGUF with the bundled engine (or chat with --chat).
    Run(run_cmd::RunArgs),
    /// LoRA (or full) fine-tuning of a pretrained checkpoint on instruction data.
    Finetune(finetune_cmd::FinetuneArgs),
    /// Perplexity and zero-shot accuracy of a checkpoint or a GGUF.
    Eval(eval_cmd::EvalArgs),
    /// Import a published BitNet model (Hugging Face BitNetForCausalLM) as a checkpoint.
    Import(import_cmd::ImportArgs),
    /// Prompt-processing and generation speed of the bundled engine on a GGUF, like llama-bench.
    Bench(run_cmd::BenchArgs),
    /// Serve a GGUF over HTTP with an OpenAI-compatible API (continuous batching, LoRA per request).
    Serve(serve_cmd::ServeArgs),
    /// Load an OpenAI-compatible server (tritium's or llama-server) with concurrent streamed
    /// completions: aggregate tokens/s, time to first token, gaps between tokens.
    BenchServe(serve_cmd::BenchServeArgs),
}

#[derive(Args)]
struct InfoArgs {
    /// Run config (TOML with a [model] table), e.g. configs/tiny.toml.
    #[arg(long)]
    config: PathBuf,
    /// Batch size for the memory estimate.
    #[arg(long, default_value_t = 8, value_parser = run_cmd::at_least_one())]
    batch: usize,
    /// Sequence length for the memory estimate (default: the model's max_seq_len).
    #[arg(long, value_parser = run_cmd::at_least_one())]
    seq: Option<usize>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchTrainArgs {
    /// Run config (TOML with a [model] table).
    #[arg(long)]
    config: PathBuf,
    #[arg(long, default_value_t = 8, value_parser = run_cmd::at_least_one())]
    batch: usize,
    /// Sequence length (default: the model's max_seq_len).
    #[arg(long, value_parser = run_cmd::at_least_one())]
    seq: Option<usize>,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Steps per timed window.
    #[arg(long, default_value_t = 5, value_parser = run_cmd::at_least_one())]
    steps: usize,
    /// Timed windows; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = run_cmd::at_least_one())]
    windows: usize,
    /// Compute backend: flex (default), wgpu, wgpu:N, cuda, cuda:N (built with `--features wgpu` / `cuda`).
    #[arg(long, default_value_t = Backend::Flex)]
    device: Backend,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The fused ops' product arithmetic: f32, bf16 (operands rounded to bf16, f32 accumulation;
    /// AMX tiles or AVX512-BF16, f32 on a CPU with neither), or int8 (bf16, and BitLinear input
    /// gradients as int8 × ternary), as `precision` in a run's [train].
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    precision: tritium_model::Precision,
    /// Activation checkpointing of every block (`--gradient-checkpointing`) or of the first N
    /// (`--gradient-checkpointing N`), as `gradient_checkpointing` in a run's [train].
    #[arg(long, num_args = 0..=1, default_missing_value = "all")]
    gradient_checkpointing: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_precision(s: &str) -> Result<tritium_model::Precision, String> {
    s.parse()
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = match Cli::from_arg_matches(&negative_numbers(Cli::command()).get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, as anyhow's `{:#}` prints them, less the causes whose
/// text the line already ends with: error types that name their file print their I/O cause in
/// their own message, and it should be said once.
fn report(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.ends_with(&text) {
            line = format!("{line}: {text}");
        }
    }
    line
}

/// Lets a negative number reach a flag's value parser, which names the flag and its range, instead
/// of clap taking it for a flag and advising `-- -1`, which does not work for a flag's value.
fn negative_numbers(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| {
        if a.get_action().takes_values() {
            a.allow_negative_numbers(true)
        } else {
            a
        }
    })
    .mut_subcommands(negative_numbers)
}

fn run(cli: Cli) -> Result<()> {
    let fused = !cli.unfused;
    let check_memory = !cli.ignore_memory;
    match cli.command {
        Command::Train(a) => train_cmd::train(a, fused, check_memory),
        Command::Tokenizer(c) => train_cmd::tokenizer(c),
        Command::Data(c) => train_cmd::data(c),
        Command::Export(a) => gguf_cmd::export(a),
        Command::Inspect(a) => gguf_cmd::inspect(a),
        Command::Info(a) => info(a),
        Command::BenchTrain(a) => bench_train(a, fused, check_memory),
        Command::Run(a) => run_cmd::run(a),
        Command::Bench(a) => run_cmd::bench(a),
        Command::Serve(a) => serve_cmd::serve(a),
        Command::BenchServe(a) => serve_cmd::bench_serve(a),
        Command::Eval(a) => eval_cmd::eval(a, fused),
        Command::Import(a) => import_cmd::import(a),
        Command::Finetune(a) => finetune_cmd::finetune(a, fused, check_memory),
    }
}

fn load_config(path: &std::path::Path) -> Result<ModelConfig> {
    let cfg = ModelConfig::from_toml_file(path)?;
    for w in cfg.warnings() {
        eprintln!("warning: {}: {w}", path.display());
    }
    Ok(cfg)
}

/// `--seq`, or the model's context when it is not given.
fn seq_len(cfg: &ModelConfig, seq: Option<usize>) -> Result<usize> {
    match seq {
        Some(s) if s > cfg.max_seq_len => {
            anyhow::bail!(
                "--seq {s}: beyond the model's max_seq_len of {}",
                cfg.max_seq_len
            )
        }
        Some(s) => Ok(s),
        None => Ok(cfg.max_seq_len),
    }
}

const MIB: f64 = (1 << 20) as f64;

fn info(a: InfoArgs) -> Result<()> {
    let cfg = load_config(&a.config)?;
    let seq = seq_len(&cfg, a.seq)?;
    let p = cfg.param_count();
    let mem = cfg.train_step_bytes(a.batch, seq);
    if a.json {
        let v = serde_json::json!({
            "config": a.config,
            "params": { "total": p.total(), "ternary": p.ternary, "full_precision": p.full_precision },
            "train_step": {
                "batch": a.batch, "seq": seq,
                "weights_and_optimizer_bytes": mem.weights_and_optimizer,
                "activation_bytes": mem.activations,
                "total_bytes": mem.total(),
            },
        });
        println!("{v:#}");
        return Ok(());
    }
    let m = |n: usize| n as f64 / 1e6;
    println!("{}", a.config.display());
    println!(
        "  model       d_model {} · {} layers · {} heads ({} kv) · d_ff {} · vocab {} · ctx {} · {:?} ffn · {:?}",
        cfg.d_model,
        cfg.n_layers,
        cfg.n_heads,
        cfg.kv_heads(),
        cfg.d_ff,
        cfg.vocab_size,
        cfg.max_seq_len,
        cfg.ffn_act,
        cfg.quant
    );
    println!("  parameters  {:.2}M total", m(p.total()));
    println!(
        "              {:.2}M ternary (BitLinear weights)",
        m(p.ternary)
    );
    println!(
        "              {:.2}M full precision (embedding/tied head {:.2}M, norms {:.3}M)",
        m(p.full_precision),
        m(cfg.vocab_size * cfg.d_model),
        m(p.full_precision - cfg.vocab_size * cfg.d_model)
    );
    println!(
        "  train step  batch {} × {} tokens: ~{:.0} MiB (weights + grads + AdamW {:.0} MiB, activations {:.0} MiB; estimate)",
        a.batch,
        seq,
        mem.total() as f64 / MIB,
        mem.weights_and_optimizer as f64 / MIB,
        mem.activations as f64 / MIB
    );
    Ok(())
}

fn bench_train(a: BenchTrainArgs, fused: bool, check_memory: bool) -> Result<()> {
    let cfg = load_config(&a.config)?;
    let bench = BenchConfig {
        batch: a.batch,
        seq: seq_len(&cfg, a.seq)?,
        warmup: a.warmup,
        steps: a.steps,
        windows: a.windows,
        backend: a.device,
        seed: a.seed,
        fused,
        precision: a.precision,
        gradient_checkpointing: match a.gradient_checkpointing.as_deref() {
            None => 0,
            Some("all") => usize::MAX,
            Some(n) => n
                .parse()
                .with_context(|| format!("--gradient-checkpointing {n}: a number of blocks"))?,
        },
        check_memory,
    };
    let r =
        run_bench(&cfg, &bench).with_context(|| format!("benchmarking {}", a.config.display()))?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let rates: Vec<String> = r
        .window_tokens_per_s
        .iter()
        .map(|x| format!("{x:.1}"))
        .collect();
    println!(
        "{} on {}{}: batch {} × seq {}, {:.2}M params: {:.1} tokens/s (median of windows [{}]), loss {:.3}, peak RSS {} (estimate {:.0} MiB); products: {}",
        a.config.display(),
        r.backend,
        if fused && tritium_model::fused::supported(&bench.backend.device()?) {
            " (fused ops)"
        } else {
            ""
        },
        r.batch,
        r.seq,
        r.params as f64 / 1e6,
        r.tokens_per_s,
        rates.join(", "),
        r.final_loss,
        r.peak_rss_mib
            .map(|v| format!("{v:.0} MiB"))
            .unwrap_or_else(|| "n/a".into()),
        r.estimated_mib,
        r.gemm
    );
    Ok(())
}
