//! Every fused op against the unfused tensor-op reference it replaces: outputs within 1e-5 and
//! gradients within 1e-4 (relative, as ‖a − b‖ / ‖b‖ over the tensor), on odd shapes.

use burn::nn::RmsNormConfig;
use burn::tensor::Distribution;
use burn::tensor::activation::{log_softmax, silu};

use super::*;
use crate::quant::{quantize_activations, ste, ternarize};
use crate::testing::values as vals;

/// ‖a − b‖ / ‖b‖: one figure per tensor, immune to single elements near zero.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn normal<const D: usize>(shape: [usize; D], std: f64, dev: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, std), dev)
}

/// Runs `f` on fresh leaves made from `inputs`, backpropagates `Σ y ⊙ probe`, and returns the
/// output and each input's gradient.
fn run<const D: usize, const O: usize>(
    inputs: &[Tensor<D>],
    probe: &Tensor<O>,
    f: impl Fn(&[Tensor<D>]) -> Tensor<O>,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let leaves: Vec<Tensor<D>> = inputs
        .iter()
        .map(|t| t.clone().detach().require_grad())
        .collect();
    let y = f(&leaves);
    let grads = (y.clone() * probe.clone()).sum().backward();
    let dl = leaves
        .iter()
        .map(|l| vals(l.grad(&grads).expect("a gradient")))
        .collect();
    (vals(y), dl)
}

fn assert_matches(
    what: &str,
    fused: (Vec<f32>, Vec<Vec<f32>>),
    reference: (Vec<f32>, Vec<Vec<f32>>),
) {
    let e = rel(&fused.0, &reference.0);
    assert!(e < 1e-5, "{what}: forward differs by {e:e}");
    for (i, (a, b)) in fused.1.iter().zip(&reference.1).enumerate() {
        let e = rel(a, b);
        assert!(e < 1e-4, "{what}: gradient of input {i} differs by {e:e}");
    }
}

#[test]
fn bitlinear_equals_the_unfused_reference() {
    let dev = Device::flex().autodiff();
    assert!(supported(&dev));
    let reference = |x: Tensor<3>, w: Tensor<2>| {
        let xq = ste(x.clone(), quantize_activations(x), 1.0);
        let wq = ste(w.clone(), ternarize(w), 1.0);
        crate::bitlinear::matmul_t(xq, wq)
    };
    // Inner sizes off the 256 block, a single token, more tokens than one parallel task.
    for (i, (b, t, k, n)) in [
        (1, 1, 7, 3),
        (2, 5, 300, 17),
        (3, 70, 768, 33),
        (1, 130, 1000, 64),
    ]
    .into_iter()
    .enumerate()
    {
        dev.seed(100 + i as u64);
        let x = normal([b, t, k], 1.0, &dev);
        let w = normal([n, k], 0.02, &dev);
        let probe = normal([b, t, n], 1.0, &dev);
        // The two inputs have different ranks, so pass the weight through the closure.
        let go = |fused: bool| {
            let (wl, xl) = (
                w.clone().detach().require_grad(),
                x.clone().detach().require_grad(),
            );
            let y = if fused {
                bitlinear(xl.clone(), wl.clone(), Precision::F32)
            } else {
                reference(xl.clone(), wl.clone())
            };
            let g = (y.clone() * probe.clone()).sum().backward();
            (
                vals(y),
                vec![vals(xl.grad(&g).unwrap()), vals(wl.grad(&g).unwrap())],
            )
        };
        assert_matches(
            &format!("BitLinear {b}×{t}×{k} · {n}×{k}"),
            go(true),
            go(false),
        );
    }
}

#[test]
fn linear_equals_matmul_of_the_transpose() {
    let dev = Device::flex().autodiff();
    dev.seed(900);
    let x = normal([2, 9, 40], 1.0, &dev);
    let w = normal([33, 40], 0.5, &dev);
    let probe = normal([2, 9, 33], 1.0, &dev);
    let go = |fused: bool| {
        let (wl, xl) = (
            w.clone().detach().require_grad(),
            x.clone().detach().require_grad(),
        );
        let y = if fused {
            linear(xl.clone(), wl.clone(), Precision::F32)
        } else {
            crate::bitlinear::matmul_t(xl.clone(), wl.clone())
        };
        let g = (y.clone() * probe.clone()).sum().backward();
        (
            vals(y),
            vec![vals(xl.grad(&g).unwrap()), vals(wl.grad(&g).unwrap())],
        )
    };
    assert_matches("linear", go(true), go(false));
}

