//! Whole-model properties: causality, and grouped-query attention equals multi-head attention
//! when the key/value heads are repeated.

mod common;

use burn::module::Param;
use burn::prelude::*;
use common::{dev, values};
use tritium_model::{FfnAct, ModelConfig, Quant, Transformer};

fn cfg(n_kv_heads: usize) -> ModelConfig {
    ModelConfig {
        vocab_size: 50,
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: Some(n_kv_heads),
        d_ff: 64,
        ffn_act: FfnAct::Silu,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        max_seq_len: 16,
        quant: Quant::Ternary,
        quant_warmup_steps: 0,
    }
}

fn ids(v: &[i64], device: &Device) -> Tensor<2, Int> {
    Tensor::<1, Int>::from_ints(v, device).reshape([1, v.len()])
}

#[test]
fn changing_a_later_token_never_changes_earlier_logits() {
    let d = dev();
    d.seed(7);
    for quant in [Quant::Ternary, Quant::None] {
        let model = Transformer::new(&ModelConfig { quant, ..cfg(2) }, &d);
        let a = [3, 14, 15, 9, 26, 5, 35, 8];
        let base = values(model.forward(ids(&a, &d)));
        for pos in 1..a.len() {
            let mut b = a;
            b[pos] = (b[pos] + 17) % 50;
            let other = values(model.forward(ids(&b, &d)));
            let v = 50;
            assert_eq!(
                &base[..pos * v],
                &other[..pos * v],
                "{quant:?}: position < {pos} changed"
            );
            assert_ne!(
                &base[pos * v..(pos + 1) * v],
                &other[pos * v..(pos + 1) * v],
                "{quant:?}: the changed position must change"
            );
        }
    }
}

#[test]
fn gqa_equals_mha_with_repeated_kv_heads() {
    let d = dev();
    d.seed(11);
    let gqa = Transformer::new(&cfg(2), &d);
    let mut mha = Transformer::new(&cfg(4), &d);
    // Copy everything; expand k and v: MHA head j uses GQA kv head j / 2 (hd = 8 rows each).
    let repeat_rows = |w: Tensor<2>| -> Tensor<2> {
        let heads: Vec<Tensor<2>> = (0..4)
            .map(|j| w.clone().slice([(j / 2) * 8..(j / 2) * 8 + 8, 0..32]))
            .collect();
        Tensor::cat(heads, 0)
    };
    mha.tok_embd.weight = Param::from_tensor(gqa.tok_embd.weight.val());
    mha.output_norm.gamma = Param::from_tensor(gqa.output_norm.gamma.val());
    for (m, g) in mha.blocks.iter_mut().zip(&gqa.blocks) {
        m.attn_norm.gamma = Param::from_tensor(g.attn_norm.gamma.val());
        m.attn.wq.weight = Param::from_tensor(g.attn.wq.weight.val());
        m.attn.wk.weight = Param::from_tensor(repeat_rows(g.attn.wk.weight.val()));
        m.attn.wv.weight = Param::from_tensor(repeat_rows(g.attn.wv.weight.val()));
        m.attn.sub_norm.gamma = Param::from_tensor(g.attn.sub_norm.gamma.val());
        m.attn.wo.weight = Param::from_tensor(g.attn.wo.weight.val());
        m.ffn_norm.gamma = Param::from_tensor(g.ffn_norm.gamma.val());
        m.ffn.gate.weight = Param::from_tensor(g.ffn.gate.weight.val());
        m.ffn.up.weight = Param::from_tensor(g.ffn.up.weight.val());
        m.ffn.sub_norm.gamma = Param::from_tensor(g.ffn.sub_norm.gamma.val());
        m.ffn.down.weight = Param::from_tensor(g.ffn.down.weight.val());
    }
    let x = ids(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], &d);
    let a = values(gqa.forward(x.clone()));
    let b = values(mha.forward(x));
    // Repeating rows keeps mean|W| (the ternary scale) and the quantized values, so the two graphs
    // compute the same numbers up to float summation order.
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(err <= 1e-5 * scale, "max error {err} (scale {scale})");
}

