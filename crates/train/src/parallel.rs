//! Data parallelism: one replica of the model per device, the micro-batches of a step dealt out
//! among them, their gradients summed across the devices by Burn's collective all-reduce (NCCL on
//! CUDA), and the same update applied on every device. The replicas stay identical, and a step on
//! N devices is the step one device takes accumulating all the micro-batches, up to the order of
//! the float sums.

use tritium_model::Transformer;
use tritium_model::burn::module::{Module, ModuleVisitor, Param};
use tritium_model::burn::optim::{GradientsAccumulator, GradientsParams};
use tritium_model::burn::prelude::*;
use tritium_model::burn::tensor::distributed::{
    DistributedConfig, DistributedContext, ReduceOperation, all_reduce,
};

use crate::optim::{AdamW, grad_norm};
use crate::step::{NonFinite, StepOutput, StepParams, clip_scale};

/// The micro-batches of a step that replica `r` of `replicas` runs: r, r + replicas, …
pub fn share(r: usize, replicas: usize, micro_batches: usize) -> impl Iterator<Item = usize> {
    (r..micro_batches).step_by(replicas.max(1))
}

/// Sums a gradient over the replicas, giving each replica the sum on its own device.
pub trait SumAcross {
    fn sum<const D: usize>(&self, parts: Vec<Tensor<D>>) -> Vec<Tensor<D>>;
}

/// Burn's all-reduce over the replicas' devices. Burn 0.22 implements it on CUDA only (NCCL);
/// `Backend::all_reduces` says which devices qualify, and the trainer refuses the others.
pub struct AllReduce {
    devices: Vec<Device>,
    _context: DistributedContext,
}

impl AllReduce {
    pub fn new(devices: Vec<Device>) -> Self {
        let config = DistributedConfig {
            all_reduce_op: ReduceOperation::Sum,
        };
        Self {
            _context: DistributedContext::init(devices.clone(), config),
            devices,
        }
    }
}

impl SumAcross for AllReduce {
    fn sum<const D: usize>(&self, parts: Vec<Tensor<D>>) -> Vec<Tensor<D>> {
        // Every replica's part is queued before any result is waited for: the collective
        // completes only once all devices have joined it.
        let pending: Vec<_> = parts
            .into_iter()
            .map(|t| all_reduce(t, ReduceOperation::Sum, self.devices.clone()))
            .collect();
        pending.into_iter().map(|c| c.resolve()).collect()
    }
}

/// Replaces every replica's gradients by their sum over the replicas, parameter by parameter in
/// the model's traversal order (the same on every replica: they are one model forked).
struct Reduce<'a, S> {
    grads: &'a mut [GradientsParams],
    sum: &'a S,
}

impl<S: SumAcross> ModuleVisitor for Reduce<'_, S> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let parts: Option<Vec<Tensor<D>>> = self
            .grads
            .iter_mut()
            .map(|g| g.remove::<D>(param.id))
            .collect();
        if let Some(parts) = parts {
            for (g, t) in self.grads.iter_mut().zip(self.sum.sum(parts)) {
                g.register(param.id, t);
            }
        }
    }
}

/// What one replica brings back from its micro-batches: (micro-batch, loss) pairs and the sum of
/// its gradients.
type ReplicaPart = (Vec<(usize, f32)>, GradientsParams);