#[test]
fn bitlinear_without_autodiff_matches_too() {
    let dev = Device::flex();
    dev.seed(7);
    let x = normal([9, 260], 1.0, &dev);
    let w = normal([5, 260], 0.02, &dev);
    let want = vals(crate::bitlinear::matmul_t(
        quantize_activations(x.clone()),
        ternarize(w.clone()),
    ));
    let e = rel(&vals(bitlinear(x, w, Precision::F32)), &want);
    assert!(e < 1e-5, "{e:e}");
}

#[test]
fn rms_norm_equals_burns() {
    let dev = Device::flex().autodiff();
    for (i, (rows, d)) in [(1, 3), (37, 256), (5, 1000)].into_iter().enumerate() {
        dev.seed(200 + i as u64);
        let norm = RmsNormConfig::new(d).with_epsilon(1e-5).init(&dev);
        // A gain away from 1 so its gradient and its use in dx are both exercised.
        let gamma = normal([d], 0.5, &dev) + 1.0;
        let x = normal([2, rows, d], 3.0, &dev);
        let probe = normal([2, rows, d], 1.0, &dev);
        let fused = {
            let (xl, gl) = (
                x.clone().detach().require_grad(),
                gamma.clone().detach().require_grad(),
            );
            let y = rms_norm(xl.clone(), gl.clone(), 1e-5);
            let g = (y.clone() * probe.clone()).sum().backward();
            (
                vals(y),
                vec![vals(xl.grad(&g).unwrap()), vals(gl.grad(&g).unwrap())],
            )
        };
        let reference = {
            let xl = x.clone().detach().require_grad();
            let mut n = norm.clone();
            n.gamma = burn::module::Param::from_tensor(gamma.clone().detach());
            let y = n.forward(xl.clone());
            let g = (y.clone() * probe.clone()).sum().backward();
            (
                vals(y),
                vec![
                    vals(xl.grad(&g).unwrap()),
                    vals(n.gamma.val().grad(&g).unwrap()),
                ],
            )
        };
        assert_matches(&format!("RMSNorm {rows}×{d}"), fused, reference);
    }
}

#[test]
fn gates_equal_the_activation_times_up() {
    let dev = Device::flex().autodiff();
    dev.seed(300);
    let g = normal([3, 11, 70], 3.0, &dev);
    let u = normal([3, 11, 70], 1.0, &dev);
    let probe = normal([3, 11, 70], 1.0, &dev);
    let fused = |act| {
        run(&[g.clone(), u.clone()], &probe, |t| {
            gate(t[0].clone(), t[1].clone(), act)
        })
    };
    let silu_ref = run(&[g.clone(), u.clone()], &probe, |t| {
        silu(t[0].clone()) * t[1].clone()
    });
    assert_matches("SiLU gate", fused(Gate::Silu), silu_ref);
    let relu2_ref = run(&[g.clone(), u.clone()], &probe, |t| {
        burn::tensor::activation::relu(t[0].clone()).square() * t[1].clone()
    });
    assert_matches("relu² gate", fused(Gate::Relu2), relu2_ref);
}

#[test]
fn cross_entropy_equals_log_softmax_and_gather() {
    let dev = Device::flex().autodiff();
    for (i, (m, v)) in [(1, 2), (33, 100), (64, 4096)].into_iter().enumerate() {
        dev.seed(400 + i as u64);
        let z = normal([m, v], 4.0, &dev);
        let t = Tensor::<1, Int>::random([m], Distribution::Uniform(0.0, v as f64), &dev);
        // A probe that is not 1 checks the incoming gradient is applied.
        let probe = Tensor::<1>::from_floats([0.7], &dev);
        let fused = run(std::slice::from_ref(&z), &probe, |l| {
            cross_entropy(l[0].clone(), t.clone())
        });
        let reference = run(&[z], &probe, |l| {
            let logp = log_softmax(l[0].clone(), 1);
            logp.gather(1, t.clone().reshape([m, 1])).mean().neg()
        });
        assert_matches(&format!("cross-entropy {m}×{v}"), fused, reference);
    }
}

