//! `tritium serve`: the flags of the OpenAI-compatible server, checked before anything binds or
//! loads.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::run_cmd::{at_least, at_least_one};

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
    /// Requests that may wait for a slot; beyond them, 503 with Retry-After.
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
