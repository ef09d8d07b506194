//! The loss of one micro-batch and its parameter gradients, with activation checkpointing of
//! some or all blocks as an option (`gradient_checkpointing`).
//!
//! Without it, autodiff keeps every block's activations from the forward pass to the backward:
//! at 2B4T's shape and rows of 512 tokens that is ~130 MB a block, 3.8 GB in all. A checkpointed
//! block runs untracked in the forward pass, which keeps only its input; the backward re-runs it
//! under autodiff and back-propagates the gradient of its output into it (as the gradient of
//! `sum(y ⊙ g)`, which is `g` exactly), so one such block's activations are alive at a time. The
//! price is a second forward pass through it. The first `recompute` blocks are checkpointed; the
//! rest keep their graph, so memory and time can be traded a block at a time.

use burn::module::{ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;

use crate::fused::norm;
use crate::transformer::{Segments, Transformer};

impl Transformer {
    /// Runs `tokens: [B, T]` through the model, `loss` from the final normed hidden states
    /// `[B, T, D]` to a scalar, and back-propagates it times `scale` (a micro-batch's share of the
    /// step). Returns the loss's value, unscaled, and the gradient of every parameter that
    /// requires one. The first `recompute` blocks (all of them if it is the number of blocks or
    /// more) are checkpointed: the same gradients (with dropout, other masks), less memory, a
    /// second forward pass through them.
    pub fn loss_and_grads(
        &self,
        tokens: Tensor<2, Int>,
        lambda: f32,
        segments: Option<&Segments>,
        recompute: usize,
        scale: f32,
        loss: impl FnOnce(&Self, Tensor<3>) -> Tensor<1>,
    ) -> (f32, GradientsParams) {
        let scaled = |l: Tensor<1>| if scale == 1.0 { l } else { l * scale };
        let recompute = recompute.min(self.blocks.len());
        if recompute == 0 {
            let l = loss(self, self.hidden_masked(tokens, lambda, segments));
            let value = l.clone().inner().into_scalar::<f32>();
            return (
                value,
                GradientsParams::from_grads(scaled(l).backward(), self),
            );
        }
        let device = tokens.device();
        // Dropout draws its masks from the device's generator: both passes through a block start
        // it from the same seed, so the recomputed block sees the masks the first pass used.
        let dropout = self
            .blocks
            .iter()
            .flat_map(|b| b.projections())
            .any(|l| l.lora.as_ref().is_some_and(|a| a.dropout > 0.0));
        let seeds: Vec<u64> = if dropout {
            // One draw from the step's generator; each block's seed is a distinct mix of it.
            let draw = Tensor::<1>::random(
                [1],
                burn::tensor::Distribution::Uniform(0.0, 16_777_216.0),
                &device,
            );
            let base = draw.inner().into_scalar::<f32>() as u64;
            (0..recompute as u64)
                .map(|i| mix(base.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i))
                .collect()
        } else {
            Vec::new()
        };
        let seed = |i: usize| {
            if let Some(&s) = seeds.get(i) {
                device.seed(s);
            }
        };

        // A lazily initialised parameter shares its state with its clones, so `no_grad` on a
        // clone below would switch the original's gradient off too: initialise them first.
        self.visit(&mut Materialize);
        let embedded = self.tok_embd.forward(tokens);
        let mut inputs = Vec::with_capacity(recompute);
        let mut x = embedded.clone().detach();
        for (i, block) in self.blocks[..recompute].iter().enumerate() {
            inputs.push(x.clone());
            seed(i);
            x = block
                .clone()
                .no_grad()
                .forward(x, lambda, segments)
                .detach();
        }

        // The blocks that keep their graph, then the head, from a leaf at the boundary.
        let mut acc = GradientsAccumulator::<Transformer>::new();
        let boundary = x.require_grad();
        let mut h = boundary.clone();
        for block in &self.blocks[recompute..] {
            h = block.forward(h, lambda, segments);
        }
        let fused = crate::fused::active(self.fused, &h.device());
        let l = loss(self, norm(&self.output_norm, h, fused));
        let value = l.clone().inner().into_scalar::<f32>();
        let mut grads = scaled(l).backward();
        let mut g = boundary.grad_remove(&mut grads);
        acc.accumulate(self, GradientsParams::from_grads(grads, self));
        for (i, block) in self.blocks[..recompute].iter().enumerate().rev() {
            let Some(dy) = g.take() else { break };
            let x = inputs.pop().expect("one input a block").require_grad();
            seed(i);
            let y = block.forward(x.clone(), lambda, segments);
            let mut grads = (y * dy.autodiff()).sum().backward();
            g = x.grad_remove(&mut grads);
            acc.accumulate(self, GradientsParams::from_grads(grads, self));
        }
        // The embedding's own gradient (pretraining; a frozen embedding records nothing).
        if let Some(dy) = g
            && embedded.is_tracked()
        {
            let grads = (embedded * dy.autodiff()).sum().backward();
            acc.accumulate(self, GradientsParams::from_grads(grads, self));
        }
        (value, acc.grads())
    }
}

/// splitmix64's finaliser: distinct inputs give distinct, well-spread seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Initialises every lazily initialised parameter (Burn draws a parameter's values on first use).
pub(crate) struct Materialize;

impl ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::optim::GradientsParams;
    use burn::prelude::*;
    use burn::tensor::Distribution;

    use crate::testing::{assert_close, values};
    use crate::{Projection, Segments, Transformer};

    fn model(quant: &str, seed: u64) -> (Transformer, Device) {
        let cfg = crate::ModelConfig::from_toml_str(&format!(
            "[model]\nvocab_size = 97\nd_model = 32\nn_layers = 3\nn_heads = 4\nn_kv_heads = 2\n\
             d_ff = 64\nmax_seq_len = 32\nquant = \"{quant}\"\n"
        ))
        .unwrap();
        let dev = Device::flex().autodiff();
        dev.seed(seed);
        (Transformer::new(&cfg, &dev), dev)
    }

    /// Two packed examples in each of two rows, so the example starts are taken too.
    fn batch(dev: &Device) -> (Tensor<2, Int>, Tensor<2, Int>, Segments) {
        let ids = Tensor::<2, Int>::random([2, 17], Distribution::Uniform(0.0, 97.0), dev);
        let segs = vec![
            (0..16).map(|t| (t >= 9) as u32).collect::<Vec<_>>(),
            (0..16).map(|t| (t >= 5) as u32).collect(),
        ];
        (
            ids.clone().slice([0..2, 0..16]),
            ids.slice([0..2, 1..17]),
            Segments::from_ids(&segs),
        )
    }

    fn run(
        m: &Transformer,
        x: &Tensor<2, Int>,
        y: &Tensor<2, Int>,
        mask: &Segments,
        recompute: usize,
    ) -> (f32, GradientsParams) {
        m.loss_and_grads(x.clone(), 1.0, Some(mask), recompute, 1.0, |m, h| {
            m.cross_entropy(m.head(h), y.clone())
        })
    }

    fn grad<const D: usize>(g: &GradientsParams, p: &Param<Tensor<D>>) -> Vec<f32> {
        values(g.get::<D>(p.id).expect("a gradient"))
    }

    #[test]
    fn recomputed_blocks_give_the_gradients_of_one_graph() {
        // Pretraining: every parameter learns, the tied embedding through the head and the lookup.
        let (m, dev) = model("ternary", 3);
        let (x, y, mask) = batch(&dev);
        let (l0, g0) = run(&m, &x, &y, &mask, 0);
        let (l1, g1) = run(&m, &x, &y, &mask, 3);
        assert_eq!(l0, l1);
        assert_eq!(g0.len(), g1.len());
        // Some blocks checkpointed, the rest kept: the same again.
        let (l2, g2) = run(&m, &x, &y, &mask, 2);
        assert_eq!(l0, l2);
        for p in [
            &m.blocks[0].attn.wq.weight,
            &m.blocks[2].ffn.down.weight,
            &m.tok_embd.weight,
        ] {
            assert_close(&grad(&g2, p), &grad(&g0, p), 1e-6);
        }
        for (what, a, b) in [
            (
                "embedding",
                grad(&g1, &m.tok_embd.weight),
                grad(&g0, &m.tok_embd.weight),
            ),
            (
                "block 0 q",
                grad(&g1, &m.blocks[0].attn.wq.weight),
                grad(&g0, &m.blocks[0].attn.wq.weight),
            ),
            (
                "block 2 down",
                grad(&g1, &m.blocks[2].ffn.down.weight),
                grad(&g0, &m.blocks[2].ffn.down.weight),
            ),
            (
                "block 1 norm",
                grad(&g1, &m.blocks[1].attn_norm.gamma),
                grad(&g0, &m.blocks[1].attn_norm.gamma),
            ),
            (
                "output norm",
                grad(&g1, &m.output_norm.gamma),
                grad(&g0, &m.output_norm.gamma),
            ),
        ] {
            assert!(
                a.iter().any(|&v| v != 0.0),
                "{what}: a zero gradient tests nothing"
            );
            assert_close(&a, &b, 1e-6);
        }
    }

    #[test]
    fn recomputed_blocks_give_the_adapter_gradients_on_a_packed_base() {
        let (mut m, dev) = model("ternary", 4);
        m.attach_lora(4, 8.0, 0.0, &Projection::ALL, &dev);
        // B starts at zero: give it values so A's gradient is not zero either.
        for b in m.blocks.iter_mut() {
            for l in b.projections_mut() {
                let lora = l.lora.as_mut().unwrap();
                lora.b = Param::from_tensor(Tensor::random(
                    lora.b.dims(),
                    Distribution::Normal(0.0, 0.1),
                    &dev,
                ));
            }
        }
        let m = m.freeze_base_packed();
        let (x, y, mask) = batch(&dev);
        let (l0, g0) = run(&m, &x, &y, &mask, 0);
        let (l1, g1) = run(&m, &x, &y, &mask, usize::MAX);
        assert_eq!(l0, l1);
        assert_eq!(g0.len(), 3 * 7 * 2, "the adapters' A and B, nothing else");
        assert_eq!(g1.len(), g0.len());
        for b in &m.blocks {
            for l in b.projections() {
                let lora = l.lora.as_ref().unwrap();
                assert_close(&grad(&g1, &lora.a), &grad(&g0, &lora.a), 1e-6);
                assert_close(&grad(&g1, &lora.b), &grad(&g0, &lora.b), 1e-6);
            }
        }
    }
}