#[test]
fn weighted_cross_entropy_equals_the_masked_log_softmax() {
    let dev = Device::flex().autodiff();
    for (i, (m, v)) in [(1, 2), (33, 100), (64, 4096)].into_iter().enumerate() {
        dev.seed(420 + i as u64);
        let z = normal([m, v], 4.0, &dev);
        let t = Tensor::<1, Int>::random([m], Distribution::Uniform(0.0, v as f64), &dev);
        // Zeros (masked rows), ones and other weights.
        let w = Tensor::<1>::random([m], Distribution::Uniform(0.0, 3.0), &dev).floor() * 0.5;
        let probe = Tensor::<1>::from_floats([0.7], &dev);
        let fused = run(std::slice::from_ref(&z), &probe, |l| {
            cross_entropy_weighted(l[0].clone(), t.clone(), w.clone())
        });
        let reference = run(&[z], &probe, |l| {
            let logp = log_softmax(l[0].clone(), 1);
            let picked = logp.gather(1, t.clone().reshape([m, 1])).reshape([m]);
            (picked * w.clone()).sum().neg()
        });
        assert_matches(&format!("weighted cross-entropy {m}×{v}"), fused, reference);
    }
}

#[test]
fn untracked_inputs_get_no_gradient_and_run_the_same_forward() {
    // A frozen weight (LoRA's base) is an untracked parent: only the input gets a gradient.
    let dev = Device::flex().autodiff();
    dev.seed(500);
    let x = normal([4, 64], 1.0, &dev).require_grad();
    let w = normal([8, 64], 0.02, &dev);
    let y = bitlinear(x.clone(), w.clone(), Precision::F32);
    let g = y.clone().sum().backward();
    assert!(x.grad(&g).is_some());
    assert!(w.grad(&g).is_none());
    let cpu = Device::flex();
    let plain = bitlinear(
        Tensor::<2>::from_data(x.to_data(), &cpu),
        Tensor::<2>::from_data(w.to_data(), &cpu),
        Precision::F32,
    );
    assert_eq!(vals(y), vals(plain));
}

/// A 2-layer model with grouped-query heads, fused and unfused on the same weights and tokens:
/// the relative error of the loss and of every parameter's gradient.
fn whole_model_errors(quant: &str) -> (f64, Vec<f64>) {
    use burn::module::{ModuleVisitor, Param};

    /// Every float parameter's gradient, in visiting order.
    struct Grads<'a>(&'a burn::tensor::Gradients, Vec<Vec<f32>>);
    impl ModuleVisitor for Grads<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.1
                .push(param.val().grad(self.0).map(vals).unwrap_or_default());
        }
    }

    let cfg = crate::ModelConfig::from_toml_str(&format!(
        "[model]\nvocab_size = 61\nd_model = 64\nn_layers = 2\nn_heads = 4\nn_kv_heads = 2\nd_ff = 96\nmax_seq_len = 32\nquant = \"{quant}\"\n"
    ))
    .unwrap();
    let dev = Device::flex().autodiff();
    dev.seed(600);
    let model = crate::Transformer::new(&cfg, &dev);
    let tokens = Tensor::<2, Int>::random([3, 17], Distribution::Uniform(0.0, 61.0), &dev);
    let targets = Tensor::<2, Int>::random([3, 17], Distribution::Uniform(0.0, 61.0), &dev);
    let go = |fused: bool| {
        let m = model.clone().with_fused(fused);
        let loss = m.cross_entropy(m.forward(tokens.clone()), targets.clone());
        let grads = loss.backward();
        let mut v = Grads(&grads, Vec::new());
        model.visit(&mut v);
        (vals(loss)[0], v.1)
    };
    let (l1, g1) = go(true);
    let (l0, g0) = go(false);
    assert_eq!(g1.len(), g0.len());
    let errors = g1
        .iter()
        .zip(&g0)
        .map(|(a, b)| {
            assert!(
                !a.is_empty() && !b.is_empty(),
                "a parameter got no gradient"
            );
            rel(a, b)
        })
        .collect();
    (((l1 - l0) / l0).abs() as f64, errors)
}

