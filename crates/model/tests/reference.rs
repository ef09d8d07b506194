//! The Burn model against an independent PyTorch implementation (tests/reference/make_fixture.py):
//! same fixed weights and batch → same logits, loss and weight gradients within 1e-4 relative
//! (max |ours − theirs| ≤ 1e-4 · max |theirs|, per tensor).

mod common;

use burn::module::Param;
use burn::prelude::*;
use common::{ParamMut, dev, values, visit_params};
use serde::Deserialize;
use std::collections::HashMap;
use tritium_model::{FfnAct, ModelConfig, Quant, Transformer};

const REL_TOL: f32 = 1e-4;

#[derive(Deserialize)]
struct Named {
    shape: Vec<usize>,
    data: Vec<f32>,
}

#[derive(Deserialize)]
struct RefConfig {
    vocab_size: usize,
    d_model: usize,
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: usize,
    d_ff: usize,
    ffn_act: String,
    rope_theta: f32,
    norm_eps: f32,
    max_seq_len: usize,
}

#[derive(Deserialize)]
struct Fixture {
    config: RefConfig,
    tokens: Vec<Vec<i64>>,
    targets: Vec<Vec<i64>>,
    params: HashMap<String, Named>,
    logits: Named,
    loss: f32,
    grads: HashMap<String, Named>,
}

fn load(name: &str) -> Fixture {
    let path = format!(
        "{}/../../tests/reference/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn assert_rel(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = ours
        .iter()
        .zip(theirs)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        scale > 0.0,
        "{what}: reference is all zeros, the comparison would be empty"
    );
    assert!(
        err <= REL_TOL * scale,
        "{what}: max error {err:e} > {REL_TOL:e} × {scale:e}"
    );
}

fn ids(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let (b, t) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::<1, Int>::from_ints(flat.as_slice(), device).reshape([b, t])
}

fn check(name: &str) {
    let fx = load(name);
    let c = &fx.config;
    let cfg = ModelConfig {
        vocab_size: c.vocab_size,
        d_model: c.d_model,
        n_layers: c.n_layers,
        n_heads: c.n_heads,
        n_kv_heads: Some(c.n_kv_heads),
        d_ff: c.d_ff,
        ffn_act: if c.ffn_act == "silu" {
            FfnAct::Silu
        } else {
            FfnAct::Relu2
        },
        rope_theta: c.rope_theta,
        norm_eps: c.norm_eps,
        max_seq_len: c.max_seq_len,
        quant: Quant::Ternary,
        quant_warmup_steps: 0,
    };
    cfg.validate().unwrap();
    let d = dev().autodiff();
    let mut model = Transformer::new(&cfg, &d);
    let mut seen = 0;
    let tensor = |name: &str| {
        let n = &fx.params[name];
        Tensor::<1>::from_floats(n.data.as_slice(), &d)
    };
    visit_params(&mut model, |name, p| {
        match p {
            ParamMut::Matrix(p) => {
                let shape = &fx.params[name].shape;
                *p = Param::from_tensor(tensor(name).reshape([shape[0], shape[1]]));
            }
            ParamMut::Vector(p) => *p = Param::from_tensor(tensor(name)),
        }
        seen += 1;
    });
    assert_eq!(seen, fx.params.len(), "every fixture tensor is loaded");

    let logits = model.forward(ids(&fx.tokens, &d));
    assert_eq!(logits.dims().to_vec(), fx.logits.shape);
    assert_rel("logits", &values(logits.clone()), &fx.logits.data);
    let loss = model.cross_entropy(logits, ids(&fx.targets, &d));
    let loss_v = values(loss.clone())[0];
    assert!(
        (loss_v - fx.loss).abs() <= REL_TOL * fx.loss.abs(),
        "loss {loss_v} vs {}",
        fx.loss
    );

    let grads = loss.backward();
    let mut checked = 0;
    visit_params(&mut model, |name, p| {
        let ours = match p {
            ParamMut::Matrix(p) => values(p.val().grad(&grads).expect("gradient")),
            ParamMut::Vector(p) => values(p.val().grad(&grads).expect("gradient")),
        };
        assert_rel(&format!("grad {name}"), &ours, &fx.grads[name].data);
        checked += 1;
    });
    assert_eq!(checked, fx.grads.len());
}

#[test]
fn matches_pytorch_silu_gqa() {
    check("ref_silu_gqa");
}

#[test]
fn matches_pytorch_relu2() {
    check("ref_relu2");
}
