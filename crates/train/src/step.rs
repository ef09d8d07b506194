//! One optimizer step, shared by pretraining, fine-tuning and the benchmark, so the benchmark
//! measures exactly what training runs: micro-batches (forward → loss → backward → accumulate) →
//! a non-finite check → global-norm clipping → AdamW. The loss is the caller's: next-token
//! cross-entropy in pretraining, the masked response loss in fine-tuning.

use tritium_model::Transformer;
use tritium_model::burn::optim::{GradientsAccumulator, GradientsParams};

use crate::optim::{AdamW, grad_norm};

/// Runs `f` (a training step) on one of rayon's worker threads when the model is on a CPU
/// backend. The CPU backend's tensor ops and our fused kernels run their parallel loops on rayon's
/// global pool; called from a thread outside it, each loop is injected into the pool and the
/// caller sleeps on a futex until it is done, and a step runs hundreds of loops. From a worker,
/// a loop's first half runs on the calling thread and the other worker steals the rest, with no
/// sleep in between (tiny 8×128: 90k → 15k context switches over 62 steps). GPU backends keep
/// the caller's thread, whose device streams they may tie to it.
pub fn on_workers<R: Send>(cpu: bool, f: impl FnOnce() -> R + Send) -> R {
    if !cpu {
        return f();
    }
    if rayon::current_thread_index().is_none() {
        rayon::scope(|_| stealing(f))
    } else {
        stealing(f)
    }
}

