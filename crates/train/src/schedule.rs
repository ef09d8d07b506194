//! The learning-rate and weight-decay schedule, one type for pretraining and fine-tuning: linear
//! warm-up, then a cosine or BitNet's two-stage decay. Steps are 0-based: `lr_at(0)` is the rate of
//! the first optimizer step.

use serde::{Deserialize, Serialize};

/// What follows the warm-up (the `schedule` key of a run config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decay {
    /// Cosine decay from `lr` to `min_lr` at `max_steps`.
    Cosine,
    /// BitNet b1.58's recipe: linear decay from `lr`; at the midpoint the rate drops to `lr2` and
    /// decays linearly to `min_lr`, and weight decay goes to 0 for the second half.
    TwoStage,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub decay: Decay,
    pub lr: f64,
    pub min_lr: f64,
    /// Second-stage peak for `TwoStage` (default lr / 2).
    pub lr2: Option<f64>,
    pub warmup_steps: usize,
    pub max_steps: usize,
    pub weight_decay: f64,
}

impl Schedule {
    /// Learning rate at optimizer step `step` (0-based):
    /// 1. linear warm-up from lr/warmup to lr over `warmup_steps`;
    /// 2. cosine: lr → min_lr over the remaining steps;
    /// 3. two-stage: lr → (lr + lr2)/2 linearly over the first half, then lr2 → min_lr.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = (self.max_steps.saturating_sub(self.warmup_steps)).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        match self.decay {
            Decay::Cosine => {
                self.min_lr
                    + 0.5
                        * (self.lr - self.min_lr)
                        * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            Decay::TwoStage => {
                let lr2 = self.lr2.unwrap_or(self.lr * 0.5);
                let mid = self.max_steps / 2;
                if step < mid {
                    let half = (mid.saturating_sub(self.warmup_steps)).max(1) as f64;
                    let p = (step - self.warmup_steps) as f64 / half;
                    self.lr + (0.5 * (self.lr + lr2) - self.lr) * p
                } else {
                    let half = (self.max_steps - mid).max(1) as f64;
                    let p = ((step - mid) as f64 / half).min(1.0);
                    lr2 + (self.min_lr - lr2) * p
                }
            }
        }
    }

    /// Weight decay at `step`: constant, except 0 in the second half of the two-stage schedule.
    pub fn weight_decay_at(&self, step: usize) -> f64 {
        match self.decay {
            Decay::TwoStage if step >= self.max_steps / 2 => 0.0,
            _ => self.weight_decay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fine-tuning's cosine to a floor of lr/10, by hand: warm-up 1/4, 2/4, 3/4, 4/4 of lr, then
    /// half-way through the decay (lr + lr/10)/2.
    #[test]
    fn a_fine_tuning_schedule_by_hand() {
        let s = Schedule {
            decay: Decay::Cosine,
            lr: 2e-3,
            min_lr: 2e-4,
            lr2: None,
            warmup_steps: 4,
            max_steps: 24,
            weight_decay: 0.0,
        };
        for (step, want) in [
            (0, 5e-4),
            (1, 1e-3),
            (3, 2e-3),
            (4, 2e-3),
            (14, 1.1e-3),
            (24, 2e-4),
        ] {
            assert!(
                (s.lr_at(step) - want).abs() < 1e-15,
                "step {step}: {}",
                s.lr_at(step)
            );
        }
    }
}
