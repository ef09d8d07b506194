//! `tritium run` (generate text, or chat) and `tritium bench` (prompt and generation speed, like
//! llama-bench) on the bundled engine.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use tritium_engine::forward::{Step, forward_batch};
use tritium_engine::{
    Chat, KvType, Logits, Model, Runtime, Sampler, SamplerConfig, Session, Stop, generate,
};

#[derive(Args)]
pub struct RunArgs {
    /// The GGUF file (written by `tritium export`, or any `bitnet` GGUF with TQ1_0/TQ2_0/I2_S weights).
    pub model: PathBuf,
    /// Prompt text.
    #[arg(short, long, default_value = "")]
    pub prompt: String,
    /// Tokens to generate at most.
    #[arg(short = 'n', long, default_value_t = 128)]
    pub n_predict: usize,
    // Negative numbers parse as values, so they reach the range checks and their message.
    /// Temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the output contains this text (repeatable).
    #[arg(long = "stop")]
    pub stops: Vec<String>,
    /// Context size (default: the model's context length).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Worker threads (default: one per core).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub kv: KvCacheArg,
    /// Interactive chat using the file's chat template (or a ChatML default).
    #[arg(long, conflicts_with = "prompt")]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long)]
    pub system: Option<String>,
    /// A LoRA adapter GGUF (llama.cpp's format) applied beside the ternary projections.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Multiplies the adapter's alpha/r (llama.cpp's --lora-scaled; negative subtracts it).
    #[arg(long, default_value_t = 1.0, requires = "lora")]
    pub lora_scale: f32,
    /// Print timings to stderr.
    #[arg(long)]
    pub verbose: bool,
}

#[derive(Args)]
pub struct BenchArgs {
    pub model: PathBuf,
    /// Prompt tokens processed in one batch.
    #[arg(long, default_value_t = 128, value_parser = at_least_one())]
    pub pp: usize,
    /// Tokens generated one at a time after the prompt.
    #[arg(long, default_value_t = 128, value_parser = at_least_one())]
    pub tg: usize,
    /// Timed repeats (after one untimed warm-up); medians are reported.
    #[arg(long, default_value_t = 3, value_parser = at_least_one())]
    pub reps: usize,
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub kv: KvCacheArg,
    /// Also measure the machine's streaming read bandwidth and report decode as a fraction of it.
    #[arg(long)]
    pub bandwidth: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also decode this many sequences together (one batched forward a step, as `tritium serve`
    /// runs its slots), each after the same prompt: aggregate tokens/s and the gain over one.
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    pub batch: usize,
}

/// `--kv-cache`, shared by the commands that run the engine.
#[derive(Args, Clone, Copy)]
pub struct KvCacheArg {
    /// What the KV cache holds: f32 (what training computed) or f16 (llama.cpp's default: half
    /// the memory and the bytes attention reads; each key and value rounded once).
    #[arg(long, default_value_t = KvType::F32, value_parser = clap::value_parser!(KvType))]
    pub kv_cache: KvType,
}

/// A count flag that must be at least `min` (clap names the flag and its value).
pub fn at_least(min: usize) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync {
    move |s: &str| match s.parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        Ok(_) => Err(format!("must be at least {min}")),
        Err(e) => Err(format!("{e} (a whole number ≥ {min} expected)")),
    }
}

/// A count flag that must lie in `min..=max`.
pub fn between(
    min: usize,
    max: usize,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync {
    move |s: &str| match s.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) => Err(format!("must lie between {min} and {max}")),
        Err(e) => Err(format!("{e} (a whole number from {min} to {max} expected)")),
    }
}

/// A count flag that must be at least 1.
pub fn at_least_one() -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync {
    at_least(1)
}

