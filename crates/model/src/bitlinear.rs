//! `BitLinear`: a bias-free linear layer whose forward pass sees ternary weights and int8 activations
//! (see [`crate::quant`]) while the optimizer updates full-precision latent weights.

use std::sync::Arc;

use burn::module::Param;
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::TensorData;
use tritium_kernels::bitlinear::TernaryMatrix;
use tritium_kernels::dense::Precision;

use crate::config::Quant;
use crate::quant::{quantize_activations, ste, ternarize};

/// `y = q(x) · q(W)ᵀ`. The weight is stored `[d_out, d_in]` (PyTorch's and GGUF's row order), so
/// export writes rows as they are.
#[derive(Module, Debug)]
pub struct BitLinear {
    /// Latent full-precision weight, `[d_out, d_in]`.
    pub weight: Param<Tensor<2>>,
    #[module(skip)]
    pub quant: Quant,
    /// A LoRA adapter beside the layer (fine-tuning); `None` in pretraining and in checkpoints
    /// written before adapters existed.
    pub lora: Option<Lora>,
    /// Run the fused CPU op where the device allows (see [`crate::Transformer::set_fused`]).
    #[module(skip)]
    pub(crate) fused: bool,
    /// The arithmetic of the fused op's backward products (see
    /// [`crate::Transformer::set_precision`]).
    #[module(skip)]
    pub(crate) precision: Precision,
    /// A frozen base layer held as its ternary codes and scale (2 bits a weight) instead of the
    /// latent weight, which is then empty (`[0, d_in]`): LoRA on a packed base ([`Self::pack`]).
    #[module(skip)]
    pub packed: Option<Arc<TernaryMatrix>>,
}

/// LoRA with llama.cpp's runtime semantics: `y = BitLinear(x) + (alpha/r)·B(A·x)`, the branch
/// running in full precision on the layer's input before activation quantization. `A` starts
/// random (Kaiming-uniform, as PEFT), `B` at zero, so a new adapter changes nothing.
#[derive(Module, Debug)]
pub struct Lora {
    /// `[r, d_in]`
    pub a: Param<Tensor<2>>,
    /// `[d_out, r]`
    pub b: Param<Tensor<2>>,
    #[module(skip)]
    pub alpha: f32,
    #[module(skip)]
    pub dropout: f64,
}

impl Lora {
    pub fn new(
        d_in: usize,
        d_out: usize,
        rank: usize,
        alpha: f32,
        dropout: f64,
        device: &Device,
    ) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        Lora {
            a: Initializer::Uniform {
                min: -bound,
                max: bound,
            }
            .init([rank, d_in], device),
            b: Initializer::Zeros.init([d_out, rank], device),
            alpha,
            dropout,
        }
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// The branch on `x`; with the fused ops its two products run as the base layer's backward
    /// does, in `p` (bf16 operands, f32 accumulation, as PyTorch's autocast runs PEFT's LoRA).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_in(x, false, Precision::F32)
    }

    pub(crate) fn forward_in<const D: usize>(
        &self,
        x: Tensor<D>,
        fused: bool,
        p: Precision,
    ) -> Tensor<D> {
        // Dropout only while training (an autodiff device); inference is deterministic.
        let x = if self.dropout > 0.0 && x.device().is_autodiff() {
            let keep = 1.0 - self.dropout;
            let mask = Tensor::<D>::random(
                x.shape(),
                burn::tensor::Distribution::Bernoulli(keep),
                &x.device(),
            );
            x * mask / keep
        } else {
            x
        };
        let scale = self.alpha / self.rank() as f32;
        #[cfg(feature = "flex")]
        if p != Precision::F32 && crate::fused::active(fused, &x.device()) {
            let xa = crate::fused::linear(x, self.a.val(), p);
            return crate::fused::linear(xa, self.b.val(), p) * scale;
        }
        let _ = fused;
        product(product(x, self.a.val(), p), self.b.val(), p) * scale
    }
}