#[test]
fn whole_float_model_loss_and_every_gradient_match_unfused() {
    // Without quantization nothing is discontinuous: every op must agree tightly.
    let (loss, grads) = whole_model_errors("none");
    assert!(loss < 1e-5, "loss differs by {loss:e}");
    for (i, e) in grads.iter().enumerate() {
        assert!(*e < 1e-4, "parameter {i}: gradient differs by {e:e}");
    }
}

#[test]
fn whole_ternary_model_loss_and_gradients_match_unfused() {
    // With int8 activations, a value that lands within an ulp of a rounding boundary can round
    // the other way in one path (the fused product is exact, the reference's is f32), and that
    // moves everything downstream of it a little. The weights here come from Burn's shared
    // random generator, which other tests draw from in parallel, so such a flip happens in some
    // runs: most gradients must still match to 1e-4 and none may be far off.
    let (loss, grads) = whole_model_errors("ternary");
    assert!(loss < 1e-4, "loss differs by {loss:e}");
    let tight = grads.iter().filter(|e| **e < 1e-4).count();
    assert!(
        tight * 10 >= grads.len() * 8,
        "only {tight} of {} gradients within 1e-4: {grads:?}",
        grads.len()
    );
    assert!(grads.iter().all(|e| *e < 1e-2), "{grads:?}");
}

#[test]
fn attention_equals_the_unfused_block() {
    // Through the module, so the reference is exactly the model's unfused path (RoPE by slices,
    // repeated key/value heads, Burn's causal attention). Grouped-query heads and an odd length.
    let cfg = crate::ModelConfig::from_toml_str(
        "[model]\nvocab_size = 8\nd_model = 48\nn_layers = 1\nn_heads = 4\nn_kv_heads = 2\nd_ff = 64\nmax_seq_len = 32\nquant = \"none\"\n",
    )
    .unwrap();
    let dev = Device::flex().autodiff();
    dev.seed(700);
    let attn = crate::attention::Attention::new(&cfg, &dev);
    let x = normal([2, 13, 48], 1.0, &dev);
    let probe = normal([2, 13, 48], 1.0, &dev);
    let go = |fused: bool| {
        let mut a = attn.clone();
        a.fused = fused;
        for l in [&mut a.wq, &mut a.wk, &mut a.wv, &mut a.wo] {
            l.fused = fused;
        }
        run(std::slice::from_ref(&x), &probe, |t| {
            a.forward(t[0].clone(), 1.0, None)
        })
    };
    assert_matches("attention", go(true), go(false));
}

#[test]
fn fused_steps_are_bit_reproducible() {
    // Resumed runs must equal straight ones, so no fused op may let rayon's scheduling decide a
    // summation order. Enough rows that every op splits its work across threads.
    let cfg = crate::ModelConfig::from_toml_str(
        "[model]\nvocab_size = 300\nd_model = 64\nn_layers = 1\nn_heads = 4\nd_ff = 128\nmax_seq_len = 64\nquant = \"ternary\"\n",
    )
    .unwrap();
    let dev = Device::flex().autodiff();
    dev.seed(800);
    let model = crate::Transformer::new(&cfg, &dev);
    let tokens = Tensor::<2, Int>::random([8, 64], Distribution::Uniform(0.0, 300.0), &dev);
    let step = || {
        let loss = model.cross_entropy(model.forward(tokens.clone()), tokens.clone());
        let grads = loss.backward();
        let g = model.blocks[0].ffn_norm.gamma.val().grad(&grads).unwrap();
        (vals(loss), vals(g))
    };
    let first = step();
    for _ in 0..5 {
        assert_eq!(step(), first);
    }
}

