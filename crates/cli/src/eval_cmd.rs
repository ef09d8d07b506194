//! `tritium eval`: perplexity and zero-shot tasks for a checkpoint or a GGUF.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tritium_engine::KvType;
use tritium_eval::scorers::{BurnScorer, GgufScorer};
use tritium_eval::{self as eval, Scorer, TASKS, TaskResult, tasks};
use tritium_model::Backend;

#[derive(Args)]
pub struct EvalArgs {
    /// A checkpoint or run directory (Burn) or a .gguf file (the bundled engine).
    #[arg(long)]
    pub model: PathBuf,
    /// Text file (.txt, .gz, .xz) for perplexity.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Perplexity window in tokens (default: the model's context).
    #[arg(long, value_parser = crate::run_cmd::at_least(2))]
    pub ctx: Option<usize>,
    /// Perplexity stride in tokens (default: half the window).
    #[arg(long, value_parser = crate::run_cmd::at_least_one())]
    pub stride: Option<usize>,
    /// Zero-shot tasks, comma-separated, or "all" (arc_easy, arc_challenge, piqa, boolq, copa,
    /// openbook_qa, winogrande, lambada_openai).
    #[arg(long)]
    pub tasks: Option<String>,
    /// Where the task files are.
    #[arg(long, default_value = "datasets/eval")]
    pub task_dir: PathBuf,
    /// At most N items per task.
    #[arg(long, value_parser = crate::run_cmd::at_least_one())]
    pub limit: Option<usize>,
    /// Engine threads for a GGUF (default: one per core).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub kv: crate::run_cmd::KvCacheArg,
    /// Where a checkpoint's model runs: flex (default), wgpu[:N] or cuda[:N] (with their cargo feature).
    #[arg(long, default_value_t = Backend::Flex)]
    pub device: Backend,
    /// Write the JSON results here (default: eval.json in the checkpoint, FILE.eval.json beside a GGUF).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the JSON results to stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn bar(n: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(n);
    pb.set_style(
        ProgressStyle::with_template("{msg:>16} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

pub fn eval(a: EvalArgs, fused: bool) -> Result<()> {
    if a.text.is_none() && a.tasks.is_none() {
        bail!("nothing to evaluate: pass --text FILE and/or --tasks LIST");
    }
    let names: Vec<String> = match a.tasks.as_deref() {
        None => vec![],
        Some("all") => TASKS.iter().map(|s| s.to_string()).collect(),
        Some(list) => list
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    };
    if a.tasks.is_some() && names.is_empty() {
        bail!(
            "--tasks {:?}: names no task; give \"all\" or some of {}",
            a.tasks.as_deref().unwrap_or_default(),
            TASKS.join(", ")
        );
    }
    // Check every task file before spending time on any.
    let mut loaded = Vec::new();
    let mut inputs: Vec<PathBuf> = a.text.iter().cloned().collect();
    for n in &names {
        let path = tasks::task_file(&a.task_dir, n)?;
        loaded.push((n.clone(), tasks::load(&path, a.limit)?, path.clone()));
        inputs.push(path);
    }
    // The results must not replace what is being evaluated.
    let out = a.out.clone().unwrap_or_else(|| default_out(&a.model));
    match tritium_checkpoint::resolve(&a.model) {
        Ok(dir) => inputs.extend(tritium_checkpoint::parts(&dir)),
        Err(_) => inputs.push(a.model.clone()),
    }
    tritium_checkpoint::fsutil::check_output(&out, &inputs).map_err(anyhow::Error::msg)?;
    // The model last: every flag and file is checked first.
    let is_gguf = a.model.extension().is_some_and(|e| e == "gguf");
    if !is_gguf && a.kv.kv_cache != KvType::F32 {
        bail!(
            "--kv-cache {}: a checkpoint runs in Burn, which attends in f32; the flag is for a GGUF",
            a.kv.kv_cache
        );
    }
    let mut scorer: Box<dyn Scorer> = if is_gguf {
        Box::new(GgufScorer::load(
            &a.model,
            &crate::run_cmd::runtime(a.threads),
            a.kv.kv_cache,
        )?)
    } else {
        Box::new(BurnScorer::load(&a.model, &a.device.device()?)?.with_fused(fused))
    };
    let start = Instant::now();
    let mut report = serde_json::json!({ "model": a.model.display().to_string() });
    if let Some(text_path) = &a.text {
        let text = tritium_train::text::read_text(text_path)?;
        let max = scorer.max_len();
        let ctx = match a.ctx {
            Some(c) if c > max => {
                eprintln!("warning: --ctx {c}: the model's context is {max}; using {max}");
                max
            }
            Some(c) => c,
            None => max,
        };
        // The default stride follows the window actually used.
        let stride = a.stride.unwrap_or(ctx / 2);
        if stride >= ctx {
            bail!("--stride {stride}: must be below the window of {ctx} tokens (--ctx)");
        }
        let pb = bar(1, "perplexity", a.json);
        let p = eval::perplexity(scorer.as_mut(), &text, ctx, stride, |done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        })
        .with_context(|| format!("perplexity of {}", text_path.display()))?;
        pb.finish_and_clear();
        if !a.json {
            println!(
                "perplexity of {} ({} tokens, window {ctx}, stride {stride}): {:.4}  ({:.4} nats/token, {:.4} bits/byte)",
                text_path.display(),
                p.tokens,
                p.perplexity,
                p.nats_per_token,
                p.bits_per_byte
            );
        }
        report["perplexity"] = serde_json::json!({ "text": text_path.display().to_string(), "ctx": ctx, "stride": stride, "result": p });
    }
    let mut results: Vec<TaskResult> = Vec::new();
    let mut items_done = 0;
    for (name, items, path) in &loaded {
        let pb = bar(items.len() as u64, name, a.json);
        let r = eval::run_task(scorer.as_mut(), name, items, || pb.inc(1))
            .with_context(|| path.display().to_string())?;
        pb.finish_and_clear();
        items_done += r.n;
        results.push(r);
    }
    let secs = start.elapsed().as_secs_f64();
    if !results.is_empty() && !a.json {
        println!(
            "{:<16} {:>6} {:>16} {:>16} {:>8} {:>10}",
            "task", "n", "acc", "acc_norm", "chance", "ppl"
        );
        for r in &results {
            let norm = r
                .acc_norm
                .map(|v| format!("{:.4} ± {:.4}", v, r.acc_norm_stderr.unwrap_or(0.0)))
                .unwrap_or_default();
            let ppl = r.perplexity.map(|v| format!("{v:.2}")).unwrap_or_default();
            println!(
                "{:<16} {:>6} {:>16} {:>16} {:>8.4} {:>10}",
                r.task,
                r.n,
                format!("{:.4} ± {:.4}", r.acc, r.acc_stderr),
                norm,
                r.chance,
                ppl
            );
        }
        println!(
            "{items_done} items in {secs:.1} s ({:.1} items/s)",
            items_done as f64 / secs
        );
    }
    report["tasks"] = serde_json::to_value(&results)?;
    report["seconds"] = serde_json::json!(secs);
    report["items_per_second"] = serde_json::json!(items_done as f64 / secs);
    let text = serde_json::to_string_pretty(&report)?;
    tritium_checkpoint::fsutil::write_atomic(&out, text.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    if a.json {
        println!("{text}");
    } else {
        eprintln!("results: {}", out.display());
    }
    Ok(())
}

fn default_out(model: &Path) -> PathBuf {
    if model.is_dir() {
        match tritium_checkpoint::resolve(model) {
            Ok(c) => c.join("eval.json"),
            Err(_) => model.join("eval.json"),
        }
    } else {
        let mut s = model.as_os_str().to_owned();
        s.push(".eval.json");
        PathBuf::from(s)
    }
}