impl BitLinear {
    /// Weights drawn from N(0, 0.02²), GPT-2's initialisation.
    pub fn new(d_in: usize, d_out: usize, quant: Quant, device: &Device) -> Self {
        let weight = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        }
        .init([d_out, d_in], device);
        Self {
            weight,
            quant,
            lora: None,
            fused: true,
            precision: Precision::F32,
            packed: None,
        }
    }

    /// Freezes the layer as the ternary codes and scale its forward pass uses, and drops the
    /// latent weight: the output is the same to the bit, the weight gets no gradient, and it
    /// takes a sixteenth of the memory.
    pub fn pack(&mut self) {
        let w = self.weight.val();
        self.pack_from(w);
    }

    /// The same with the latent weight given (read from a file a layer at a time, say).
    pub fn pack_from(&mut self, w: Tensor<2>) {
        let device = w.device();
        let [n, d_in] = w.dims();
        // The scale through the tensor ops the fused forward runs, in its order (mean of row
        // means), so a weight at exactly g/2 rounds the same way in both.
        let g = crate::quant::weight_scale(&w).into_scalar::<f32>();
        let v = w.into_data().convert::<f32>();
        let v = v.as_slice::<f32>().expect("f32 weights");
        self.packed = Some(Arc::new(TernaryMatrix::quantize_with_scale(v, n, d_in, g)));
        self.weight = Param::from_tensor(Tensor::zeros([0, d_in], &device));
    }

    /// `[d_out, d_in]`, whether the weight is latent or packed.
    pub fn dims(&self) -> [usize; 2] {
        match &self.packed {
            Some(p) => [p.rows, p.cols],
            // Without initialising a lazily built weight (a model about to be loaded).
            None => self.weight.lazy_shape().dims::<2>(),
        }
    }

    /// `x: [.., d_in] → [.., d_out]`. `lambda` blends quantization in (1 = fully ternary).
    pub fn forward<const D: usize>(&self, x: Tensor<D>, lambda: f32) -> Tensor<D> {
        let x_in = x.clone();
        let y = match &self.packed {
            Some(p) => packed_forward(x, p, self.fused, self.precision),
            None => self.latent_forward(x, lambda),
        };
        match &self.lora {
            None => y,
            Some(l) => y + l.forward_in(x_in, self.fused, self.precision),
        }
    }

    fn latent_forward<const D: usize>(&self, x: Tensor<D>, lambda: f32) -> Tensor<D> {
        let w = self.weight.val();
        match self.quant {
            #[cfg(feature = "flex")]
            Quant::Ternary if lambda == 1.0 && crate::fused::active(self.fused, &w.device()) => {
                crate::fused::bitlinear(x, w, self.precision)
            }
            Quant::Ternary => product(
                ste(x.clone(), quantize_activations(x), lambda),
                ste(w.clone(), ternarize(w), lambda),
                self.precision,
            ),
            Quant::None => product(x, w, self.precision),
        }
    }
}

/// A packed layer's product: the fused op, or elsewhere the tensor-op reference on the
/// dequantized codes (a constant, so no gradient but to `x`).
fn packed_forward<const D: usize>(
    x: Tensor<D>,
    w: &Arc<TernaryMatrix>,
    fused: bool,
    p: Precision,
) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if crate::fused::active(fused, &x.device()) {
        return crate::fused::bitlinear_packed(x, w, p);
    }
    let _ = fused;
    let wd = Tensor::<2>::from_data(
        TensorData::new(w.dequantize(), [w.rows, w.cols]),
        &x.device(),
    );
    product(ste(x.clone(), quantize_activations(x), 1.0), wd, p)
}

/// [`matmul_t`] at precision `p`, for the tensor-op model (GPUs, `--unfused`). In bf16 both
/// operands are rounded to bf16 and the product comes back as f32, as PyTorch's bf16 autocast runs
/// a linear layer: the backward products run in bf16 too (autodiff takes the gradient back through
/// each cast), while the parameters, their gradients and the optimizer state stay f32 — the master
/// weights.
pub(crate) fn product<const D: usize>(x: Tensor<D>, w: Tensor<2>, p: Precision) -> Tensor<D> {
    use burn::tensor::FloatDType;
    match p {
        Precision::F32 => matmul_t(x, w),
        // The tensor-op model refuses int8 before any step ([`products`]).
        Precision::Bf16 | Precision::Int8 => {
            matmul_t(x.cast(FloatDType::BF16), w.cast(FloatDType::BF16)).cast(FloatDType::F32)
        }
    }
}

