//! [`FusedOps`] on flex, plain and under autodiff. The autodiff versions keep what their backward
//! pass needs in their state (flex tensors are reference-counted, so keeping an input is free)
//! and register one gradient per tracked input.

use std::sync::{Arc, OnceLock};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, AutodiffBackend, DType, Flex, TensorMetadata};
use burn::tensor::TensorData;
use tritium_kernels::Isa;
use tritium_kernels::bitlinear::{QuantizedRows, TernaryMatrix, backward, matmul};
use tritium_kernels::dense::{self, Operand, Precision};
use tritium_kernels::optim::{self, AdamStep};
use tritium_kernels::rows::Gate;
use tritium_kernels::{attention, rows};

use super::{F32Values, FusedOps};

type T = FloatTensor<Flex>;

fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

fn dims2(t: &T) -> [usize; 2] {
    let s = t.shape();
    assert_eq!(s.num_dims(), 2, "fused ops take 2-D tensors");
    [s[0], s[1]]
}

/// A contiguous f32 copy (free when the tensor already is one).
fn contiguous(t: &T) -> T {
    assert_eq!(t.dtype(), DType::F32, "fused ops run in f32");
    t.to_contiguous()
}

/// `t` contiguous and covering its whole buffer, which stays unshared if `t`'s was: its
/// `storage_mut` is then exactly its elements, changed in place.
fn owned(t: T) -> T {
    let c = contiguous(&t);
    drop(t);
    c
}

/// A contiguous flex tensor read as its f32 slice.
struct Contiguous(T);

impl AsRef<[f32]> for Contiguous {
    fn as_ref(&self) -> &[f32] {
        f32s(&self.0)
    }
}

fn f32s(t: &T) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

fn tensor(values: Vec<f32>, shape: &[usize]) -> T {
    T::from_data(TensorData::new(values, shape.to_vec()))
}

/// Target ids as `usize`, whatever integer type flex holds them in.
fn ids(t: &IntTensor<Flex>) -> Vec<usize> {
    let t = t.to_contiguous();
    match t.dtype() {
        DType::I64 => t
            .as_slice::<i64>()
            .unwrap()
            .iter()
            .map(|v| *v as usize)
            .collect(),
        DType::I32 => t
            .as_slice::<i32>()
            .unwrap()
            .iter()
            .map(|v| *v as usize)
            .collect(),
        DType::U32 => t
            .as_slice::<u32>()
            .unwrap()
            .iter()
            .map(|v| *v as usize)
            .collect(),
        other => panic!("cross-entropy targets of type {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// BitLinear

fn bitlinear_forward(x: &T, w: &T) -> (QuantizedRows, TernaryMatrix, T) {
    let ([m, k], [n, k2]) = (dims2(x), dims2(w));
    assert_eq!(
        k, k2,
        "BitLinear: input has {k} features, weight expects {k2}"
    );
    let (x, w) = (contiguous(x), contiguous(w));
    let xq = QuantizedRows::quantize(f32s(&x), m, k);
    // The scale from flex's own mean, the reference's summation order: a weight exactly at g/2
    // then rounds the same way in both (an f64 mean differs in the last bit and can flip it).
    // Per row, then over rows: `quant::weight_scale`'s order.
    let g = Flex::float_mean(Flex::float_mean_dim(Flex::float_abs(w.clone()), 1));
    let wq = TernaryMatrix::quantize_with_scale(f32s(&w), n, k, f32s(&g)[0]);
    let y = matmul(isa(), &xq, &wq);
    (xq, wq, tensor(y, &[m, n]))
}

#[derive(Clone, Debug)]
struct BitLinearSaved {
    x: Arc<QuantizedRows>,
    w: Arc<TernaryMatrix>,
    p: Precision,
}

#[derive(Debug)]
struct BitLinearBackward;

impl Backward<Flex, 2> for BitLinearBackward {
    type State = BitLinearSaved;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let BitLinearSaved { x, w, p } = ops.state;
        let (dx, dw) = backward(
            p,
            isa(),
            f32s(&dy),
            &x,
            &w,
            node_x.is_some(),
            node_w.is_some(),
        );
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, tensor(dx, &[x.rows, x.cols]));
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(node.id, tensor(dw, &[w.rows, w.cols]));
        }
    }
}

