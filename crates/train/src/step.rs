//! One training step: forward → cross-entropy → backward → AdamW update.

use tritium_model::burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use tritium_model::burn::prelude::*;
use tritium_model::{Transformer, cross_entropy};

/// AdamW settings. Burn's defaults differ from PyTorch's (eps 1e-5, weight decay 1e-4), so every
/// field is explicit; the values here are PyTorch's BitNet recipe defaults.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct OptimConfig {
    pub lr: f64,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1.5e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// A model and its optimizer state.
pub struct TrainStep {
    // `optim.step` takes the model by value and returns the updated one; the `Option` lets it move
    // out without a stand-in clone, which would hold a second reference to every weight and defeat
    // the backend's in-place updates.
    model: Option<Transformer>,
    optim: tritium_model::burn::optim::ModuleOptimizer,
}

impl TrainStep {
    pub fn new(model: Transformer, cfg: &OptimConfig) -> Self {
        let optim = AdamWConfig::new()
            .with_beta_1(cfg.beta1)
            .with_beta_2(cfg.beta2)
            .with_epsilon(cfg.eps)
            .with_weight_decay(cfg.weight_decay)
            .init();
        Self {
            model: Some(model),
            optim,
        }
    }

    /// One update on `inputs → targets` (`[B, T]` each) at learning rate `lr` with quantization
    /// blend `lambda`; returns the loss before the update.
    pub fn step(
        &mut self,
        inputs: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        lr: f64,
        lambda: f32,
    ) -> f32 {
        let model = self.model.take().expect("model is always put back");
        let logits = model.forward_blend(inputs, lambda);
        let loss = cross_entropy(logits, targets);
        let value = loss.clone().inner().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.model = Some(self.optim.step(lr, model, grads));
        value
    }

    pub fn model(&self) -> &Transformer {
        self.model.as_ref().expect("model is always put back")
    }
}