#[test]
fn a_packed_layer_computes_the_fused_bitlinear_to_the_bit_and_passes_the_same_input_gradient() {
    let dev = Device::flex().autodiff();
    for (i, (t, k, n)) in [(1, 7, 3), (5, 300, 17), (70, 768, 33)]
        .into_iter()
        .enumerate()
    {
        dev.seed(300 + i as u64);
        let x = normal([2, t, k], 1.0, &dev);
        let w = normal([n, k], 0.02, &dev);
        let probe = normal([2, t, n], 1.0, &dev);
        let xl = x.clone().detach().require_grad();
        let y = bitlinear(xl.clone(), w.clone(), Precision::F32);
        let dx = vals(
            xl.grad(&(y.clone() * probe.clone()).sum().backward())
                .unwrap(),
        );

        let mut layer = crate::BitLinear::new(k, n, crate::config::Quant::Ternary, &dev);
        layer.pack_from(w.clone());
        assert_eq!(layer.dims(), [n, k]);
        assert_eq!(layer.weight.dims(), [0, k], "the latent weight is dropped");
        let xl = x.clone().detach().require_grad();
        let yp = layer.forward(xl.clone(), 1.0);
        let dxp = vals(
            xl.grad(&(yp.clone() * probe.clone()).sum().backward())
                .unwrap(),
        );
        assert_eq!(vals(yp), vals(y), "{t}×{k}·{n}: forward");
        assert_eq!(dxp, dx, "{t}×{k}·{n}: input gradient");

        // Off the fused path (unfused or another backend) the same layer gives the reference.
        layer.fused = false;
        let reference = crate::bitlinear::matmul_t(
            ste(x.clone(), quantize_activations(x.clone()), 1.0),
            ternarize(w.clone()),
        );
        let e = rel(&vals(layer.forward(x.clone(), 1.0)), &vals(reference));
        assert!(
            e < 1e-5,
            "{t}×{k}·{n}: unfused packed layer differs by {e:e}"
        );
    }
}

#[test]
fn f32_values_are_in_row_major_order_even_for_a_view() {
    let dev = Device::flex().autodiff();
    dev.seed(11);
    let t = normal([5, 7], 1.0, &dev);
    for x in [t.clone(), t.transpose()] {
        let v = f32_values(x.clone());
        assert_eq!(AsRef::<[f32]>::as_ref(&v), vals(x));
    }
}

/// The tied head (`head`) or a BitLinear at precision `p` on fresh leaves: its output and the
/// gradients of x and w from `Σ y ⊙ probe`.
fn products_and_gradients(
    x: &Tensor<3>,
    w: &Tensor<2>,
    probe: &Tensor<3>,
    head: bool,
    p: Precision,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (wl, xl) = (
        w.clone().detach().require_grad(),
        x.clone().detach().require_grad(),
    );
    let y = if head {
        linear(xl.clone(), wl.clone(), p)
    } else {
        bitlinear(xl.clone(), wl.clone(), p)
    };
    let g = (y.clone() * probe.clone()).sum().backward();
    (
        vals(y),
        vals(xl.grad(&g).unwrap()),
        vals(wl.grad(&g).unwrap()),
    )
}

/// The bf16 training path (AMX or AVX512-BF16) against the f32 one on the same BitLinear and head: the forward
/// of BitLinear is the same int8 product (equal), the head's forward and every gradient differ by
/// bf16 operand rounding only: a relative error near 2⁻⁹ (the unit roundoff of bf16), not more,
/// and not zero (zero would mean the bf16 path did not run). Skipped on a CPU with neither.
#[test]
fn bf16_products_stay_within_bf16_rounding_of_f32() {
    if Precision::Bf16.effective() != Precision::Bf16 {
        eprintln!("skipped: {}", Precision::Bf16.describe());
        return;
    }
    let dev = Device::flex().autodiff();
    dev.seed(77);
    let (t, k, n) = (70, 300, 40);
    let x = normal([2, t, k], 1.0, &dev);
    let w = normal([n, k], 0.02, &dev);
    let probe = normal([2, t, n], 1.0, &dev);
    for head in [false, true] {
        let go = |p: Precision| products_and_gradients(&x, &w, &probe, head, p);
        let (y32, dx32, dw32) = go(Precision::F32);
        let (y16, dx16, dw16) = go(Precision::Bf16);
        if head {
            let e = rel(&y16, &y32);
            assert!(e > 0.0 && e < 4e-3, "head forward: relative error {e}");
        } else {
            assert_eq!(
                y16, y32,
                "BitLinear's forward is the int8 product either way"
            );
        }
        for (what, a, b) in [("dX", &dx16, &dx32), ("dW", &dw16, &dw32)] {
            let e = rel(a, b);
            assert!(
                e > 0.0 && e < 4e-3,
                "{} {what}: relative error {e}",
                if head { "head" } else { "BitLinear" }
            );
        }
    }
}