/// The frozen form: nothing to keep but the weight (shared) and the input's row count.
fn bitlinear_packed_forward(x: &T, w: &TernaryMatrix) -> T {
    let [m, k] = dims2(x);
    assert_eq!(
        k, w.cols,
        "BitLinear: input has {k} features, weight expects {}",
        w.cols
    );
    let x = contiguous(x);
    let xq = QuantizedRows::quantize(f32s(&x), m, k);
    tensor(matmul(isa(), &xq, w), &[m, w.rows])
}

#[derive(Clone, Debug)]
struct PackedSaved {
    rows: usize,
    w: Arc<TernaryMatrix>,
    p: Precision,
}

#[derive(Debug)]
struct BitLinearPackedBackward;

impl Backward<Flex, 1> for BitLinearPackedBackward {
    type State = PackedSaved;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let PackedSaved { rows, w, p } = ops.state;
        if let Some(node) = node_x {
            // The straight-through dX = dY · (q_w·g).
            let dx = tritium_kernels::bitlinear::backward_dx(p, f32s(&dy), rows, &w);
            grads.register::<Flex>(node.id, tensor(dx, &[rows, w.cols]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Float linear (the tied head)

fn linear_forward(x: &T, w: &T, p: Precision) -> (T, T, T) {
    let ([m, k], [n, k2]) = (dims2(x), dims2(w));
    assert_eq!(k, k2, "linear: input has {k} features, weight expects {k2}");
    let (x, w) = (contiguous(x), contiguous(w));
    let y = dense::matmul(p, m, n, k, Operand::n(f32s(&x)), Operand::t(f32s(&w)));
    (x, w, tensor(y, &[m, n]))
}

#[derive(Clone, Debug)]
struct LinearSaved {
    x: T,
    w: T,
    p: Precision,
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 2> for LinearBackward {
    type State = LinearSaved;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let LinearSaved { x, w, p } = ops.state;
        let ([m, k], [n, _]) = (dims2(&x), dims2(&w));
        // dX needs W and dW needs X.
        let (dx, dw) = dense::linear_backward(
            p,
            f32s(&dy),
            node_w.is_some().then(|| f32s(&x)),
            node_x.is_some().then(|| f32s(&w)),
            m,
            n,
            k,
        );
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, tensor(dx, &[m, k]));
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(node.id, tensor(dw, &[n, k]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

fn rms_norm_forward(x: &T, gamma: &T, eps: f32) -> (T, T, Vec<f32>, T) {
    let [m, d] = dims2(x);
    let (x, gamma) = (contiguous(x), contiguous(gamma));
    assert_eq!(gamma.shape().num_elements(), d, "RMSNorm gain length");
    let (y, r) = rows::rms_norm(f32s(&x), f32s(&gamma), eps);
    let y = tensor(y, &[m, d]);
    (x, gamma, r, y)
}

#[derive(Clone, Debug)]
struct RmsNormSaved {
    x: T,
    gamma: T,
    r: Arc<Vec<f32>>,
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 2> for RmsNormBackward {
    type State = RmsNormSaved;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_g] = ops.parents;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let RmsNormSaved { x, gamma, r } = ops.state;
        let (dx, dg) = rows::rms_norm_backward(f32s(&x), f32s(&gamma), &r, f32s(&dy));
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(dx, &dims2(&x)));
        }
        if let Some(node) = node_g {
            let d = dg.len();
            grads.register::<Flex>(node.id, tensor(dg, &[d]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Attention

fn attention_shape(q: &T, k: &T, v: &T) -> attention::Shape {
    let (qs, ks) = (q.shape(), k.shape());
    assert!(
        qs.num_dims() == 4 && ks.num_dims() == 4,
        "fused attention takes [b, t, heads, hd]"
    );
    assert_eq!(
        ks,
        v.shape(),
        "fused attention: key and value shapes differ"
    );
    assert!(
        qs[0] == ks[0] && qs[1] == ks[1] && qs[3] == ks[3],
        "fused attention: q {qs:?} vs k {ks:?}"
    );
    attention::Shape {
        b: qs[0],
        t: qs[1],
        h: qs[2],
        kv: ks[2],
        hd: qs[3],
    }
}

fn attention_forward(
    q: &T,
    k: &T,
    v: &T,
    theta: f32,
    starts: Option<&[u32]>,
) -> (attention::Saved, T, T) {
    let shape = attention_shape(q, k, v);
    let (q, k, v) = (contiguous(q), contiguous(k), contiguous(v));
    let (o, saved) = attention::forward(shape, f32s(&q), f32s(&k), f32s(&v), theta, starts);
    let o = tensor(o, &[shape.b, shape.t, shape.h, shape.hd]);
    (saved, v, o)
}

#[derive(Clone, Debug)]
struct AttentionSaved {
    saved: Arc<attention::Saved>,
    v: T,
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttentionSaved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let d_o = contiguous(&grads.consume::<Flex>(&ops.node));
        let AttentionSaved { saved, v } = ops.state;
        let (dq, dk, dv) = attention::backward(&saved, f32s(&v), f32s(&d_o));
        let attention::Shape { b, t, h, kv, hd } = saved.shape;
        for (node, g, heads) in [(node_q, dq, h), (node_k, dk, kv), (node_v, dv, kv)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, tensor(g, &[b, t, heads, hd]));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Feed-forward gate

#[derive(Clone, Debug)]
struct GateSaved {
    g: T,
    u: T,
    act: Gate,
}

#[derive(Debug)]
struct GateBackward;

impl Backward<Flex, 2> for GateBackward {
    type State = GateSaved;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_g, node_u] = ops.parents;
        let dh = contiguous(&grads.consume::<Flex>(&ops.node));
        let GateSaved { g, u, act } = ops.state;
        let (dg, du) = rows::gate_backward(act, f32s(&g), f32s(&u), f32s(&dh));
        let shape = g.shape().to_vec();
        if let Some(node) = node_g {
            grads.register::<Flex>(node.id, tensor(dg, &shape));
        }
        if let Some(node) = node_u {
            grads.register::<Flex>(node.id, tensor(du, &shape));
        }
    }
}

fn gate_forward(g: &T, u: &T, act: Gate) -> (T, T, T) {
    assert_eq!(g.shape(), u.shape(), "gate: gate and up shapes differ");
    let (g, u) = (contiguous(g), contiguous(u));
    let h = tensor(rows::gate(act, f32s(&g), f32s(&u)), &g.shape().to_vec());
    (g, u, h)
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

/// The mean cross-entropy, or with `weights` the weighted sum (a masked loss).
#[derive(Clone, Debug)]
struct CrossEntropySaved {
    logits: T,
    targets: Arc<Vec<usize>>,
    weights: Option<Arc<Vec<f32>>>,
    lse: Arc<Vec<f32>>,
}

#[derive(Debug)]
struct CrossEntropyBackward;

impl Backward<Flex, 1> for CrossEntropyBackward {
    type State = CrossEntropySaved;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dl = contiguous(&grads.consume::<Flex>(&ops.node));
        let CrossEntropySaved {
            logits,
            targets,
            weights,
            lse,
        } = ops.state;
        if let Some(node) = node {
            let [_, v] = dims2(&logits);
            let (z, dl) = (f32s(&logits), f32s(&dl)[0]);
            let dz = match &weights {
                None => rows::cross_entropy_backward(z, v, &targets, &lse, dl),
                Some(w) => rows::cross_entropy_weighted_backward(z, v, &targets, w, &lse, dl),
            };
            grads.register::<Flex>(node.id, tensor(dz, &dims2(&logits)));
        }
    }
}

/// The loss `[1]` and what its backward needs.
fn cross_entropy_forward(
    logits: &T,
    targets: &IntTensor<Flex>,
    weights: Option<&T>,
) -> (CrossEntropySaved, T) {
    let [m, v] = dims2(logits);
    let logits = contiguous(logits);
    let targets = ids(targets);
    let weights = weights.map(|w| f32s(&contiguous(w)).to_vec());
    assert!(
        targets.len() == m && weights.as_ref().is_none_or(|w| w.len() == m),
        "cross-entropy: {m} rows of logits, {} targets, {:?} weights",
        targets.len(),
        weights.as_ref().map(Vec::len)
    );
    let (loss, lse) = match &weights {
        None => rows::cross_entropy(f32s(&logits), v, &targets),
        Some(w) => rows::cross_entropy_weighted(f32s(&logits), v, &targets, w),
    };
    let saved = CrossEntropySaved {
        logits,
        targets: Arc::new(targets),
        weights: weights.map(Arc::new),
        lse: Arc::new(lse),
    };
    (saved, tensor(vec![loss], &[1]))
}

/// Either cross-entropy under autodiff: the gradient reaches the logits only.
fn cross_entropy_tracked<C: CheckpointStrategy>(
    logits: FloatTensor<Autodiff<Flex, C>>,
    targets: IntTensor<Flex>,
    weights: Option<&T>,
) -> FloatTensor<Autodiff<Flex, C>> {
    let prep = CrossEntropyBackward
        .prepare::<C>([logits.node()])
        .compute_bound()
        .stateful();
    let (saved, loss) = cross_entropy_forward(logits.primitive(), &targets, weights);
    match prep {
        OpsKind::Tracked(prep) => prep.finish(saved, loss),
        OpsKind::UnTracked(prep) => prep.finish(loss),
    }
}

// ---------------------------------------------------------------------------------------------

impl FusedOps for Flex {
    // Without autodiff nothing is trained: products stay f32, so evaluation and sampling compute
    // exactly the model that export writes.
    fn bitlinear(x: T, w: T, _: Precision) -> T {
        bitlinear_forward(&x, &w).2
    }

    fn bitlinear_packed(x: T, w: Arc<TernaryMatrix>, _: Precision) -> T {
        bitlinear_packed_forward(&x, &w)
    }

    fn linear(x: T, w: T, _: Precision) -> T {
        linear_forward(&x, &w, Precision::F32).2
    }

    fn rms_norm(x: T, gamma: T, eps: f32) -> T {
        rms_norm_forward(&x, &gamma, eps).3
    }

    fn attention(q: T, k: T, v: T, theta: f32, starts: Option<Arc<Vec<u32>>>) -> T {
        attention_forward(&q, &k, &v, theta, starts.as_deref().map(Vec::as_slice)).2
    }

    fn gate(g: T, u: T, act: Gate) -> T {
        gate_forward(&g, &u, act).2
    }

    fn cross_entropy(logits: T, targets: IntTensor<Flex>) -> T {
        cross_entropy_forward(&logits, &targets, None).1
    }

    fn cross_entropy_weighted(logits: T, targets: IntTensor<Flex>, weights: T) -> T {
        cross_entropy_forward(&logits, &targets, Some(&weights)).1
    }

    fn adamw(p: T, g: T, m: T, v: T, step: AdamStep) -> (T, T, T) {
        let (mut p, mut m, mut v) = (owned(p), owned(m), owned(v));
        let g = contiguous(&g);
        optim::adamw(
            p.storage_mut::<f32>(),
            f32s(&g),
            m.storage_mut::<f32>(),
            v.storage_mut::<f32>(),
            step,
        );
        (p, m, v)
    }

    fn sum_squares(x: T) -> T {
        let x = contiguous(&x);
        tensor(vec![optim::sum_squares(f32s(&x)) as f32], &[1])
    }

    fn f32_values(x: T) -> F32Values {
        F32Values::new(Contiguous(contiguous(&x)))
    }
}

impl<C: CheckpointStrategy> FusedOps for Autodiff<Flex, C> {
    fn bitlinear(x: FloatTensor<Self>, w: FloatTensor<Self>, p: Precision) -> FloatTensor<Self> {
        let prep = BitLinearBackward
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful();
        match prep {
            OpsKind::Tracked(prep) => {
                let (xq, wq, y) = bitlinear_forward(x.primitive(), w.primitive());
                prep.finish(
                    BitLinearSaved {
                        x: Arc::new(xq),
                        w: Arc::new(wq),
                        p,
                    },
                    y,
                )
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(bitlinear_forward(x.primitive(), w.primitive()).2)
            }
        }
    }

    fn bitlinear_packed(
        x: FloatTensor<Self>,
        w: Arc<TernaryMatrix>,
        p: Precision,
    ) -> FloatTensor<Self> {
        let prep = BitLinearPackedBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let y = bitlinear_packed_forward(x.primitive(), &w);
        match prep {
            OpsKind::Tracked(prep) => {
                let rows = dims2(x.primitive())[0];
                prep.finish(PackedSaved { rows, w, p }, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn linear(x: FloatTensor<Self>, w: FloatTensor<Self>, p: Precision) -> FloatTensor<Self> {
        let prep = LinearBackward
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful();
        let (x, w, y) = linear_forward(x.primitive(), w.primitive(), p);
        match prep {
            OpsKind::Tracked(prep) => prep.finish(LinearSaved { x, w, p }, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        let prep = RmsNormBackward
            .prepare::<C>([x.node(), gamma.node()])
            .compute_bound()
            .stateful();
        let (x, gamma, r, y) = rms_norm_forward(x.primitive(), gamma.primitive(), eps);
        match prep {
            OpsKind::Tracked(prep) => prep.finish(
                RmsNormSaved {
                    x,
                    gamma,
                    r: Arc::new(r),
                },
                y,
            ),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        theta: f32,
        starts: Option<Arc<Vec<u32>>>,
    ) -> FloatTensor<Self> {
        let prep = AttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful();
        let (saved, v, o) = attention_forward(
            q.primitive(),
            k.primitive(),
            v.primitive(),
            theta,
            starts.as_deref().map(Vec::as_slice),
        );
        match prep {
            OpsKind::Tracked(prep) => prep.finish(
                AttentionSaved {
                    saved: Arc::new(saved),
                    v,
                },
                o,
            ),
            OpsKind::UnTracked(prep) => prep.finish(o),
        }
    }

    fn gate(g: FloatTensor<Self>, u: FloatTensor<Self>, act: Gate) -> FloatTensor<Self> {
        let prep = GateBackward
            .prepare::<C>([g.node(), u.node()])
            .compute_bound()
            .stateful();
        let (g, u, h) = gate_forward(g.primitive(), u.primitive(), act);
        match prep {
            OpsKind::Tracked(prep) => prep.finish(GateSaved { g, u, act }, h),
            OpsKind::UnTracked(prep) => prep.finish(h),
        }
    }

    fn cross_entropy(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        cross_entropy_tracked::<C>(logits, targets, None)
    }

    fn cross_entropy_weighted(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        cross_entropy_tracked::<C>(logits, targets, Some(weights.primitive()))
    }

    // The optimizer works on parameter values outside the graph: these track nothing.
    fn adamw(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        step: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (p, m, v) = Flex::adamw(
            Self::inner(p),
            Self::inner(g),
            Self::inner(m),
            Self::inner(v),
            step,
        );
        (
            Self::from_inner(p),
            Self::from_inner(m),
            Self::from_inner(v),
        )
    }

    fn sum_squares(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(Flex::sum_squares(Self::inner(x)))
    }

    fn f32_values(x: FloatTensor<Self>) -> F32Values {
        Flex::f32_values(Self::inner(x))
    }
}
