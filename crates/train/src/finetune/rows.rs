//! Training rows from instruction examples: render and tokenize with a loss mask, optionally
//! pack several examples to a row, batch with padding, and the masked response loss.

use tritium_model::Transformer;
use tritium_model::burn::optim::GradientsParams;
use tritium_model::burn::prelude::*;

use crate::chat::{self, Template};
use crate::data::splitmix64;
use crate::error::TrainError;
use crate::instruct;
use crate::tokenizer::Tokenizer;

/// A tokenized training row: ids; per input position whether its next token is trained on, and
/// which example it belongs to (several when packed).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Sample {
    pub(super) ids: Vec<u32>,
    pub(super) mask: Vec<bool>,
    pub(super) seg: Vec<u32>,
}

pub(super) fn samples(
    tok: &Tokenizer,
    tpl: &Template,
    examples: &[instruct::Example],
    seq: usize,
    truncated: &mut usize,
    dropped: &mut usize,
) -> Result<Vec<Sample>, TrainError> {
    let mut out = Vec::new();
    for ex in examples {
        let (mut ids, mut mask) = chat::tokenize(tok, tpl, ex).map_err(TrainError::Examples)?;
        // A document start, as in pretraining, unless the template wrote it.
        if ids.first() != Some(&tok.doc_start()) {
            ids.insert(0, tok.doc_start());
            mask.insert(0, false);
        }
        if ids.len() > seq + 1 {
            ids.truncate(seq + 1);
            mask.truncate(seq + 1);
            *truncated += 1;
        }
        // Position i predicts token i + 1: train where the target is an assistant token.
        let target_mask: Vec<bool> = mask[1..].to_vec();
        if !target_mask.iter().any(|&m| m) {
            *dropped += 1;
            continue;
        }
        out.push(Sample {
            seg: vec![0; ids.len() - 1],
            ids,
            mask: target_mask,
        });
    }
    Ok(out)
}

/// Greedy packing in data order: each example joins the current row while the row stays within
/// `seq + 1` tokens. The position holding one example's last token would predict the next
/// example's first, so it is never a target, and attention never crosses examples.
pub(super) fn pack(samples: Vec<Sample>, seq: usize) -> Vec<Sample> {
    let mut out: Vec<Sample> = Vec::new();
    for s in samples {
        match out.last_mut() {
            Some(row) if row.ids.len() + s.ids.len() <= seq + 1 => {
                let cur = *row.seg.last().expect("rows are never empty");
                row.mask.push(false);
                row.seg.push(cur);
                row.mask.extend(&s.mask);
                row.seg
                    .extend(std::iter::repeat_n(cur + 1, s.ids.len() - 1));
                row.ids.extend(&s.ids);
            }
            _ => out.push(s),
        }
    }
    out
}

pub(super) struct Batch {
    x: Tensor<2, Int>,
    y: Tensor<2, Int>,
    m: Tensor<2>,
    attn: Option<tritium_model::Segments>,
    pub(super) tokens: usize,
}

/// Inputs, targets, loss mask and (for packed rows) attention mask, right-padded to the longest
/// row. Padding is its own segment, so no real token attends to it and no row is all-masked.
pub(super) fn batch(s: &[&Sample], pad: u32, device: &Device) -> Batch {
    let t = s.iter().map(|x| x.ids.len() - 1).max().unwrap_or(1);
    let b = s.len();
    let (mut x, mut y, mut m) = (
        vec![pad as i64; b * t],
        vec![pad as i64; b * t],
        vec![0f32; b * t],
    );
    let mut segs = vec![vec![u32::MAX; t]; b];
    for (i, smp) in s.iter().enumerate() {
        for j in 0..smp.ids.len() - 1 {
            x[i * t + j] = smp.ids[j] as i64;
            y[i * t + j] = smp.ids[j + 1] as i64;
            m[i * t + j] = if smp.mask[j] { 1.0 } else { 0.0 };
            segs[i][j] = smp.seg[j];
        }
    }
    let packed = s.iter().any(|r| r.seg.last().is_some_and(|&g| g > 0));
    Batch {
        x: Tensor::<1, Int>::from_ints(x.as_slice(), device).reshape([b, t]),
        y: Tensor::<1, Int>::from_ints(y.as_slice(), device).reshape([b, t]),
        m: Tensor::<1>::from_floats(m.as_slice(), device).reshape([b, t]),
        attn: packed.then(|| tritium_model::Segments::from_ids(&segs)),
        tokens: s.iter().map(|r| r.ids.len() - 1).sum(),
    }
}