#[test]
fn rmsnorm_by_hand() {
    // x = [3, 4]: mean(x²) = 12.5, rms = √(12.5 + 1e-5); gains [1, 2].
    use burn::nn::RmsNormConfig;
    let d = dev();
    let mut norm = RmsNormConfig::new(2).with_epsilon(1e-5).init(&d);
    norm.gamma = Param::from_tensor(Tensor::<1>::from_floats([1.0, 2.0], &d));
    let y = values(norm.forward(Tensor::<1>::from_floats([3.0, 4.0], &d).reshape([1, 2])));
    let rms = (12.5f64 + 1e-5).sqrt();
    let expect = [(3.0 / rms) as f32, (8.0 / rms) as f32];
    for (a, b) in y.iter().zip(expect) {
        assert!((a - b).abs() < 1e-6, "{y:?} vs {expect:?}");
    }
}

#[test]
fn quant_none_is_a_plain_linear_layer() {
    // With quant = "none" a BitLinear computes x·Wᵀ exactly; with ternary it differs.
    use tritium_model::BitLinear;
    let d = dev();
    let w = Tensor::<1>::from_floats([0.3, -0.2, 0.05, 0.7, 0.1, -0.4], &d).reshape([2, 3]);
    let x = Tensor::<1>::from_floats([1.0, 2.0, -3.0], &d).reshape([1, 3]);
    let mut lin = BitLinear::new(3, 2, Quant::None, &d);
    lin.weight = Param::from_tensor(w.clone());
    // By hand: [0.3 - 0.4 - 0.15, 0.7 + 0.2 + 1.2] = [-0.25, 2.1]
    let y = values(lin.forward(x.clone(), 1.0));
    assert!(
        (y[0] + 0.25).abs() < 1e-6 && (y[1] - 2.1).abs() < 1e-6,
        "{y:?}"
    );
    lin.quant = Quant::Ternary;
    // g = mean|W| = 1.75/6; W/g = [1.03, -0.69, 0.17, 2.4, 0.34, -1.37] → [1, -1, 0, 1, 0, -1]·g.
    // s = 127/3: x_q = x exactly (1·s, 2·s, -3·s round to 42, 85, -127 → /s = 0.992, 2.008, -3).
    let g = 1.75f32 / 6.0;
    let s = 127.0f32 / 3.0;
    let xq = [42.0 / s, 85.0 / s, -127.0 / s];
    let expect = [g * (xq[0] - xq[1]), g * (xq[0] - xq[2])];
    let y = values(lin.forward(x, 1.0));
    for (a, b) in y.iter().zip(expect) {
        assert!((a - b).abs() < 1e-5, "{y:?} vs {expect:?}");
    }
}

/// Two examples packed into one row with a segment mask give each example's logits as if it ran
/// alone: the mask cuts attention between them and RoPE, being relative, needs no position reset.
#[test]
fn packed_examples_with_a_segment_mask_equal_separate_runs() {
    let d = dev();
    d.seed(3);
    let base = Transformer::new(&cfg(2), &d);
    let a = [3i64, 14, 15, 9, 26];
    let b = [5i64, 35, 8, 41];
    let packed: Vec<i64> = a.iter().chain(&b).copied().collect();
    let row = |v: &[i64]| Tensor::<1, Int>::from_ints(v, &d).reshape([1, v.len()]);
    let tokens = Tensor::cat(vec![row(&packed), row(&packed)], 0);
    let seg_packed: Vec<u32> = (0..9).map(|i| (i >= 5) as u32).collect();
    let segs = tritium_model::Segments::from_ids(&[seg_packed.clone(), seg_packed]);
    let v = 50;
    // The fused attention (example starts) and the tensor-op one (a mask) alike.
    for fused in [true, false] {
        let model = base.clone().with_fused(fused);
        let h = model.hidden_masked(tokens.clone(), 1.0, Some(&segs));
        let got = values(model.head(h));
        let want_a = values(model.forward(ids(&a, &d)));
        let want_b = values(model.forward(ids(&b, &d)));
        let want: Vec<f32> = want_a.iter().chain(&want_b).copied().collect();
        for row in 0..2 {
            let g = &got[row * 9 * v..(row + 1) * 9 * v];
            let worst = g
                .iter()
                .zip(&want)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs() / y.abs().max(1.0)));
            assert!(
                worst < 1e-4,
                "fused {fused}, row {row}: packed differs by {worst}"
            );
        }
        // Without the mask, b's tokens see a's and their logits move.
        let unmasked = values(model.forward(ids(&packed, &d)));
        let moved = unmasked[5 * v..]
            .iter()
            .zip(&want_b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            moved > 1e-3,
            "the mask must matter for this test to mean anything"
        );
    }
}

