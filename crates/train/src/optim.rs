//! AdamW with PyTorch's semantics, global-norm gradient clipping, and a state file we own.
//!
//! Burn's `AdamW` differs from PyTorch in its defaults and applies one weight decay to every tensor,
//! and Burn has no global-norm clipping. This one decays matrices only (like the PyTorch anchor and
//! nanoGPT: norms' gains are not decayed), takes the weight decay per step (BitNet's two-stage
//! schedule sets it to 0 for the second half), and saves its moments to a small binary file so a
//! checkpoint resumes exactly.

use std::io::Read;
use std::path::Path;

use tritium_model::burn::module::{ModuleMapper, ModuleVisitor, Param};
use tritium_model::burn::optim::GradientsParams;
use tritium_model::burn::prelude::*;
use tritium_model::fused::{self, AdamStep};

/// Settings that stay fixed for a run (learning rate and weight decay come per step).
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

impl Default for AdamWConfig {
    /// PyTorch's AdamW with BitNet's betas: (0.9, 0.95), eps 1e-8.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
        }
    }
}

/// Moments per parameter, in the model's traversal order (which is fixed by its structure).
pub struct AdamW {
    cfg: AdamWConfig,
    /// Optimizer steps taken (for bias correction).
    pub t: u64,
    state: Vec<Option<(Tensor<1>, Tensor<1>)>>,
    /// Update with the fused one-pass kernel where the device allows (the same bits as the
    /// tensor ops); off to run the plain tensor-op update. `train_step` sets it from the model.
    pub fused: bool,
}

const MAGIC: &[u8; 8] = b"TRTMADW1";

impl AdamW {
    pub fn new(cfg: AdamWConfig) -> Self {
        Self {
            cfg,
            t: 0,
            state: Vec::new(),
            fused: true,
        }
    }

    /// One update of every parameter that has a gradient; returns the updated model.
    pub fn step<M: Module>(
        &mut self,
        model: M,
        grads: GradientsParams,
        lr: f64,
        weight_decay: f64,
        clip_scale: f32,
    ) -> M {
        self.t += 1;
        // Bias corrections for this step, in f64.
        let t = self.t as i32;
        let bc1 = 1.0 - (self.cfg.beta1 as f64).powi(t);
        let bc2 = 1.0 - (self.cfg.beta2 as f64).powi(t);
        let mut mapper = Mapper {
            opt: self,
            grads,
            index: 0,
            lr,
            weight_decay,
            clip_scale,
            bc1,
            bc2,
        };
        let model = model.map(&mut mapper);
        // Frozen parameters after the last trained one still get a slot, so the state file always
        // lists every parameter and loads against the model's full parameter list.
        let n = mapper.index;
        self.state.resize_with(n.max(self.state.len()), || None);
        model
    }

    /// The same optimizer, its moments on `device` (for a replica of the model there).
    pub fn to_device(&self, device: &Device) -> Self {
        // Moments are plain tensors, as the parameters' inner values the update works on.
        let device = &device.clone().without_autodiff();
        Self {
            cfg: self.cfg,
            t: self.t,
            state: self
                .state
                .iter()
                .map(|s| {
                    s.as_ref()
                        .map(|(m, v)| (m.clone().to_device(device), v.clone().to_device(device)))
                })
                .collect(),
            fused: self.fused,
        }
    }

