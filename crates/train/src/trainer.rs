//! The training loop, read top to bottom: set up (data, model, optimizer, maybe a checkpoint), then
//! per step: learning rate → micro-batches (forward, backward, accumulate) → clip → AdamW → log →
//! maybe evaluate and sample → maybe checkpoint → stop at `max_steps` or when asked to.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tritium_checkpoint::fsutil::write_atomic;
use tritium_checkpoint::{
    self as checkpoint, Checkpoint, CheckpointError, Contents, Origin, Provenance, RunLock, State,
};
use tritium_model::burn::prelude::*;
use tritium_model::burn::tensor::activation::softmax;
use tritium_model::{Backend, Transformer};

use crate::config::RunConfig;
use crate::data::{Dataset, TokenFile, splitmix64, window_start};
use crate::error::{TrainError, io};
use crate::event::{Event, StartData};
use crate::metrics::{self, Row};
use crate::optim::{self, AdamW, AdamWConfig};
use crate::parallel;
use crate::prepare::{PrepareOptions, prepare};
use crate::step::{StepParams, on_workers, train_step};
use crate::tokenizer::Tokenizer;

pub struct TrainOptions {
    pub config: RunConfig,
    /// The run directory (`runs/NAME`).
    pub out: PathBuf,
    /// Continue from the run's latest checkpoint.
    pub resume: bool,
    /// Set by a Ctrl-C handler: checkpoint and return at the next step boundary.
    pub stop: Arc<AtomicBool>,
    /// Run the fused CPU ops (the default) or the plain tensor-op model.
    pub fused: bool,
    /// Refuse a training step whose memory estimate exceeds what the machine has available.
    pub check_memory: bool,
}

/// How a run ended.
#[derive(Debug)]
pub struct Summary {
    pub step: usize,
    pub last_val_loss: Option<f64>,
    pub interrupted: bool,
    /// Tokens trained by this invocation, over the wall time of its loop (evaluation, logging and
    /// checkpointing included): the figure to hold against `bench-train`.
    pub loop_tokens_per_s: f64,
}

