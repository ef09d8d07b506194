//! BitNet b1.58 language models as Burn modules.
//!
//! [`ModelConfig`] (the `[model]` table of a run config) builds a [`Transformer`]: a LLaMA-style
//! decoder whose linear layers are [`BitLinear`]s, laid out exactly as llama.cpp's `bitnet`
//! architecture so exported weights run there unchanged. In the forward pass each `BitLinear` sees
//! absmean-ternary weights and per-token absmax int8 activations ([`quant`]); gradients flow
//! straight through to the full-precision latent weights.
//!
//! ```no_run
//! use tritium_model::{Backend, ModelConfig, Transformer};
//! use burn::prelude::*;
//! let cfg = ModelConfig::from_toml_file("configs/tiny.toml".as_ref()).unwrap();
//! let dev = Backend::Flex.device().unwrap().autodiff();
//! let model = Transformer::new(&cfg, &dev);
//! let ids = Tensor::<2, Int>::zeros([1, 8], &dev);
//! let loss = model.cross_entropy(model.forward(ids.clone()), ids);
//! let grads = loss.backward();
//! ```

pub mod attention;
pub mod bitlinear;
pub mod config;
pub mod device;
pub mod ffn;
#[cfg(feature = "flex")]
pub mod fused;
/// Without the CPU backend there is nothing to fuse; the switch stays so callers need no cfg.
#[cfg(not(feature = "flex"))]
pub mod fused {
    use burn::prelude::*;
    pub fn active(_: bool, _: &Device) -> bool {
        false
    }
    pub fn supported(_: &Device) -> bool {
        false
    }
    pub fn norm<const D: usize>(norm: &burn::nn::RmsNorm, x: Tensor<D>, _: bool) -> Tensor<D> {
        norm.forward(x)
    }
    pub fn cross_entropy_weighted(_: Tensor<2>, _: Tensor<1, Int>, _: Tensor<1>) -> Tensor<1> {
        unreachable!("nothing is fused without the flex backend")
    }
    pub fn cross_entropy(_: Tensor<2>, _: Tensor<1, Int>) -> Tensor<1> {
        unreachable!("nothing is fused without the flex backend")
    }
    pub fn attention(
        _: Tensor<4>,
        _: Tensor<4>,
        _: Tensor<4>,
        _: f32,
        _: Option<std::sync::Arc<Vec<u32>>>,
    ) -> Tensor<4> {
        unreachable!("nothing is fused without the flex backend")
    }
    pub use tritium_kernels::dense::Precision;
    pub fn linear<const D: usize>(_: Tensor<D>, _: Tensor<2>, _: Precision) -> Tensor<D> {
        unreachable!("nothing is fused without the flex backend")
    }
    pub use tritium_kernels::rows::Gate;
    pub fn gate<const D: usize>(_: Tensor<D>, _: Tensor<D>, _: Gate) -> Tensor<D> {
        unreachable!("nothing is fused without the flex backend")
    }
    pub use crate::values::F32Values;
    pub fn f32_values<const D: usize>(x: Tensor<D>) -> F32Values {
        F32Values::new(
            x.into_data()
                .convert::<f32>()
                .iter::<f32>()
                .collect::<Vec<_>>(),
        )
    }
    pub use tritium_kernels::optim::AdamStep;
    pub fn adamw(
        _: Tensor<1>,
        _: Tensor<1>,
        _: Tensor<1>,
        _: Tensor<1>,
        _: AdamStep,
    ) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
        unreachable!("nothing is fused without the flex backend")
    }
    pub fn sum_squares<const D: usize>(_: Tensor<D>) -> f32 {
        unreachable!("nothing is fused without the flex backend")
    }
}
pub mod memory;
/// The training products' arithmetic (defined beside the kernels that run it).
pub use tritium_kernels::dense::Precision;
pub mod quant;
mod recompute;
pub mod rope;
pub mod transformer;
pub mod values;

#[cfg(test)]
mod testing;

pub use bitlinear::BitLinear;
pub use config::{FfnAct, ModelConfig, ParamCount, Quant, TrainMemory};
pub use device::Backend;
pub use transformer::{Block, Segments, Transformer, cross_entropy};
pub use tritium_gguf::names::Projection;

/// Re-exported so dependants use the exact Burn this crate was built with.
pub use burn;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("{path}: {msg}")]
    InFile { path: PathBuf, msg: String },
}

impl Error {
    /// Prefixes a message with the file it came from.
    pub(crate) fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            Error::Config(msg) => Error::InFile {
                path: path.to_path_buf(),
                msg,
            },
            other => other,
        }
    }
}