/// The engine's runtime for `-t THREADS`, saying so when the request exceeds the cores this
/// process may use (more threads would only spin against each other).
pub fn runtime(threads: usize) -> Runtime {
    let (n, capped) = Runtime::cap(threads);
    if capped {
        eprintln!("warning: -t {threads}: using {n} threads, the cores this process may use");
    }
    Runtime::new(n)
}

fn load(path: &std::path::Path, threads: usize) -> Result<Model> {
    Model::load(path, &runtime(threads)).map_err(anyhow::Error::from)
}

pub fn run(a: RunArgs) -> Result<()> {
    let t0 = Instant::now();
    let sampling = SamplerConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        repeat_last_n: a.repeat_last_n,
        seed: a.seed,
    };
    // Every flag is checked before the model is loaded.
    sampling.validate().map_err(anyhow::Error::msg)?;
    if a.stops.iter().any(String::is_empty) {
        bail!("--stop \"\": a stop string must not be empty (it would stop before any token)");
    }
    if a.system.is_some() && !a.chat {
        bail!("--system: a system message is for --chat");
    }
    if !(a.lora_scale.is_finite()) {
        bail!("--lora-scale {}: must be a finite number", a.lora_scale);
    }
    let model = load(&a.model, a.threads)?;
    let ctx = a.ctx.unwrap_or(model.cfg.ctx);
    if ctx == 0 || ctx > model.cfg.ctx {
        bail!(
            "--ctx {ctx}: must be between 1 and the model's context of {}",
            model.cfg.ctx
        );
    }
    let lora = match &a.lora {
        Some(p) => {
            let mut l = tritium_engine::Lora::load(p, &model)?;
            l.user_scale = a.lora_scale;
            Some(l)
        }
        None => None,
    };
    let mut sess = Session::with_kv(&model, ctx, a.kv.kv_cache)?;
    sess.lora = lora.as_ref();
    let mut sampler = Sampler::new(sampling);
    if a.chat {
        return chat(&a, &mut sess, &mut sampler);
    }
    let prompt = model
        .tokenizer
        .encode(&a.prompt)
        .map_err(tritium_engine::Error::Tokenizer)?;
    let prompt = if prompt.is_empty() {
        // An empty prompt starts where training's documents do.
        vec![
            model
                .tokenizer
                .doc_start()
                .context("the prompt is empty and the model has no BOS/EOS token to start from")?,
        ]
    } else {
        prompt
    };
    // Written, not printed: a reader that goes away (`| head`) must not make this panic.
    let stdout = std::io::stdout();
    let _ = write!(stdout.lock(), "{}", a.prompt);
    let g = generate(
        &mut sess,
        &mut sampler,
        &prompt,
        a.n_predict,
        &a.stops,
        |piece| {
            let mut out = stdout.lock();
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        },
    )?;
    let _ = writeln!(stdout.lock());
    if a.verbose {
        eprintln!(
            "load {:.3} s ({} ternary kernels: {}), first token {:.3} s after start; prompt {} tokens {:.1} tok/s; generated {} tokens {:.1} tok/s; stop: {:?}",
            model.load_seconds,
            model.weight_type.name(),
            model.rt.isa.name(),
            t0.elapsed().as_secs_f64() - g.gen_seconds,
            g.prompt_tokens,
            g.prompt_tokens as f64 / g.prompt_seconds,
            g.tokens.len(),
            g.tokens.len().saturating_sub(1) as f64 / g.gen_seconds.max(1e-9),
            g.stop
        );
    }
    Ok(())
}