/// One optimizer step over `micro_batches` micro-batches shared by the replicas (one thread
/// each). `micro(model, r, m, scale)` runs micro-batch `m` on replica `r`, as in
/// [`crate::step::train_step`]. `micro_batches` must be a multiple of the replica count, so that
/// every replica joins every collective. The clip scale is replica 0's (all hold the same sums).
pub fn train_step<S: SumAcross>(
    replicas: Vec<Transformer>,
    optims: &mut [AdamW],
    micro_batches: usize,
    micro: impl Fn(&Transformer, usize, usize, f32) -> (f32, GradientsParams) + Sync,
    p: StepParams,
    sum: &S,
) -> Result<(Vec<Transformer>, StepOutput), NonFinite> {
    let count = replicas.len();
    assert!(
        count > 0 && micro_batches.is_multiple_of(count) && optims.len() == count,
        "{micro_batches} micro-batches over {count} replicas"
    );
    let scale = 1.0 / micro_batches as f32;
    let results: Vec<Result<ReplicaPart, NonFinite>> = std::thread::scope(|s| {
        let handles: Vec<_> = replicas
            .iter()
            .enumerate()
            .map(|(r, model)| {
                let micro = &micro;
                s.spawn(move || {
                    let mut acc = GradientsAccumulator::<Transformer>::new();
                    let mut losses = Vec::new();
                    for m in share(r, count, micro_batches) {
                        let (value, grads) = micro(model, r, m, scale);
                        if !value.is_finite() {
                            return Err(NonFinite::Loss(value));
                        }
                        losses.push((m, value));
                        acc.accumulate(model, grads);
                    }
                    Ok((losses, acc.grads()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a replica's thread panicked"))
            .collect()
    });
    let mut losses = Vec::with_capacity(micro_batches);
    let mut grads = Vec::with_capacity(count);
    for r in results {
        let (l, g) = r?;
        losses.extend(l);
        grads.push(g);
    }
    replicas[0].visit(&mut Reduce {
        grads: &mut grads,
        sum,
    });
    let fused = replicas[0].fused();
    let norm = grad_norm(&replicas[0], &grads[0], fused);
    let clip = clip_scale(norm, &p)?;
    let models = replicas
        .into_iter()
        .zip(grads)
        .zip(optims.iter_mut())
        .map(|((model, g), optim)| {
            optim.fused = model.fused();
            optim.step(model, g, p.lr, p.weight_decay, clip)
        })
        .collect();
    // The mean in micro-batch order, as one device sums it.
    losses.sort_by_key(|&(m, _)| m);
    let loss = losses.iter().map(|&(_, l)| l).sum::<f32>() / micro_batches as f32;
    Ok((
        models,
        StepOutput {
            loss,
            grad_norm: norm,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::AdamWConfig;

    /// A stand-in for the collective where Burn has none (flex): both replicas live on the CPU,
    /// so the sum is formed there. Only the test uses it; the trainer uses Burn's all-reduce.
    struct HostSum;

    impl SumAcross for HostSum {
        fn sum<const D: usize>(&self, parts: Vec<Tensor<D>>) -> Vec<Tensor<D>> {
            let total = parts
                .iter()
                .cloned()
                .reduce(|a, b| a + b)
                .expect("one part at least");
            vec![total; parts.len()]
        }
    }

    #[test]
    fn micro_batches_are_dealt_out_in_turn() {
        let deal: Vec<Vec<usize>> = (0..3).map(|r| share(r, 3, 6).collect()).collect();
        assert_eq!(deal, vec![vec![0, 3], vec![1, 4], vec![2, 5]]);
        assert_eq!(share(0, 1, 3).collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    /// Two replicas sharing four micro-batches take the step one model takes accumulating all
    /// four: the same loss and update, up to the order of float sums, and identical replicas.
    #[test]
    fn two_replicas_step_as_one_device_accumulating() {
        let cfg = crate::testing::tiny_config();
        let dev = Device::flex().autodiff();
        let model = Transformer::seeded(&cfg, 3, &dev);
        let batch = |m: usize| crate::testing::micro_batch(m, &dev);
        let run = |model: &Transformer, m: usize, scale: f32| {
            let (x, y) = batch(m);
            model.loss_and_grads(x, 1.0, None, 0, scale, |m, h| m.cross_entropy(m.head(h), y))
        };
        let params = StepParams {
            lr: 1e-3,
            weight_decay: 0.1,
            grad_clip: 0.5,
        };
        let mut one = AdamW::new(AdamWConfig::default());
        let (single, want) =
            crate::step::train_step(model.clone(), &mut one, 4, &run, params).unwrap();
        let mut optims = vec![
            AdamW::new(AdamWConfig::default()),
            AdamW::new(AdamWConfig::default()),
        ];
        let replicas = vec![model.clone(), model.clone().fork(&dev)];
        let (models, got) = train_step(
            replicas,
            &mut optims,
            4,
            |m, _r, i, s| run(m, i, s),
            params,
            &HostSum,
        )
        .unwrap();
        assert!(
            (got.loss - want.loss).abs() <= 1e-6 * want.loss,
            "{got:?} vs {want:?}"
        );
        assert!(
            (got.grad_norm - want.grad_norm).abs() <= 1e-5 * want.grad_norm,
            "{got:?} vs {want:?}"
        );
        assert!(want.grad_norm > 0.5, "clipping is exercised: {want:?}");
        // The next step's loss from each replica equals the single model's.
        let next = |m: &Transformer| run(m, 5, 1.0).0;
        let (a, b, c) = (next(&single), next(&models[0]), next(&models[1]));
        assert_eq!(b, c, "the replicas stay identical");
        assert!((a - b).abs() <= 1e-5 * a, "{a} vs {b}");
        assert!(
            (a - run(&model, 5, 1.0).0).abs() > 1e-4,
            "the step moved the model"
        );
    }
}
