//! `tritium serve`: the flags of the OpenAI-compatible server, checked before anything binds or
//! loads.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::run_cmd::{KvCacheArg, at_least, at_least_one};

#[derive(Args)]
pub struct ServeArgs {
    /// The GGUF file to serve.
    pub model: PathBuf,
    /// Address to bind (127.0.0.1: this machine only; 0.0.0.0 exposes the server).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the one chosen is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences decoded together, each with its own KV cache (slots).
    #[arg(long, default_value_t = 4, value_parser = at_least_one())]
    pub parallel: usize,
    /// Positions per slot (default: the model's context length).
    #[arg(long, value_parser = at_least_one())]
    pub ctx: Option<usize>,
    #[command(flatten)]
    pub kv: KvCacheArg,
    /// A LoRA adapter GGUF served under NAME (repeatable); a request picks it by "model" or "lora".
    #[arg(long = "lora", value_name = "NAME=FILE")]
    pub loras: Vec<String>,
    /// The API key clients must send as `Authorization: Bearer KEY` (repeatable).
    #[arg(long = "api-key")]
    pub api_keys: Vec<String>,
    /// A file of API keys, one per line.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Longest prompt in tokens (default: the context).
    #[arg(long, value_parser = at_least_one())]
    pub max_input: Option<usize>,
    /// Most tokens one request may generate (max_tokens above it is refused).
    #[arg(long, default_value_t = 2048, value_parser = at_least_one())]
    pub max_output: usize,
    /// Requests that may wait once every slot is busy; beyond them, 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Requests per minute per client (API key, else address); beyond it, 429.
    #[arg(long, value_parser = at_least_one())]
    pub rate_limit: Option<usize>,
    /// Seconds a request may take in all (queue, prompt and generation).
    #[arg(long, default_value_t = 600, value_parser = at_least_one())]
    pub timeout: usize,
    /// Seconds running requests may go on after SIGTERM/Ctrl-C.
    #[arg(long, default_value_t = 10, value_parser = at_least(0))]
    pub shutdown_grace: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 << 20, value_parser = at_least(1024))]
    pub max_body: usize,
    /// Worker threads (default: one per core).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// Log each prompt's text (off by default: prompts may be private).
    #[arg(long)]
    pub log_prompts: bool,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let mut loras = Vec::new();
    for l in &a.loras {
        let Some((name, file)) = l
            .split_once('=')
            .filter(|(n, f)| !n.is_empty() && !f.is_empty())
        else {
            bail!("--lora {l}: expected NAME=FILE");
        };
        loras.push((name.to_string(), PathBuf::from(file)));
    }
    let mut keys = a.api_keys.clone();
    if let Some(f) = &a.api_key_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("--api-key-file {}", f.display()))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
        if keys.is_empty() {
            bail!("--api-key-file {}: no keys in the file", f.display());
        }
    }
    if keys.iter().any(String::is_empty) {
        bail!("--api-key \"\": a key must not be empty");
    }
    let rate_limit = match a.rate_limit {
        Some(n) => {
            Some(u32::try_from(n).map_err(|_| anyhow::anyhow!("--rate-limit {n}: too large"))?)
        }
        None => None,
    };
    let (threads, capped) = tritium_engine::Runtime::cap(a.threads);
    if capped {
        eprintln!(
            "warning: -t {}: using {threads} threads, the cores this process may use",
            a.threads
        );
    }
    tritium_serve::serve(tritium_serve::Options {
        model: a.model,
        host: a.host,
        port: a.port,
        parallel: a.parallel,
        ctx: a.ctx,
        kv_cache: a.kv.kv_cache,
        loras,
        api_keys: keys,
        max_input: a.max_input,
        max_output: a.max_output,
        queue: a.queue,
        rate_limit,
        timeout: Duration::from_secs(a.timeout as u64),
        shutdown_grace: Duration::from_secs(a.shutdown_grace as u64),
        body_limit: a.max_body,
        threads,
        log_prompts: a.log_prompts,
    })
    .map_err(anyhow::Error::msg)
}

#[derive(Args)]
pub struct BenchServeArgs {
    /// The server's base address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Concurrent streams, one level after another.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16", value_parser = at_least_one())]
    pub streams: Vec<usize>,
    /// Completions each stream sends, one after another.
    #[arg(long, default_value_t = 2, value_parser = at_least_one())]
    pub requests: usize,
    /// Tokens per completion (sent with ignore_eos, so every completion runs to it).
    #[arg(long, default_value_t = 128, value_parser = at_least_one())]
    pub tokens: usize,
    /// The "model" field to send.
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub api_key: Option<String>,
    /// Seconds one completion may take.
    #[arg(long, default_value_t = 300, value_parser = at_least_one())]
    pub timeout: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn bench_serve(a: BenchServeArgs) -> Result<()> {
    let load = tritium_serve::bench::Load {
        url: a.url.trim_end_matches('/').to_string(),
        model: a.model,
        api_key: a.api_key,
        streams: a.streams,
        requests_per_stream: a.requests,
        max_tokens: a.tokens,
        timeout: Duration::from_secs(a.timeout as u64),
    };
    let levels = tritium_serve::bench::run(&load).map_err(anyhow::Error::msg)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&levels)?);
        return Ok(());
    }
    // Aggregate throughput over the single stream's, the figure batching is judged by.
    let one = levels
        .iter()
        .find(|l| l.streams == 1)
        .map(|l| l.tokens_per_s);
    println!(
        "| streams | requests | tokens | seconds | tokens/s | over 1 stream | TTFT p50 ms | TTFT p99 ms | gap p50 ms | gap p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for l in levels {
        let gain = one.map_or("–".to_string(), |o| format!("{:.2}×", l.tokens_per_s / o));
        println!(
            "| {} | {} | {} | {:.2} | {:.1} | {gain} | {:.1} | {:.1} | {:.2} | {:.2} |",
            l.streams,
            l.requests,
            l.tokens,
            l.seconds,
            l.tokens_per_s,
            l.ttft_p50_ms,
            l.ttft_p99_ms,
            l.token_gap_p50_ms,
            l.token_gap_p99_ms
        );
    }
    Ok(())
}