fn chat(a: &RunArgs, sess: &mut Session, sampler: &mut Sampler) -> Result<()> {
    let template = sess.model.tokenizer.chat_template.clone();
    let mut chat = Chat::new(template.as_deref(), a.system.as_deref())?;
    let stdin = std::io::stdin();
    eprintln!("chat: type a message, an empty line to quit.");
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        let g = chat.reply(sess, sampler, line.trim_end(), a.n_predict, &a.stops, |p| {
            print!("{p}");
            let _ = std::io::stdout().flush();
        })?;
        println!();
        if g.stop == Stop::Context {
            bail!("the conversation filled the context of {} tokens", sess.ctx);
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Streaming read bandwidth with the engine's threads: each reads its share of a 512 MiB buffer.
fn read_bandwidth_gbs() -> f64 {
    use rayon::prelude::*;
    let n = 64 << 20; // u64s
    let buf: Vec<u64> = (0..n as u64).collect();
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let s: u64 = buf
            .par_chunks(1 << 20)
            .map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
            .reduce(|| 0, u64::wrapping_add);
        let gbs = (n * 8) as f64 / t.elapsed().as_secs_f64() / 1e9;
        std::hint::black_box(s);
        best = best.max(gbs);
    }
    best
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let start = Instant::now();
    let model = load(&a.model, a.threads)?;
    let load_s = start.elapsed().as_secs_f64();
    if a.pp.saturating_add(a.tg) > model.cfg.ctx {
        bail!(
            "--pp {} + --tg {} exceeds the model's context of {}",
            a.pp,
            a.tg,
            model.cfg.ctx
        );
    }
    let mut sess = Session::with_kv(&model, a.pp + a.tg, a.kv.kv_cache)?;
    let v = model.cfg.vocab as u64;
    // Prompt ids spread over the vocabulary, fixed so runs compare.
    let prompt: Vec<u32> = (0..a.pp as u64)
        .map(|i| ((i * 2654435761 + 17) % v) as u32)
        .collect();
    // Time to first token: load + a one-token prompt.
    let t = Instant::now();
    sess.forward(&prompt[..1], Logits::Last)?;
    let first_token_s = load_s + t.elapsed().as_secs_f64();
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for rep in 0..=a.reps {
        sess.reset();
        let t = Instant::now();
        let logits = sess.forward(&prompt, Logits::Last)?;
        let mut next = argmax_f32(logits);
        let pp_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..a.tg {
            let l = sess.forward(&[next], Logits::Last)?;
            next = argmax_f32(l);
        }
        let tg_s = t.elapsed().as_secs_f64();
        if rep > 0 {
            pp.push(a.pp as f64 / pp_s);
            tg.push(a.tg as f64 / tg_s);
        }
    }
    let (pp_med, tg_med) = (median(&mut pp), median(&mut tg));
    let batch_med = if a.batch > 1 {
        Some(batched_decode(
            &model,
            &prompt,
            a.batch,
            a.tg,
            a.reps,
            a.kv.kv_cache,
        )?)
    } else {
        None
    };
    // A decode step reads the weights and the KV cache up to its position: over the timed steps
    // (positions pp..pp+tg) that is pp + (tg + 1) / 2 positions on average. Short contexts leave
    // the cache small beside the weights; at 125m and 256 positions it is a sixth of the bytes.
    let weight_bytes = model.bytes_per_token();
    let kv_bytes = model.kv_bytes_per_position(a.kv.kv_cache) * (2 * a.pp + a.tg + 1) / 2;
    let bytes_per_token = weight_bytes + kv_bytes;
    let bw = if a.bandwidth {
        Some(read_bandwidth_gbs())
    } else {
        None
    };
    let rss = tritium_train::bench::peak_rss_mib();
    let report = serde_json::json!({
        "model": a.model.display().to_string(),
        "weight_type": model.weight_type.name(),
        "isa": model.rt.isa.name(),
        "kv_cache": a.kv.kv_cache.to_string(),
        "threads": model.rt.threads(),
        "ternary_weights": model.ternary_weights(),
        "file_ternary_bits_per_weight": model.ternary_bits_per_weight(),
        "file_bytes": model.file_bytes,
        "load_seconds": load_s,
        "first_token_seconds": first_token_s,
        "pp": a.pp, "tg": a.tg, "reps": a.reps,
        "pp_tokens_per_s": pp_med,
        "pp_min": pp.first(), "pp_max": pp.last(),
        "tg_tokens_per_s": tg_med,
        "tg_min": tg.first(), "tg_max": tg.last(),
        "bytes_per_token": bytes_per_token,
        "weight_bytes_per_token": weight_bytes,
        "kv_bytes_per_token": kv_bytes,
        "decode_gbs": bytes_per_token as f64 * tg_med / 1e9,
        "read_bandwidth_gbs": bw,
        "bandwidth_fraction": bw.map(|b| bytes_per_token as f64 * tg_med / 1e9 / b),
        "peak_rss_mib": rss,
        "batch": a.batch,
        "tg_batch_tokens_per_s": batch_med,
        "batch_gain": batch_med.map(|b| b / tg_med),
    });
    if a.json {
        println!("{report}");
    } else {
        println!(
            "{}  {}  {} threads  kernels {}  KV cache {}\n  pp{:<4} {:8.1} tok/s  ({:.1}–{:.1})\n  tg{:<4} {:8.1} tok/s  ({:.1}–{:.1})\n  load {:.3} s, first token {:.3} s, peak RSS {:.0} MiB, {:.1} MB read per token ({:.1} MB weights, {:.1} MB KV cache on average){}",
            a.model.display(),
            model.weight_type.name(),
            model.rt.threads(),
            model.rt.isa.name(),
            a.kv.kv_cache,
            a.pp,
            pp_med,
            pp[0],
            pp[pp.len() - 1],
            a.tg,
            tg_med,
            tg[0],
            tg[tg.len() - 1],
            load_s,
            first_token_s,
            rss.unwrap_or(f64::NAN),
            bytes_per_token as f64 / 1e6,
            weight_bytes as f64 / 1e6,
            kv_bytes as f64 / 1e6,
            match bw {
                Some(b) => format!(
                    ", decode at {:.1} GB/s = {:.0}% of the measured {b:.1} GB/s",
                    bytes_per_token as f64 * tg_med / 1e9,
                    100.0 * bytes_per_token as f64 * tg_med / 1e9 / b
                ),
                None => String::new(),
            }
        );
        if let Some(b) = batch_med {
            println!(
                "  tg{:<4} × {} sequences in one batch: {b:8.1} tok/s in all, {:.2}× one sequence",
                a.tg,
                a.batch,
                b / tg_med
            );
        }
    }
    Ok(())
}

/// Median aggregate tokens/s of `n` sequences decoding `tg` tokens each, one batched forward a
/// step, every sequence first given `prompt` on its own (untimed); one warm-up round.
fn batched_decode(
    model: &Model,
    prompt: &[u32],
    n: usize,
    tg: usize,
    reps: usize,
    kv: KvType,
) -> Result<f64> {
    let mut sessions = (0..n)
        .map(|_| Session::with_kv(model, prompt.len() + tg, kv))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rates = Vec::new();
    for rep in 0..=reps {
        let mut next = Vec::with_capacity(n);
        for s in sessions.iter_mut() {
            s.reset();
            next.push([argmax_f32(s.forward(prompt, Logits::Last)?)]);
        }
        let t = Instant::now();
        for _ in 0..tg {
            let mut steps: Vec<Step> = sessions
                .iter_mut()
                .zip(&next)
                .map(|(sess, tok)| Step {
                    sess,
                    tokens: tok,
                    logits: Logits::Last,
                })
                .collect();
            forward_batch(&mut steps)?;
            drop(steps);
            for (tok, s) in next.iter_mut().zip(&sessions) {
                tok[0] = argmax_f32(&s.logits);
            }
        }
        if rep > 0 {
            rates.push((n * tg) as f64 / t.elapsed().as_secs_f64());
        }
    }
    Ok(median(&mut rates))
}

/// Greedy decoding's choice, as `tritium run --temp 0` and the server make it.
fn argmax_f32(l: &[f32]) -> u32 {
    tritium_engine::kernels::rows::argmax(l) as u32
}