pub fn train(opts: TrainOptions, on_event: &mut dyn FnMut(Event)) -> Result<Summary, TrainError> {
    let cfg = &opts.config;
    let t = &cfg.train;
    let run = &opts.out;

    // --- data -----------------------------------------------------------------------------------
    let tok = Tokenizer::load(&cfg.data.tokenizer)?;
    if !cfg.data.prepared.join("meta.json").exists() {
        if cfg.data.inputs.is_empty() {
            return Err(TrainError::Config(format!(
                "{}: no prepared data there and [data].inputs is empty; run `tritium data prepare` or list inputs",
                cfg.data.prepared.display()
            )));
        }
        let stop = &opts.stop;
        let opts = PrepareOptions {
            val_every: cfg.data.val_every,
            field: cfg.data.field.clone(),
            ..Default::default()
        };
        let r = prepare(
            &tok,
            &cfg.data.inputs,
            &cfg.data.prepared,
            &opts,
            // Ctrl-C stops the preparation at the next shard (it resumes on the next run).
            &mut |_| {
                if stop.load(Ordering::SeqCst) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )?;
        let Some(r) = r else {
            return Err(TrainError::Interrupted(format!(
                "while preparing {}; the next run carries the preparation on",
                cfg.data.prepared.display()
            )));
        };
        on_event(Event::Prepared {
            dir: cfg.data.prepared.clone(),
            tokens: r.meta.train_tokens + r.meta.val_tokens,
            seconds: r.seconds,
            text_bytes: r.bytes_this_run,
        });
    }
    let data = Dataset::open(&cfg.data.prepared, Some(&tok))?;
    data.check_window(t.seq_len)?;
    if data.meta.vocab_size > cfg.model.vocab_size {
        return Err(TrainError::Config(format!(
            "[model].vocab_size = {} is smaller than the tokenizer's {} tokens ({}); raise it",
            cfg.model.vocab_size,
            data.meta.vocab_size,
            cfg.data.tokenizer.display()
        )));
    }

    // --- model and optimizer ----------------------------------------------------------------------
    let backends = if t.devices.is_empty() {
        vec![t.device]
    } else {
        t.devices.clone()
    };
    let device = backends[0].device()?.autodiff();
    check_devices(&backends, t.grad_accum)?;
    let precision = t
        .precision
        .unwrap_or_else(|| tritium_model::bitlinear::pretraining_default(opts.fused, &device));
    let products = tritium_model::bitlinear::products(precision, opts.fused, &device, backends[0])?;
    let adam = AdamWConfig {
        beta1: t.beta1,
        beta2: t.beta2,
        eps: t.eps,
    };
    if opts.check_memory && backends[0].uses_host_memory() {
        let need = cfg
            .model
            .train_step_bytes_checkpointed(
                t.batch_size,
                t.seq_len,
                t.gradient_checkpointing.blocks(),
            )
            .total();
        tritium_model::memory::check(
            need,
            "a training step of this [model] at [train].batch_size × seq_len",
        )?;
    }
    // Held until the run returns: a second writer of the same directory is refused.
    let _lock = RunLock::acquire(run)?;
    let metrics_path = run.join("metrics.jsonl");
    let (model, optim, mut step, mut tokens, resumed_best) = if opts.resume {
        let ckpt = Checkpoint::open(&checkpoint::latest(run)?)?;
        let state = &ckpt.state;
        if state.model != cfg.model {
            return Err(CheckpointError::Bad {
                path: ckpt.dir.clone(),
                msg: format!(
                    "checkpoint is of another model ([model] there: {:?}; here: {:?}); resume with its own config",
                    state.model, cfg.model
                ),
            }
            .into());
        }
        if state.tokenizer_hash != tok.hash {
            return Err(TrainError::Config(format!(
                "{}: checkpoint was trained with another tokenizer than {}",
                ckpt.dir.display(),
                cfg.data.tokenizer.display()
            )));
        }
        let model = ckpt
            .load_model(&device)?
            .with_fused(opts.fused)
            .with_precision(precision);
        let optim = optim::load_from_checkpoint(adam, &ckpt.dir, &model, &device)?;
        // Rows logged after that checkpoint (before a crash) are recomputed, so drop them.
        metrics::truncate_after(&metrics_path, state.step).map_err(io(&metrics_path))?;
        (model, optim, state.step, state.tokens, state.best_val_loss)
    } else {
        checkpoint::ensure_fresh(run)?;
        std::fs::create_dir_all(run).map_err(io(run))?;
        let _ = std::fs::remove_file(&metrics_path);
        (
            Transformer::seeded(&cfg.model, t.seed, &device)
                .with_fused(opts.fused)
                .with_precision(precision),
            AdamW::new(adam),
            0usize,
            0u64,
            None,
        )
    };
    // Data parallelism: a replica of the model and optimizer per further device, forked from the
    // first, and Burn's all-reduce over them all. Replica 0 is the run's model: it is evaluated,
    // sampled and saved.
    let mut devices = vec![device.clone()];
    for b in &backends[1..] {
        devices.push(b.device()?.autodiff());
    }
    let mut models = vec![model];
    let mut optims = vec![optim];
    for d in &devices[1..] {
        models.push(models[0].clone().fork(d));
        optims.push(optims[0].to_device(d));
    }
    let all_reduce = (devices.len() > 1).then(|| {
        parallel::AllReduce::new(
            devices
                .iter()
                .map(|d| d.clone().without_autodiff())
                .collect(),
        )
    });
    let config_path = run.join("config.toml");
    // With the precision it resolved to, so that a resume on another machine or backend keeps it.
    let mut resolved = cfg.clone();
    resolved.train.precision = Some(precision);
    let text = toml::to_string_pretty(&resolved).map_err(|e| TrainError::Config(e.to_string()))?;
    write_atomic(&config_path, text.as_bytes()).map_err(io(&config_path))?;

    let tokens_per_step = t.batch_size * t.seq_len * t.grad_accum;
    on_event(Event::Start {
        first_step: step,
        max_steps: t.max_steps,
        data: StartData::Corpus {
            tokens_per_step,
            params: cfg.model.param_count().total(),
            train_tokens: data.train.len(),
            val_tokens: data.val.len(),
            unigram_entropy: data.val.unigram_entropy(),
        },
        products: (precision != tritium_model::Precision::F32).then_some(products),
    });

    let mut best_val: Option<f64> = resumed_best;
    let mut last_val = None;
    let provenance = Provenance {
        run: serde_json::to_value(&resolved).unwrap_or_default(),
        ..Provenance::new(Origin::Train, Some(cfg.data.tokenizer.clone()))
    };
    let save = |model: &Transformer, optim: &AdamW, step: usize, tokens: u64, best: Option<f64>| {
        let state = State {
            step,
            tokens,
            best_val_loss: best,
            ..State::new(cfg.model.clone(), tok.hash.clone(), provenance.clone())
        };
        let contents = Contents {
            model,
            state: &state,
            optim: Some(&|p| optim.save(p)),
            tokenizer: Some(&cfg.data.tokenizer),
            extra: &[],
            packed_from: None,
        };
        checkpoint::save(run, &contents, t.keep_checkpoints)
    };
    let schedule = cfg.schedule();

    // --- the loop ---------------------------------------------------------------------------------
    let loop_start = Instant::now();
    let first_step = step;
    // The step whose checkpoint is on disk already: saving it again (a stop right after a
    // checkpoint, or right after resuming) would only replace a good checkpoint with itself.
    let mut saved_at = opts.resume.then_some(step);
    let rate = |step: usize| {
        ((step - first_step) * tokens_per_step) as f64 / loop_start.elapsed().as_secs_f64()
    };
    while step < t.max_steps {
        if opts.stop.load(Ordering::SeqCst) {
            if saved_at != Some(step) {
                let path = save(&models[0], &optims[0], step, tokens, best_val)?;
                on_event(Event::Checkpoint { step, path });
            }
            on_event(Event::Interrupted { step });
            return Ok(Summary {
                step,
                last_val_loss: last_val,
                interrupted: true,
                loop_tokens_per_s: rate(step),
            });
        }
        let started = Instant::now();
        let lr = schedule.lr_at(step);
        let lambda = cfg.model.quant_lambda(step);

        let params = StepParams {
            lr,
            weight_decay: schedule.weight_decay_at(step),
            grad_clip: t.grad_clip,
        };
        let loss_on = |model: &Transformer, device: &Device, m: usize, scale: f32| {
            let (x, y) = batch(
                &data.train,
                t.batch_size,
                t.seq_len,
                |row| window_start(t.seed, step, m, row, data.train.len(), t.seq_len),
                device,
            );
            model.loss_and_grads(
                x,
                lambda,
                None,
                t.gradient_checkpointing.blocks(),
                scale,
                |m, h| m.cross_entropy(m.head(h), y),
            )
        };
        let non_finite = |what| TrainError::NonFinite {
            step: step + 1,
            what,
        };
        let out = if let Some(sum) = &all_reduce {
            let micro =
                |m: &Transformer, r: usize, i: usize, scale: f32| loss_on(m, &devices[r], i, scale);
            let (next, out) = parallel::train_step(
                std::mem::take(&mut models),
                &mut optims,
                t.grad_accum,
                micro,
                params,
                sum,
            )
            .map_err(non_finite)?;
            models = next;
            out
        } else {
            let loss =
                |model: &Transformer, m: usize, scale: f32| loss_on(model, &device, m, scale);
            let model = models.pop().expect("one model");
            let optim = &mut optims[0];
            let (next, out) = on_workers(backends[0].uses_host_memory(), || {
                train_step(model, optim, t.grad_accum, loss, params)
            })
            .map_err(non_finite)?;
            models.push(next);
            out
        };
        step += 1;
        tokens += tokens_per_step as u64;

        let secs = started.elapsed().as_secs_f64();
        let row = Row {
            step,
            tokens,
            loss: Some(out.loss as f64),
            lr: Some(lr),
            grad_norm: Some(out.grad_norm as f64),
            tokens_per_s: Some(tokens_per_step as f64 / secs),
            val_loss: None,
        };
        if step % t.log_every == 0 || step == t.max_steps {
            metrics::append(&metrics_path, &row).map_err(io(&metrics_path))?;
        }
        on_event(Event::Step(row));

        if step % t.eval_every == 0 || step == t.max_steps {
            let val = evaluate(
                &models[0],
                &data.val,
                t.eval_batches,
                t.batch_size,
                t.seq_len,
                &device,
            );
            last_val = Some(val);
            best_val = Some(best_val.map_or(val, |b: f64| b.min(val)));
            let row = Row::validation(step, tokens, val);
            metrics::append(&metrics_path, &row).map_err(io(&metrics_path))?;
            let svg = run.join("loss.svg");
            write_atomic(
                &svg,
                metrics::plot_svg(&metrics::read(&metrics_path)).as_bytes(),
            )
            .map_err(io(&svg))?;
            let sample = (t.sample_tokens > 0).then(|| {
                generate(
                    &models[0],
                    &tok,
                    &t.sample_prompt,
                    t.sample_tokens,
                    cfg.model.max_seq_len,
                    t.seed ^ step as u64,
                    &device,
                )
            });
            on_event(Event::Eval {
                step,
                val_loss: val,
                sample,
            });
        }
        if step % t.checkpoint_every == 0 || step == t.max_steps {
            let path = save(&models[0], &optims[0], step, tokens, best_val)?;
            on_event(Event::Checkpoint { step, path });
            saved_at = Some(step);
        }
    }
    Ok(Summary {
        step,
        last_val_loss: last_val,
        interrupted: false,
        loop_tokens_per_s: rate(step),
    })
}

/// `[B, T]` inputs and next-token targets from windows starting where `start(row)` says.
pub(crate) fn batch(
    file: &TokenFile,
    b: usize,
    t: usize,
    start: impl Fn(usize) -> usize,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let mut x = Vec::with_capacity(b * t);
    let mut y = Vec::with_capacity(b * t);
    let mut w = Vec::with_capacity(t + 1);
    for row in 0..b {
        w.clear();
        file.window(start(row), t + 1, &mut w);
        x.extend_from_slice(&w[..t]);
        y.extend_from_slice(&w[1..]);
    }
    let mk = |v: Vec<i64>| Tensor::<1, Int>::from_ints(v.as_slice(), device).reshape([b, t]);
    (mk(x), mk(y))
}

/// Mean validation loss over `batches` fixed batches of evenly spaced windows (the same windows at
/// every evaluation, so the curve is comparable step to step).
pub fn evaluate(
    model: &Transformer,
    val: &TokenFile,
    batches: usize,
    b: usize,
    t: usize,
    device: &Device,
) -> f64 {
    let model = model.valid();
    let device = device.clone().inner();
    let n = batches * b;
    let stride = (val.len() - t - 1) / n.max(1);
    let mut total = 0.0;
    for i in 0..batches {
        let (x, y) = batch(
            val,
            b,
            t,
            |row| ((i * b + row) * stride).min(val.len() - t - 1),
            &device,
        );
        total += model
            .cross_entropy(model.forward(x), y)
            .into_scalar::<f32>() as f64;
    }
    total / batches as f64
}

/// Samples `n` tokens after `prompt` (temperature 0.8, top-k 40), recomputing the window each token;
/// a quick look at what the model learned, not the inference engine.
pub fn generate(
    model: &Transformer,
    tok: &Tokenizer,
    prompt: &str,
    n: usize,
    ctx: usize,
    seed: u64,
    device: &Device,
) -> String {
    let model = model.valid();
    let device = device.clone().inner();
    // After a document start, as every training document is.
    let mut ids = vec![tok.doc_start()];
    ids.extend(tok.encode(prompt).unwrap_or_default());
    let mut rng = seed;
    for _ in 0..n {
        let window = &ids[ids.len().saturating_sub(ctx)..];
        let x = Tensor::<1, Int>::from_ints(
            window
                .iter()
                .map(|&i| i as i64)
                .collect::<Vec<_>>()
                .as_slice(),
            &device,
        )
        .reshape([1, window.len()]);
        let logits = model.forward(x);
        let [_, len, v] = logits.dims();
        let last = logits.slice([0..1, len - 1..len, 0..v]).reshape([v]);
        let probs: Vec<f32> = softmax(last / 0.8, 0)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        let mut idx: Vec<usize> = (0..probs.len()).collect();
        idx.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        idx.truncate(40);
        let mass: f32 = idx.iter().map(|&i| probs[i]).sum();
        rng = splitmix64(rng);
        let mut u = (rng >> 11) as f32 / (1u64 << 53) as f32 * mass;
        let mut next = idx[0];
        for &i in &idx {
            u -= probs[i];
            if u <= 0.0 {
                next = i;
                break;
            }
        }
        ids.push(next as u32);
        if next as u32 == tok.eot_id {
            break;
        }
    }
    tok.decode(&ids[1..])
}

/// The devices of a run: one, or several for data parallelism, which needs Burn's all-reduce on
/// every one of them and a share of the micro-batches for each.
fn check_devices(devices: &[Backend], grad_accum: usize) -> Result<(), TrainError> {
    if devices.len() < 2 {
        return Ok(());
    }
    if let Some(b) = devices.iter().find(|b| !b.all_reduces()) {
        return Err(TrainError::Config(format!(
            "[train].devices: data-parallel training sums gradients with Burn's all-reduce, which \
             Burn 0.22 has only on CUDA (NCCL); {b} has none. Train on one device, or on \
             cuda:0,cuda:1,…"
        )));
    }
    for (i, b) in devices.iter().enumerate() {
        if devices[..i].contains(b) {
            return Err(TrainError::Config(format!(
                "[train].devices: {b} is listed twice"
            )));
        }
    }
    if !grad_accum.is_multiple_of(devices.len()) {
        return Err(TrainError::Config(format!(
            "[train].grad_accum = {grad_accum} is not a multiple of the {} devices: each device \
             takes an equal share of a step's micro-batches",
            devices.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_parallel_devices_are_checked() {
        let ok = [Backend::Cuda(0), Backend::Cuda(1)];
        check_devices(&ok, 4).unwrap();
        check_devices(&[Backend::Flex], 3).unwrap();
        let e = |d: &[Backend], accum| check_devices(d, accum).unwrap_err().to_string();
        assert!(e(&ok, 3).contains("not a multiple of the 2 devices"));
        assert!(e(&[Backend::Cuda(1), Backend::Cuda(1)], 2).contains("cuda:1 is listed twice"));
        let msg = e(&[Backend::Cuda(0), Backend::Wgpu(None)], 2);
        assert!(
            msg.contains("wgpu has none") && msg.contains("CUDA"),
            "{msg}"
        );
    }
}