/// The products' precision of a pretraining run whose `[train]` names none: the fastest whose
/// learning this repository has checked on that path. On the fused CPU ops that is int8 input
/// gradients with bf16 for the rest (`scripts/learning-bf16.sh`: tiny, five seeds, step-300 and
/// step-600 validation loss within 0.03 nats of f32's, each mean inside the other's seed spread).
/// The tensor-op model and GPUs keep f32: they cannot run int8, and their bf16 autocast has had no
/// such check.
pub fn pretraining_default(fused: bool, device: &Device) -> Precision {
    if crate::fused::active(fused, device) {
        Precision::Int8
    } else {
        Precision::F32
    }
}

/// What the linear products of a model at precision `p` (with the fused ops if `fused`) run as on
/// `device` (called `name` in errors), in words for reports: the fused CPU kernels' path where
/// they run, else the tensor-op model's [`product`]. Refuses, before any step, what cannot run:
/// bf16 in the tensor-op model needs bf16 arithmetic on the device (CUDA has it; a Vulkan adapter
/// such as lavapipe may store bf16 but not compute in it, and Burn then panics in the first
/// product). The fused CPU kernels fall back to f32 themselves, and the words say so.
pub fn products(
    p: Precision,
    fused: bool,
    device: &Device,
    name: impl std::fmt::Display,
) -> Result<&'static str, crate::Error> {
    if crate::fused::active(fused, device) {
        return Ok(p.describe());
    }
    match p {
        Precision::F32 => Ok("f32 in the backend's tensor ops"),
        Precision::Bf16 if device.supports_dtype(burn::tensor::FloatDType::BF16) => {
            Ok("bf16 operands in the backend's tensor ops (autocast-style), f32 master weights")
        }
        Precision::Bf16 => Err(crate::Error::Config(format!(
            "precision = \"bf16\": device {name} has no bf16 arithmetic (Burn's supports_dtype); \
             use \"f32\" there"
        ))),
        Precision::Int8 => Err(crate::Error::Config(format!(
            "precision = \"int8\": its int8 input gradients are fused CPU kernels, which do not \
             run on device {name} (or with --unfused); use \"bf16\" there"
        ))),
    }
}

