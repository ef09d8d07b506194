//! Activation checkpointing with LoRA dropout: the two passes through a block must draw the same
//! masks, or the gradient belongs to another loss. In a test binary of its own: the masks come
//! from the flex device's random generator, which a concurrent test would draw from too.

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Distribution;
use tritium_model::{ModelConfig, Projection, Transformer};

fn loss_and_grads(
    m: &Transformer,
    x: &Tensor<2, Int>,
    y: &Tensor<2, Int>,
    dev: &Device,
) -> (f32, GradientsParams) {
    dev.seed(77);
    // Two of the three blocks checkpointed: the kept block's masks must agree too.
    m.loss_and_grads(x.clone(), 1.0, None, 2, 1.0, |m, h| {
        m.cross_entropy(m.head(h), y.clone())
    })
}

/// The gradient of every B against a central difference of the loss along it, each loss drawn
/// from the same seed (a float model, so the loss is smooth).
#[test]
fn recomputed_blocks_see_the_dropout_masks_of_the_first_pass() {
    let cfg = ModelConfig::from_toml_str(
        "[model]\nvocab_size = 97\nd_model = 32\nn_layers = 3\nn_heads = 4\nn_kv_heads = 2\n\
         d_ff = 64\nmax_seq_len = 32\nquant = \"none\"\n",
    )
    .unwrap();
    let dev = Device::flex().autodiff();
    dev.seed(5);
    // As fine-tuning builds it: a base without gradients, then adapters that have them.
    let mut m = Transformer::new(&cfg, &dev).no_grad();
    m.attach_lora(4, 8.0, 0.5, &Projection::ALL, &dev);
    let ids = Tensor::<2, Int>::random([2, 17], Distribution::Uniform(0.0, 97.0), &dev);
    let (x, y) = (ids.clone().slice([0..2, 0..16]), ids.slice([0..2, 1..17]));
    // A first call initialises the lazily built adapters, which draws from the generator.
    let _ = loss_and_grads(&m, &x, &y, &dev);
    let (_, g) = loss_and_grads(&m, &x, &y, &dev);
    assert_eq!(g.len(), 3 * 7 * 2);
    let dir: Vec<Tensor<2>> = m
        .blocks
        .iter()
        .flat_map(|b| b.projections())
        .map(|l| g.get::<2>(l.lora.as_ref().unwrap().b.id).unwrap())
        .collect();
    let moved = |eps: f32| {
        let mut m2 = m.clone();
        let layers = m2.blocks.iter_mut().flat_map(|b| b.projections_mut());
        for (l, d) in layers.zip(&dir) {
            let lora = l.lora.as_mut().unwrap();
            let b = lora.b.val().inner() + d.clone() * eps;
            lora.b = Param::from_tensor(b.autodiff());
        }
        loss_and_grads(&m2, &x, &y, &dev).0
    };
    let eps = 1e-4;
    let numeric = ((moved(eps) - moved(-eps)) / (2.0 * eps)) as f64;
    let analytic: f64 = dir
        .iter()
        .flat_map(|d| d.clone().into_data().try_to_vec::<f32>().unwrap())
        .map(|v| (v as f64).powi(2))
        .sum();
    assert!(analytic > 1e-2, "a flat direction tests nothing");
    assert!(
        (numeric - analytic).abs() <= 1e-2 * analytic,
        "numeric {numeric} vs analytic {analytic}"
    );
}