    /// Writes the moments as raw little-endian f32 with a small header.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut buf = Vec::new();
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&self.t.to_le_bytes());
        buf.extend_from_slice(&(self.state.len() as u64).to_le_bytes());
        for s in &self.state {
            match s {
                None => buf.extend_from_slice(&u64::MAX.to_le_bytes()),
                Some((m, v)) => {
                    let m = m.to_data().try_to_vec::<f32>().expect("f32 moments");
                    let v = v.to_data().try_to_vec::<f32>().expect("f32 moments");
                    buf.extend_from_slice(&(m.len() as u64).to_le_bytes());
                    for x in m.iter().chain(&v) {
                        buf.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        tritium_checkpoint::fsutil::write_atomic(path, &buf)
    }

    /// Reads what [`Self::save`] wrote; `sizes` are the parameter sizes in traversal order, checked
    /// against the file so a state from another model shape is refused.
    pub fn load(
        cfg: AdamWConfig,
        path: &Path,
        sizes: &[usize],
        device: &Device,
    ) -> Result<Self, String> {
        let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        let mut r = bytes.as_slice();
        let u64_ = |r: &mut &[u8]| -> Result<u64, String> {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)
                .map_err(|_| "file is truncated".to_string())?;
            Ok(u64::from_le_bytes(b))
        };
        if r.len() < 8 || &r[..8] != MAGIC {
            return Err("not an optimizer state file (bad magic)".into());
        }
        r = &r[8..];
        let t = u64_(&mut r)?;
        let n = u64_(&mut r)? as usize;
        // A state saved before the first step holds no parameters yet.
        if n != 0 && n != sizes.len() {
            return Err(format!(
                "holds {n} parameters, the model has {}",
                sizes.len()
            ));
        }
        let mut state = Vec::with_capacity(n);
        for (i, &size) in sizes.iter().enumerate().take(n) {
            let len = u64_(&mut r)?;
            if len == u64::MAX {
                state.push(None);
                continue;
            }
            if len as usize != size {
                return Err(format!(
                    "parameter {i} has {len} moments, the model has {size} weights"
                ));
            }
            let need = 8 * size;
            if r.len() < need {
                return Err("file is truncated".into());
            }
            let floats: Vec<f32> = r[..need]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            r = &r[need..];
            let m = Tensor::<1>::from_floats(&floats[..size], device);
            let v = Tensor::<1>::from_floats(&floats[size..], device);
            state.push(Some((m, v)));
        }
        if !r.is_empty() {
            return Err("trailing bytes after the last parameter".into());
        }
        Ok(Self {
            cfg,
            t,
            state,
            fused: true,
        })
    }
}

struct Mapper<'a> {
    opt: &'a mut AdamW,
    grads: GradientsParams,
    index: usize,
    lr: f64,
    weight_decay: f64,
    clip_scale: f32,
    bc1: f64,
    bc2: f64,
}

impl ModuleMapper for Mapper<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let i = self.index;
        self.index += 1;
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let shape = tensor.dims();
        let n: usize = shape.iter().product();
        let c = self.opt.cfg;
        let mut p = tensor.inner().reshape([n]);
        let mut g = grad.reshape([n]);
        if self.opt.state.len() <= i {
            self.opt.state.resize_with(i + 1, || None);
        }
        let decays = D >= 2 && self.weight_decay != 0.0;
        let p = if fused::active(self.opt.fused, &p.device()) {
            // One pass per tensor on both cores; the same operations in the same order as the
            // tensor ops below, so the same bits (a test holds both to that).
            // Fresh moments are -0.0, not +0.0: then `0·β + y` is `y` to the bit for every y,
            // a gradient's -0.0 included, as in the tensor ops' first step (`g·(1−β)`).
            let (m, v) = self.opt.state[i].take().unwrap_or_else(|| {
                let z = Tensor::<1>::full([n], -0.0, &p.device());
                (z.clone(), z)
            });
            let step = AdamStep {
                lr: self.lr as f32,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                bc1: self.bc1 as f32,
                bc2: self.bc2 as f32,
                decay: if decays {
                    (1.0 - self.lr * self.weight_decay) as f32
                } else {
                    1.0
                },
                clip: self.clip_scale,
            };
            let (p, m, v) = fused::adamw(p, g, m, v, step);
            self.opt.state[i] = Some((m, v));
            p
        } else {
            if self.clip_scale != 1.0 {
                g = g * self.clip_scale;
            }
            let (m, v) = match self.opt.state[i].take() {
                Some((m, v)) => (
                    m * c.beta1 + g.clone() * (1.0 - c.beta1),
                    v * c.beta2 + g.square() * (1.0 - c.beta2),
                ),
                None => (g.clone() * (1.0 - c.beta1), g.square() * (1.0 - c.beta2)),
            };
            // Decoupled weight decay on matrices only, as PyTorch's AdamW with a no-decay group
            // for vectors (norm gains).
            if decays {
                p = p * (1.0 - self.lr * self.weight_decay) as f32;
            }
            let step =
                (m.clone() / self.bc1 as f32) / ((v.clone() / self.bc2 as f32).sqrt() + c.eps);
            let p = p - step * self.lr as f32;
            self.opt.state[i] = Some((m, v));
            p
        };
        let mut updated = Tensor::<D>::from_inner(p.reshape(shape));
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// Global L2 norm of all gradients (one number, like `torch.nn.utils.clip_grad_norm_`); summed
/// by the fused kernel when `fused` and the device allows.
pub fn grad_norm<M: Module>(model: &M, grads: &GradientsParams, fused: bool) -> f32 {
    struct Norm<'a> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<1>>,
        fused: f64,
        on: bool,
    }
    impl ModuleVisitor for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                if fused::active(self.on, &g.device()) {
                    self.fused += fused::sum_squares(g) as f64;
                    return;
                }
                let s = g.square().sum();
                self.sum = Some(match self.sum.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
    }
    let mut v = Norm {
        grads,
        sum: None,
        fused: 0.0,
        on: fused,
    };
    model.visit(&mut v);
    let tensors = v.sum.map(|s| s.into_scalar::<f32>() as f64).unwrap_or(0.0);
    (tensors + v.fused).sqrt() as f32
}