/// `Int8` against the float paths on one BitLinear and the head: BitLinear's forward is the
/// same int8 product, its dW the float path's to the bit (bf16 where the CPU has it), and its dX
/// within the per-token int8 rounding of dY (each element off by at most 1/254 of its token's
/// largest: about 0.5% relative on normal gradients), not equal to f32's. The head has no int8
/// form: it runs exactly as the float path.
#[test]
fn int8_input_gradients_stay_within_int8_rounding_of_dy() {
    let dev = Device::flex().autodiff();
    dev.seed(78);
    let (t, k, n) = (70, 300, 40);
    let x = normal([2, t, k], 1.0, &dev);
    let w = normal([n, k], 0.02, &dev);
    let probe = normal([2, t, n], 1.0, &dev);
    let float = Precision::Int8.effective();
    for head in [false, true] {
        let go = |p: Precision| products_and_gradients(&x, &w, &probe, head, p);
        let (y8, dx8, dw8) = go(Precision::Int8);
        let (yf, dxf, dwf) = go(float);
        assert_eq!(y8, yf, "forward (head: {head})");
        assert_eq!(dw8, dwf, "dW (head: {head})");
        if head {
            assert_eq!(dx8, dxf, "the head's dX");
        } else {
            let (_, dx32, _) = go(Precision::F32);
            let e = rel(&dx8, &dx32);
            assert!(e > 1e-3 && e < 1.5e-2, "BitLinear dX: relative error {e}");
        }
    }
}

/// The LoRA branch takes the layer's precision: in bf16 its output and its gradients (x, A, B)
/// stay within bf16 rounding of f32, and differ from it (the bf16 products ran).
#[test]
fn lora_in_bf16_stays_within_bf16_rounding_of_f32() {
    if Precision::Bf16.effective() != Precision::Bf16 {
        eprintln!("skipped: {}", Precision::Bf16.describe());
        return;
    }
    let dev = Device::flex().autodiff();
    dev.seed(78);
    let (t, k, n, r) = (70, 300, 40, 8);
    let x = normal([2, t, k], 1.0, &dev);
    let a = normal([r, k], 0.05, &dev);
    let b = normal([n, r], 0.05, &dev);
    let probe = normal([2, t, n], 1.0, &dev);
    let mut base = crate::BitLinear::new(k, n, crate::Quant::Ternary, &dev);
    base.pack();
    let go = |p: Precision| {
        let mut layer = base.clone();
        layer.precision = p;
        let mut lora = crate::bitlinear::Lora::new(k, n, r, 16.0, 0.0, &dev);
        lora.a = burn::module::Param::from_tensor(a.clone().detach().require_grad());
        lora.b = burn::module::Param::from_tensor(b.clone().detach().require_grad());
        layer.lora = Some(lora);
        let xl = x.clone().detach().require_grad();
        let y = layer.forward(xl.clone(), 1.0);
        let g = (y.clone() * probe.clone()).sum().backward();
        let l = layer.lora.as_ref().unwrap();
        [
            vals(y),
            vals(xl.grad(&g).unwrap()),
            vals(l.a.val().grad(&g).unwrap()),
            vals(l.b.val().grad(&g).unwrap()),
        ]
    };
    let (f32s, bf16s) = (go(Precision::F32), go(Precision::Bf16));
    for (what, lo, hi) in ["y", "dX", "dA", "dB"]
        .iter()
        .zip(&bf16s)
        .zip(&f32s)
        .map(|((w, a), b)| (w, a, b))
    {
        let e = rel(lo, hi);
        assert!(e > 0.0 && e < 4e-3, "LoRA {what}: relative error {e}");
    }
}
