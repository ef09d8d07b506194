//! Training-step throughput: tokens per second of the loop's own step ([`crate::step::train_step`]:
//! forward + backward + clipping + AdamW) on random tokens, after untimed warm-up steps, over several
//! timed windows (median reported), with peak RSS.

use std::time::Instant;

use tritium_model::burn::prelude::*;
use tritium_model::{Backend, ModelConfig, Transformer};

use crate::TrainError;
use crate::data::splitmix64;
use crate::optim::{AdamW, AdamWConfig};
use crate::step::{StepParams, on_workers, train_step};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub batch: usize,
    pub seq: usize,
    pub warmup: usize,
    pub steps: usize,
    pub windows: usize,
    pub backend: Backend,
    pub seed: u64,
    /// Time the fused CPU ops (the default) or the plain tensor-op model.
    pub fused: bool,
    /// The fused ops' product arithmetic.
    pub precision: tritium_model::Precision,
    /// Activation checkpointing: how many blocks, from the first, are recomputed.
    pub gradient_checkpointing: usize,
    /// Refuse a step whose memory estimate exceeds what the machine has available.
    pub check_memory: bool,
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
    /// The GEMM path that ran, in words.
    pub gemm: String,
}

pub fn run_bench(model_cfg: &ModelConfig, cfg: &BenchConfig) -> Result<BenchReport, TrainError> {
    if cfg.check_memory && cfg.backend.uses_host_memory() {
        let need = model_cfg
            .train_step_bytes_checkpointed(cfg.batch, cfg.seq, cfg.gradient_checkpointing)
            .total();
        tritium_model::memory::check(need, "a training step of this model at --batch × --seq")?;
    }
    let device = cfg.backend.device()?.autodiff();
    let gemm = tritium_model::bitlinear::products(cfg.precision, cfg.fused, &device, cfg.backend)?;
    device.seed(cfg.seed);
    let mut model = Transformer::seeded(model_cfg, cfg.seed, &device)
        .with_fused(cfg.fused)
        .with_precision(cfg.precision);
    let mut optim = AdamW::new(AdamWConfig::default());
    let params = StepParams {
        lr: 1e-3,
        weight_decay: 0.1,
        grad_clip: 1.0,
    };
    let mut rng = cfg.seed;
    let mut batch = |_micro: usize| {
        let ids: Vec<i64> = (0..cfg.batch * (cfg.seq + 1))
            .map(|_| {
                rng = splitmix64(rng);
                (rng % model_cfg.vocab_size as u64) as i64
            })
            .collect();
        let t =
            Tensor::<1, Int>::from_ints(ids.as_slice(), &device).reshape([cfg.batch, cfg.seq + 1]);
        (
            t.clone().slice([0..cfg.batch, 0..cfg.seq]),
            t.slice([0..cfg.batch, 1..cfg.seq + 1]),
        )
    };
    let mut loss = f32::NAN;
    let mut step = 0;
    let mut run = |model: Transformer, loss: &mut f32| {
        let loss_of = |m: &Transformer, micro: usize, scale: f32| {
            let (x, y) = batch(micro);
            m.loss_and_grads(x, 1.0, None, cfg.gradient_checkpointing, scale, |m, h| {
                m.cross_entropy(m.head(h), y)
            })
        };
        step += 1;
        // A config can make even random-token training diverge (an extreme norm_eps, say).
        let cpu = cfg.backend.uses_host_memory();
        let stepped = on_workers(cpu, || train_step(model, &mut optim, 1, loss_of, params));
        let (m, out) = stepped.map_err(|what| {
            TrainError::Config(format!("training step {step} on random tokens: {what}"))
        })?;
        *loss = out.loss;
        Ok::<_, TrainError>(m)
    };
    for _ in 0..cfg.warmup {
        model = run(model, &mut loss)?;
    }
    let mut rates = Vec::with_capacity(cfg.windows.max(1));
    for _ in 0..cfg.windows.max(1) {
        let start = Instant::now();
        for _ in 0..cfg.steps {
            // Each step reads its loss back, which synchronises the device: the window holds all the work.
            model = run(model, &mut loss)?;
        }
        rates.push((cfg.batch * cfg.seq * cfg.steps) as f64 / start.elapsed().as_secs_f64());
    }
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(BenchReport {
        backend: format!("{:?}", cfg.backend).to_lowercase(),
        batch: cfg.batch,
        seq: cfg.seq,
        params: model_cfg.param_count().total(),
        // The usual median (the mean of the middle two for an even count), as the PyTorch anchor
        // reports it; the upper middle alone flattered an even number of windows.
        tokens_per_s: if sorted.len() % 2 == 0 {
            (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
        } else {
            sorted[sorted.len() / 2]
        },
        window_tokens_per_s: rates,
        final_loss: loss,
        peak_rss_mib: peak_rss_mib(),
        gemm: gemm.to_string(),
        estimated_mib: model_cfg
            .train_step_bytes_checkpointed(cfg.batch, cfg.seq, cfg.gradient_checkpointing)
            .total() as f64
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