/// The optimizer state saved in checkpoint `ckpt` for `model` (refused if it belongs to another
/// model shape), as a run continues.
pub fn load_from_checkpoint(
    cfg: AdamWConfig,
    ckpt: &Path,
    model: &impl Module,
    device: &Device,
) -> Result<AdamW, tritium_checkpoint::CheckpointError> {
    let path = ckpt.join(tritium_checkpoint::OPTIM);
    AdamW::load(cfg, &path, &param_sizes(model), device)
        .map_err(|msg| tritium_checkpoint::CheckpointError::Bad { path, msg })
}

/// Sizes of every float parameter, in traversal order.
pub fn param_sizes<M: Module>(model: &M) -> Vec<usize> {
    struct Sizes(Vec<usize>);
    impl ModuleVisitor for Sizes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.shape().num_elements());
        }
    }
    let mut s = Sizes(Vec::new());
    model.visit(&mut s);
    s.0
}

#[cfg(test)]
mod tests {
    use tritium_model::Backend;
    use tritium_model::burn::nn::{Linear, LinearConfig};

    use super::*;

    /// Three AdamW steps on a linear layer (a decayed matrix and an undecayed bias) with a clip
    /// scale; the parameters and the saved moments, as raw values.
    fn three_steps(mut model: Linear, fused: bool) -> (Vec<f32>, Vec<f32>, Vec<u8>) {
        let dev = model.weight.device();
        let mut opt = AdamW::new(AdamWConfig::default());
        opt.fused = fused;
        let x = Tensor::<2>::from_floats(
            [
                [0.5, -1.0, 2.0, 0.25, -0.75, 1.5, -2.0],
                [1.0, 0.5, -0.5, 3.0, 0.0, -1.25, 0.75],
            ],
            &dev,
        );
        for step in 0..3 {
            let loss = model.forward(x.clone()).powf_scalar(2.0).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let clip = if step == 1 { 0.7 } else { 1.0 };
            model = opt.step(model, grads, 1e-2, 0.1, clip);
        }
        let d = tempfile::tempdir().unwrap();
        opt.save(&d.path().join("adamw")).unwrap();
        (
            model.weight.val().into_data().try_to_vec::<f32>().unwrap(),
            model
                .bias
                .unwrap()
                .val()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
            std::fs::read(d.path().join("adamw")).unwrap(),
        )
    }

    #[test]
    fn the_fused_update_equals_the_tensor_ops_bit_for_bit() {
        let dev = Backend::Flex.device().unwrap().autodiff();
        let init: Linear = LinearConfig::new(7, 5).init(&dev);
        let fused = three_steps(init.clone(), true);
        let reference = three_steps(init.clone(), false);
        assert_eq!(fused, reference);
        // And the steps did move the parameters.
        let w0: Vec<f32> = init.weight.val().into_data().try_to_vec::<f32>().unwrap();
        assert!(fused.0.iter().zip(&w0).all(|(a, b)| a != b));
    }
}
