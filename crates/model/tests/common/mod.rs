//! Shared by the integration tests: loading named weights into a model.
// Each test binary includes this module and uses part of it.
#![allow(dead_code)]

use burn::module::Param;
use burn::prelude::*;
use tritium_model::{Backend, Transformer};

pub fn dev() -> Device {
    Backend::Flex.device().expect("flex backend")
}

pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 tensor")
}

/// A parameter of either rank.
pub enum ParamMut<'a> {
    Matrix(&'a mut Param<Tensor<2>>),
    Vector(&'a mut Param<Tensor<1>>),
}

/// Every parameter of the model by its path (`blocks.0.attn.wq.weight`, ...), mutably.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn visit_params(model: &mut Transformer, mut visit: impl FnMut(&str, ParamMut)) {
    use ParamMut::{Matrix as M, Vector as V};
    visit("tok_embd.weight", M(&mut model.tok_embd.weight));
    for (i, b) in model.blocks.iter_mut().enumerate() {
        let p = |n: &str| format!("blocks.{i}.{n}");
        visit(&p("attn_norm.gamma"), V(&mut b.attn_norm.gamma));
        visit(&p("attn.wq.weight"), M(&mut b.attn.wq.weight));
        visit(&p("attn.wk.weight"), M(&mut b.attn.wk.weight));
        visit(&p("attn.wv.weight"), M(&mut b.attn.wv.weight));
        visit(&p("attn.sub_norm.gamma"), V(&mut b.attn.sub_norm.gamma));
        visit(&p("attn.wo.weight"), M(&mut b.attn.wo.weight));
        visit(&p("ffn_norm.gamma"), V(&mut b.ffn_norm.gamma));
        visit(&p("ffn.gate.weight"), M(&mut b.ffn.gate.weight));
        visit(&p("ffn.up.weight"), M(&mut b.ffn.up.weight));
        visit(&p("ffn.sub_norm.gamma"), V(&mut b.ffn.sub_norm.gamma));
        visit(&p("ffn.down.weight"), M(&mut b.ffn.down.weight));
    }
    visit("output_norm.gamma", V(&mut model.output_norm.gamma));
}