/// LoRA on a packed base is LoRA on the latent base: the same loss and the same adapter
/// gradients, to the bit, and nothing else trainable.
#[test]
fn lora_on_a_packed_base_equals_lora_on_the_latent_base() {
    use tritium_gguf::names::Projection;
    let d = dev().autodiff();
    d.seed(7);
    let mut model = Transformer::new(&cfg(2), &d);
    model.attach_lora(4, 8.0, 0.0, &Projection::ALL, &d);
    // B starts at zero; give it values so the adapters' own gradients depend on B too.
    for b in model.blocks.iter_mut() {
        for l in b.projections_mut() {
            let lora = l.lora.as_mut().unwrap();
            let shape = lora.b.dims();
            lora.b = Param::from_tensor(Tensor::random(
                shape,
                burn::tensor::Distribution::Normal(0.0, 0.1),
                &d,
            ));
        }
    }
    let latent = model.clone().freeze_base();
    let packed = model.freeze_base_packed();
    assert!(packed.is_packed() && !latent.is_packed());
    let tokens = ids(&[1, 5, 9, 2, 33, 7, 7, 40], &d);
    let targets = ids(&[5, 9, 2, 33, 7, 7, 40, 3], &d);
    let run = |m: &Transformer| {
        let loss = m.cross_entropy(m.forward(tokens.clone()), targets.clone());
        let g = loss.clone().backward();
        let mut adapter_grads = Vec::new();
        for b in &m.blocks {
            for l in b.projections() {
                let lora = l.lora.as_ref().unwrap();
                adapter_grads.push(values(lora.a.val().grad(&g).unwrap()));
                adapter_grads.push(values(lora.b.val().grad(&g).unwrap()));
                assert!(l.weight.val().grad(&g).is_none(), "the base is frozen");
            }
        }
        assert!(m.tok_embd.weight.val().grad(&g).is_none());
        (values(loss), adapter_grads)
    };
    let (loss_p, grads_p) = run(&packed);
    let (loss_l, grads_l) = run(&latent);
    assert_eq!(loss_p, loss_l);
    assert_eq!(grads_p, grads_l);
    // The latent weights are gone: the adapters (r·(d_in + d_out) per projection), the
    // embedding and the norms are what is left.
    let adapters = 4 * ((32 + 32) * 2 + (32 + 16) * 2 + (32 + 64) * 3);
    let norms = 32 + 32 + 32 + 64;
    assert_eq!(packed.num_params(), 2 * (adapters + norms) + 50 * 32 + 32);
    assert_eq!(packed.param_total(), latent.num_params());
}

/// A float model (`quant = "none"`) is not ternarized by LoRA's packed base: it keeps its weights.
#[test]
fn a_float_models_base_is_not_packed() {
    let d = dev().autodiff();
    let mut c = cfg(2);
    c.quant = Quant::None;
    let model = Transformer::new(&c, &d);
    let tokens = ids(&[1, 5, 9, 2], &d);
    let before = values(model.forward(tokens.clone()));
    let frozen = model.freeze_base_packed();
    assert!(!frozen.is_packed());
    assert_eq!(values(frozen.forward(tokens)), before);
}