/// Runs `f` on this worker while every other worker of the pool keeps looking for work until `f`
/// returns. Left alone, a worker falls asleep in the serial stretches between two parallel loops
/// (Burn's graph bookkeeping, a small op), and waking it for the next loop takes long enough on a
/// virtual machine that the caller has done most of a short loop alone meanwhile (tiny 8×128 on
/// 2 cores: 1.75 → 1.93 cores busy, 15k → 5k context switches over 82 steps, +3% tokens/s
/// median of 5 alternating runs). The spinning costs nothing but the idle core's power.
fn stealing<R>(f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = AtomicBool::new(false);
    let owner = rayon::current_thread_index();
    rayon::in_place_scope(|s| {
        for _ in 1..rayon::current_num_threads() {
            s.spawn(|_| {
                // The owner pops a spinner it finds on its own deque while it waits inside `f`:
                // that copy returns at once, or `f` could never finish.
                if rayon::current_thread_index() == owner {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let r = f();
        done.store(true, Ordering::Release);
        r
    })
}

/// Per-step knobs from the schedule.
#[derive(Debug, Clone, Copy)]
pub struct StepParams {
    pub lr: f64,
    pub weight_decay: f64,
    /// Global-norm clip threshold; 0 disables clipping.
    pub grad_clip: f32,
}

#[derive(Debug, Clone, Copy)]
pub struct StepOutput {
    /// Mean loss over the micro-batches, before the update.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

/// A loss or gradient norm that is NaN or infinite; the update was not applied.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum NonFinite {
    #[error("loss became {0}")]
    Loss(f32),
    #[error("gradient norm became {0}")]
    GradNorm(f32),
}

/// One step over `micro_batches` micro-batches. `micro(model, m, scale)` runs micro-batch `m`:
/// its mean loss times `scale` back-propagated, returning the unscaled loss and the gradients
/// (see [`Transformer::loss_and_grads`], which also chooses activation checkpointing).
pub fn train_step(
    model: Transformer,
    optim: &mut AdamW,
    micro_batches: usize,
    mut micro: impl FnMut(&Transformer, usize, f32) -> (f32, GradientsParams),
    p: StepParams,
) -> Result<(Transformer, StepOutput), NonFinite> {
    // The optimizer runs as the model does: fused kernels or the tensor-op reference.
    optim.fused = model.fused();
    let mut acc = GradientsAccumulator::<Transformer>::new();
    let mut losses = Vec::with_capacity(micro_batches);
    let n = micro_batches.max(1) as f32;
    // One micro-batch at a time, so only one graph's activations are alive.
    for m in 0..micro_batches {
        let (value, grads) = micro(&model, m, 1.0 / n);
        if !value.is_finite() {
            return Err(NonFinite::Loss(value));
        }
        losses.push(value);
        acc.accumulate(&model, grads);
    }
    let grads = acc.grads();
    let norm = grad_norm(&model, &grads, optim.fused);
    let clip = clip_scale(norm, &p)?;
    let model = optim.step(model, grads, p.lr, p.weight_decay, clip);
    let loss = losses.iter().sum::<f32>() / n;
    Ok((
        model,
        StepOutput {
            loss,
            grad_norm: norm,
        },
    ))
}

/// The factor that brings gradients of global norm `norm` down to `p.grad_clip` (1 when they are
/// within it or clipping is off); a non-finite norm stops the step.
pub(crate) fn clip_scale(norm: f32, p: &StepParams) -> Result<f32, NonFinite> {
    if !norm.is_finite() {
        return Err(NonFinite::GradNorm(norm));
    }
    Ok(if p.grad_clip > 0.0 && norm > p.grad_clip {
        p.grad_clip / norm
    } else {
        1.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::AdamWConfig;
    use tritium_model::burn::prelude::*;

    /// A step on workers returns its value whether it starts outside the pool or on one of its
    /// workers, nested or not, with more workers than the spinners' owner: no spinner keeps the
    /// step from finishing, and the parallel loops inside it still run on several threads.
    #[test]
    fn steps_on_workers_finish_and_spread_their_loops() {
        use rayon::prelude::*;
        use std::collections::HashSet;
        use std::sync::Mutex;
        let work = || {
            let seen = Mutex::new(HashSet::new());
            let sum: u64 = (0..200_000u32)
                .into_par_iter()
                .with_max_len(1000)
                .map(|i| {
                    seen.lock().unwrap().insert(std::thread::current().id());
                    std::hint::black_box(u64::from(i) * u64::from(i) % 7)
                })
                .sum();
            (sum, seen.into_inner().unwrap().len())
        };
        let want: u64 = (0..200_000u64).map(|i| i * i % 7).sum();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        for _ in 0..20 {
            let (sum, threads) = pool.install(|| on_workers(true, work));
            assert_eq!(sum, want);
            assert!(threads > 1, "the loop ran on {threads} thread");
            let (sum, _) = pool.install(|| on_workers(true, || on_workers(true, work)));
            assert_eq!(sum, want);
        }
        assert_eq!(on_workers(true, work).0, want);
        assert_eq!(on_workers(false, work).0, want);
    }

    /// With several micro-batches the step reports the mean of their losses (each back-propagated
    /// at its share), not the mean of the shares, with or without checkpointing.
    #[test]
    fn the_step_loss_is_the_mean_of_the_micro_batch_losses() {
        let cfg = crate::testing::tiny_config();
        let dev = Device::flex().autodiff();
        let model = Transformer::new(&cfg, &dev);
        let batch = |m: usize| crate::testing::micro_batch(m, &dev);
        let losses: Vec<f32> = (0..2)
            .map(|m| {
                let (x, y) = batch(m);
                model
                    .cross_entropy(model.forward(x), y)
                    .into_scalar::<f32>()
            })
            .collect();
        assert_ne!(losses[0], losses[1]);
        let params = StepParams {
            lr: 1e-3,
            weight_decay: 0.0,
            grad_clip: 0.0,
        };
        for recompute in [0, 2] {
            let mut optim = AdamW::new(AdamWConfig::default());
            let micro = |m: &Transformer, i: usize, scale: f32| {
                let (x, y) = batch(i);
                m.loss_and_grads(x, 1.0, None, recompute, scale, |m, h| {
                    m.cross_entropy(m.head(h), y)
                })
            };
            let (_, out) = train_step(model.clone(), &mut optim, 2, micro, params).unwrap();
            let want = (losses[0] + losses[1]) / 2.0;
            assert!(
                (out.loss - want).abs() <= 1e-6 * want,
                "{} vs {want}",
                out.loss
            );
        }
    }
}
