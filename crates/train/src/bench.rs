//! Training-step throughput: tokens per second of forward + backward + AdamW on random tokens, after
//! untimed warm-up steps, over several timed windows (median reported), with peak RSS.

use std::time::Instant;

use tritium_model::burn::prelude::*;
use tritium_model::burn::tensor::Distribution;
use tritium_model::{Backend, ModelConfig, Transformer};

use crate::step::{OptimConfig, TrainStep};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub batch: usize,
    pub seq: usize,
    pub warmup: usize,
    pub steps: usize,
    pub windows: usize,
    pub backend: Backend,
    pub seed: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub batch: usize,
    pub seq: usize,
    pub params: usize,
    /// Median over windows.
    pub tokens_per_s: f64,
    pub window_tokens_per_s: Vec<f64>,
    pub final_loss: f32,
    /// Peak resident set of the whole process, from the kernel (`VmHWM`), if available.
    pub peak_rss_mib: Option<f64>,
    pub estimated_mib: f64,
}

pub fn run_bench(
    model_cfg: &ModelConfig,
    cfg: &BenchConfig,
) -> Result<BenchReport, tritium_model::Error> {
    let device = cfg.backend.device()?.autodiff();
    device.seed(cfg.seed);
    let model = Transformer::new(model_cfg, &device);
    let mut trainer = TrainStep::new(model, &OptimConfig::default());
    let vocab = model_cfg.vocab_size as f64;
    let batch = || {
        let t = Tensor::<2>::random(
            [cfg.batch, cfg.seq + 1],
            Distribution::Uniform(0.0, vocab),
            &device,
        )
        .int();
        let t = t.clamp(0, model_cfg.vocab_size as i64 - 1);
        let inputs = t.clone().slice([0..cfg.batch, 0..cfg.seq]);
        let targets = t.slice([0..cfg.batch, 1..cfg.seq + 1]);
        (inputs, targets)
    };
    let mut loss = f32::NAN;
    for _ in 0..cfg.warmup {
        let (x, y) = batch();
        loss = trainer.step(x, y, 1e-3, 1.0);
    }
    let mut rates = Vec::with_capacity(cfg.windows);
    for _ in 0..cfg.windows {
        let start = Instant::now();
        for _ in 0..cfg.steps {
            let (x, y) = batch();
            // Reading the loss back synchronises the device, so the window includes all the work.
            loss = trainer.step(x, y, 1e-3, 1.0);
        }
        let secs = start.elapsed().as_secs_f64();
        rates.push((cfg.batch * cfg.seq * cfg.steps) as f64 / secs);
    }
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(BenchReport {
        backend: format!("{:?}", cfg.backend).to_lowercase(),
        batch: cfg.batch,
        seq: cfg.seq,
        params: model_cfg.param_count().total(),
        tokens_per_s: sorted[sorted.len() / 2],
        window_tokens_per_s: rates,
        final_loss: loss,
        peak_rss_mib: peak_rss_mib(),
        estimated_mib: model_cfg.train_step_bytes(cfg.batch, cfg.seq).total() as f64
            / (1 << 20) as f64,
    })
}

/// The process's peak resident set (`VmHWM` in /proc/self/status); `None` off Linux.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