/// Sum of masked token losses and the number of masked tokens.
pub(super) fn masked_nll(model: &Transformer, b: Batch) -> (Tensor<1>, Tensor<1>) {
    let hidden = model.hidden_masked(b.x, 1.0, b.attn.as_ref());
    masked_nll_of(model, hidden, b.y, b.m)
}

/// The mean response loss of a training batch back-propagated (times `scale`): its value and
/// the gradients, the first `recompute` blocks checkpointed.
pub(super) fn response_grads(
    model: &Transformer,
    b: Batch,
    recompute: usize,
    scale: f32,
) -> (f32, GradientsParams) {
    let (y, m) = (b.y, b.m);
    model.loss_and_grads(b.x, 1.0, b.attn.as_ref(), recompute, scale, |model, h| {
        let (nll, n) = masked_nll_of(model, h, y, m);
        nll / n.clamp_min(1.0)
    })
}

/// As [`masked_nll`], from the final normed hidden states `[B, T, D]`.
fn masked_nll_of(
    model: &Transformer,
    hidden: Tensor<3>,
    y: Tensor<2, Int>,
    m: Tensor<2>,
) -> (Tensor<1>, Tensor<1>) {
    let n = m.clone().sum();
    (model.weighted_nll(model.head(hidden), y, m), n)
}

/// Token-weighted mean response loss over `set`.
pub(super) fn response_loss(
    model: &Transformer,
    set: &[Sample],
    pad: u32,
    device: &Device,
    bs: usize,
) -> f64 {
    let (mut nll, mut n) = (0f64, 0f64);
    for chunk in set.chunks(bs) {
        let refs: Vec<&Sample> = chunk.iter().collect();
        let (l, c) = masked_nll(model, batch(&refs, pad, device));
        nll += l.into_scalar::<f32>() as f64;
        n += c.into_scalar::<f32>() as f64;
    }
    nll / n.max(1.0)
}

/// The training stream: epoch after epoch over the rows, each epoch in its own shuffled order.
/// A pure function of (seed, position), so a resumed run sees exactly the batches it would have.
pub(super) struct Order {
    seed: u64,
    epoch: Option<u64>,
    perm: Vec<usize>,
}

impl Order {
    pub(super) fn new(n: usize, seed: u64) -> Self {
        Order {
            seed,
            epoch: None,
            perm: (0..n).collect(),
        }
    }