/// `x · wᵀ` for `x: [.., k]`, `w: [n, k]`, flattening the leading axes into one matrix product.
pub(crate) fn matmul_t<const D: usize>(x: Tensor<D>, w: Tensor<2>) -> Tensor<D> {
    let dims = x.dims();
    let k = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let [n, _] = w.dims();
    let y = x.reshape([rows, k]).matmul(w.transpose()); // [rows, n]
    let mut out = dims;
    out[D - 1] = n;
    y.reshape(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, dev, t2, values};

    /// A pretraining run without a `precision` takes int8 input gradients where the fused CPU ops
    /// run (the path whose learning was checked against f32), and f32 on the tensor-op model.
    #[test]
    fn pretraining_defaults_to_int8_on_the_fused_ops_only() {
        let d = dev().autodiff();
        assert_eq!(pretraining_default(true, &d), Precision::Int8);
        assert_eq!(pretraining_default(false, &d), Precision::F32);
    }

    /// f32 → bf16 → f32, round to nearest even, by hand (finite inputs).
    fn bf16_round(x: f32) -> f32 {
        let b = x.to_bits();
        f32::from_bits((b + 0x7fff + ((b >> 16) & 1)) & 0xffff_0000)
    }

    /// The tensor-op model's bf16 product: the output and both gradients come back as f32
    /// holding bf16 values (the products ran in bf16), within bf16 rounding of the product of
    /// the bf16-rounded operands computed here in f64, and not equal to the f32 product.
    #[test]
    fn bf16_product_rounds_operands_output_and_gradients_to_bf16() {
        let d = dev().autodiff();
        let (m, k, n) = (5, 48, 7);
        let xs: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 31.0)
            .collect();
        let ws: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 1234.5)
            .collect();
        let x = Tensor::<1>::from_floats(xs.as_slice(), &d)
            .reshape([m, k])
            .require_grad();
        let w = Tensor::<1>::from_floats(ws.as_slice(), &d)
            .reshape([n, k])
            .require_grad();
        let y = product(x.clone(), w.clone(), Precision::Bf16);
        let grads = y.clone().sum().backward();
        let y32 = values(product(
            x.clone().detach(),
            w.clone().detach(),
            Precision::F32,
        ));
        let y = values(y);
        let mut differs = false;
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|c| bf16_round(xs[i * k + c]) as f64 * bf16_round(ws[j * k + c]) as f64)
                    .sum();
                let got = y[i * n + j];
                assert_eq!(got, bf16_round(got), "output {got} is not a bf16 value");
                assert!((got as f64 - want).abs() <= 2f64.powi(-8) * want.abs() + 1e-6);
                differs |= got != y32[i * n + j];
            }
        }
        assert!(differs, "the bf16 product equals the f32 one everywhere");
        // d(Σy)/dx[i][c] = Σ_j w[j][c]; d/dw[j][c] = Σ_i x[i][c], each a bf16 product.
        let (gx, gw) = (x.grad(&grads).unwrap(), w.grad(&grads).unwrap());
        assert_eq!(
            gx.dtype(),
            burn::tensor::DType::F32,
            "master gradients are f32"
        );
        for (g, src, rows) in [(values(gx), &ws, n), (values(gw), &xs, m)] {
            for (e, &got) in g.iter().enumerate() {
                let c = e % k;
                let want: f64 = (0..rows).map(|r| bf16_round(src[r * k + c]) as f64).sum();
                assert_eq!(got, bf16_round(got), "gradient {got} is not a bf16 value");
                assert!(
                    (got as f64 - want).abs() <= 2f64.powi(-7) * want.abs() + 1e-6,
                    "{got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn lora_adds_alpha_over_r_times_b_a_x_on_the_unquantized_input() {
        let d = dev();
        let mut layer = BitLinear::new(2, 2, Quant::Ternary, &d);
        layer.weight = Param::from_tensor(t2(&[[1.0, -1.0], [0.0, 2.0]]));
        let x = t2(&[[0.5, 0.3]]);
        let base = values(layer.forward(x.clone(), 1.0));
        // A new adapter (B = 0) changes nothing.
        layer.lora = Some(Lora::new(2, 2, 1, 4.0, 0.0, &d));
        assert_eq!(values(layer.forward(x.clone(), 1.0)), base);
        // A = [1, 2], B = [3, -1]ᵀ, alpha/r = 4: A·x = 0.5 + 0.6 = 1.1 → B·(A·x)·4 = [13.2, -4.4],
        // on x itself (its int8 rounding would give 1.0984…).
        let l = layer.lora.as_mut().unwrap();
        l.a = Param::from_tensor(t2(&[[1.0, 2.0]]));
        l.b = Param::from_tensor(t2(&[[3.0], [-1.0]]));
        let got = values(layer.forward(x, 1.0));
        assert_close(&got, &[base[0] + 13.2, base[1] - 4.4], 1e-5);
    }

    #[test]
    fn frozen_base_gets_no_gradient_and_the_adapter_does() {
        let d = dev().autodiff();
        let layer = BitLinear::new(4, 3, Quant::Ternary, &d).no_grad();
        let mut layer = layer;
        let mut lora = Lora::new(4, 3, 2, 2.0, 0.0, &d);
        lora.b = Param::from_tensor(Tensor::<2>::ones([3, 2], &d).require_grad());
        layer.lora = Some(lora);
        let x = Tensor::<2>::from_floats([[0.1, -0.2, 0.3, 0.4]], &d);
        let g = layer.forward(x, 1.0).sum().backward();
        assert!(
            layer.weight.val().grad(&g).is_none(),
            "the ternary base stays frozen"
        );
        let l = layer.lora.as_ref().unwrap();
        assert!(l.a.val().grad(&g).is_some() && l.b.val().grad(&g).is_some());
    }
}