    pub(super) fn at(&mut self, k: usize) -> usize {
        let n = self.perm.len();
        let e = (k / n) as u64;
        if self.epoch != Some(e) {
            self.perm = (0..n).collect();
            let mut rng = splitmix64(self.seed ^ splitmix64(e));
            for i in (1..n).rev() {
                rng = splitmix64(rng);
                self.perm.swap(i, (rng % (i as u64 + 1)) as usize);
            }
            self.epoch = Some(e);
        }
        self.perm[k % n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tritium_model::{Backend, FfnAct, ModelConfig, Quant};

    fn sample(ids: &[u32], mask: &[bool]) -> Sample {
        Sample {
            ids: ids.to_vec(),
            mask: mask.to_vec(),
            seg: vec![0; ids.len() - 1],
        }
    }

    /// A tokenizer trained on a little text, with a Llama-3 style BOS added when `bos`.
    fn tokenizer(dir: &std::path::Path, bos: bool) -> Tokenizer {
        let docs: Vec<String> = (0..20)
            .map(|i| format!("user: question {i}\nassistant: answer {i}\n"))
            .collect();
        let path = dir.join(format!("tok-{bos}.json"));
        crate::tokenizer::train_bpe(&docs, 300, &path).unwrap();
        if bos {
            crate::tokenizer::add_bos_for_tests(&path);
        }
        Tokenizer::load(&path).unwrap()
    }

    /// Every row starts with one document start: the BOS where the tokenizer has one (written
    /// by the template through `bos_token`, or else put there), else end-of-text.
    #[test]
    fn rows_start_with_one_document_start() {
        let dir = tempfile::tempdir().unwrap();
        let ex = instruct::Example {
            messages: vec![
                instruct::Message {
                    role: instruct::Role::User,
                    content: "question 3".into(),
                },
                instruct::Message {
                    role: instruct::Role::Assistant,
                    content: "answer 3".into(),
                },
            ],
            origin: "test".into(),
        };
        let body = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}\
                    {% if add_generation_prompt %}assistant: {% endif %}";
        for bos in [true, false] {
            let tok = tokenizer(dir.path(), bos);
            let start = tok.doc_start();
            assert_eq!(start == tok.eot_id, !bos);
            for tpl in [body.to_string(), format!("{{{{ bos_token }}}}{body}")] {
                let tpl = Template::new(&tpl).unwrap().with_tokens(&tok);
                let rows = samples(&tok, &tpl, std::slice::from_ref(&ex), 64, &mut 0, &mut 0);
                let ids = &rows.unwrap()[0].ids;
                assert_eq!(ids[0], start, "bos {bos}: {}", tpl.source);
                assert_ne!(ids[1], start, "bos {bos}: {}", tpl.source);
            }
        }
    }

    #[test]
    fn packing_joins_examples_and_never_trains_across_a_boundary() {
        let a = sample(&[0, 11, 12, 13], &[false, true, true]);
        let b = sample(&[0, 21, 22], &[false, true]);
        let c = sample(&[0, 31, 32, 33, 34], &[false, false, true, true]);
        // Room for a + b (7 tokens) in a row of seq 6 + 1, not for c as well.
        let rows = pack(vec![a, b, c.clone()], 6);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].ids, [0, 11, 12, 13, 0, 21, 22]);
        // Input 3 (token 13) would predict b's first token: not a target.
        assert_eq!(rows[0].mask, [false, true, true, false, false, true]);
        assert_eq!(rows[0].seg, [0, 0, 0, 0, 1, 1]);
        assert_eq!(rows[1], c);
    }

    #[test]
    fn the_training_order_is_a_fresh_permutation_each_epoch_and_reproducible() {
        let n = 7;
        let mut o = Order::new(n, 42);
        let stream: Vec<usize> = (0..3 * n).map(|k| o.at(k)).collect();
        for e in 0..3 {
            let mut ep = stream[e * n..(e + 1) * n].to_vec();
            ep.sort();
            assert_eq!(ep, (0..n).collect::<Vec<_>>(), "epoch {e} is a permutation");
        }
        assert_ne!(stream[..n], stream[n..2 * n], "epochs are reshuffled");
        // Any position, asked cold (as after a resume), gives the same row.
        for k in [0, 5, 9, 20] {
            assert_eq!(Order::new(n, 42).at(k), stream[k]);
        }
    }

    /// The loss of two examples packed into one row (attention cut between them) equals the sum
    /// of their losses run one by one: the boundary leaks nothing and loses nothing.
    #[test]
    fn packed_loss_equals_the_examples_run_separately() {
        let device = Backend::Flex.device().unwrap();
        device.seed(5);
        let cfg = ModelConfig {
            vocab_size: 40,
            d_model: 32,
            n_layers: 2,
            n_heads: 2,
            n_kv_heads: Some(1),
            d_ff: 64,
            ffn_act: FfnAct::Silu,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            max_seq_len: 32,
            quant: Quant::Ternary,
            quant_warmup_steps: 0,
        };
        let model = Transformer::new(&cfg, &device);
        let a = sample(&[0, 5, 9, 14, 3, 7], &[false, false, true, true, true]);
        let b = sample(&[0, 8, 2, 30, 31], &[false, true, false, true]);
        let one = |s: &[&Sample]| {
            let (l, n) = masked_nll(&model, batch(s, 0, &device));
            (l.into_scalar::<f32>(), n.into_scalar::<f32>())
        };
        let (la, na) = one(&[&a]);
        let (lb, nb) = one(&[&b]);
        let packed = pack(vec![a.clone(), b.clone()], 20);
        assert_eq!(packed.len(), 1);
        let (lp, np) = one(&[&packed[0]]);
        assert_eq!(np, na + nb);
        assert!(
            (lp - (la + lb)).abs() <= 1e-4 * (la + lb),
            "packed {lp} vs separate {}",
            la + lb
        );
        // In a batch beside a shorter, padded row, the packed row's loss is unchanged too.
        let (lpb, npb) = one(&[&packed[0], &b]);
        assert_eq!(npb, na + 2.0 * nb);
        assert!((lpb - (la + 2.0 * lb)).abs() <= 1e-4 * lpb);
    }
}
