//! A batched forward gives every sequence exactly the logits it gets alone: projections see all
//! rows at once but quantize activations per token and accumulate in integers, and RoPE, the KV
//! cache, attention and adapters stay per sequence. Checked bit for bit across the matrix paths
//! (one token, a few, and the tiled many-token path) and with an adapter on one sequence only.

use std::path::Path;

use tritium_engine::forward::{Step, forward_batch};
use tritium_engine::lora::{Lora, Pair};
use tritium_engine::synthetic::{Spec, gguf};
use tritium_engine::{KvType, Logits, Model, Runtime, Session};
use tritium_gguf::GgmlType;

fn model(weights: GgmlType) -> Model {
    let spec = Spec {
        n_layers: 2,
        ctx: 96,
        weights,
        ..Spec::default()
    };
    Model::from_bytes(Path::new("synthetic.gguf"), gguf(&spec), &Runtime::new(2)).unwrap()
}

/// A rank-2 adapter on layer 0's Q and gate projections, with values from a fixed sequence.
fn adapter(m: &Model) -> Lora {
    let (d, f) = (m.cfg.d_model, m.cfg.d_ff);
    let mut k = 0u32;
    let mut vals = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                k = k.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                ((k >> 16) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    };
    let mut pairs = vec![[None, None, None, None, None, None, None]; m.cfg.n_layers];
    let pair = |a, b| {
        Some(Pair {
            rank: 2,
            a,
            b,
            branch: 1.0,
        })
    };
    pairs[0][0] = pair(vals(2 * d), vals(d * 2));
    pairs[0][4] = pair(vals(2 * d), vals(f * 2));
    Lora {
        alpha: 4.0,
        user_scale: 1.0,
        pairs,
        tensors: 4,
    }
}

/// Token sequences of several lengths: 1 (decode), 3 (a few rows), 40 (the tiled path); 80
/// makes the decode steps' attention long enough to be spread over the team.
fn prompts(v: u32) -> Vec<Vec<u32>> {
    [5usize, 3, 40, 1, 80]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (0..n as u32)
                .map(|t| (t * 37 + i as u32 * 11 + 1) % v)
                .collect()
        })
        .collect()
}

#[test]
fn a_batch_computes_what_each_sequence_computes_alone() {
    let cases = [
        (GgmlType::Tq2_0, KvType::F32),
        (GgmlType::I2S, KvType::F32),
        (GgmlType::Tq2_0, KvType::F16),
    ];
    for (weights, kv) in cases {
        let m = model(weights);
        let lora = adapter(&m);
        let v = m.cfg.vocab as u32;
        let ps = prompts(v);
        let uses_lora = |i: usize| i == 1;
        // Alone: each prompt (all logits), then two decode steps of fixed tokens.
        let mut alone = Vec::new();
        for (i, p) in ps.iter().enumerate() {
            let mut s = Session::with_kv(&m, 96, kv).unwrap();
            if uses_lora(i) {
                s.lora = Some(&lora);
            }
            let mut got = s.forward(p, Logits::All).unwrap().to_vec();
            for step in 0..2u32 {
                got.extend(
                    s.forward(&[(i as u32 + step * 7) % v], Logits::Last)
                        .unwrap(),
                );
            }
            alone.push(got);
        }
        // Together: sequence 2 joins one step late (its prompt runs beside the others' decode).
        let mut sess: Vec<Session> = (0..ps.len())
            .map(|_| Session::with_kv(&m, 96, kv).unwrap())
            .collect();
        sess[1].lora = Some(&lora);
        let mut batched = vec![Vec::new(); ps.len()];
        let mut next = vec![0usize; ps.len()]; // decode steps done
        for round in 0..4 {
            let tokens: Vec<Vec<u32>> = (0..ps.len())
                .map(|i| {
                    let joined = if i == 2 { 1 } else { 0 };
                    if round == joined {
                        ps[i].clone()
                    } else if round > joined && next[i] < 2 {
                        vec![(i as u32 + next[i] as u32 * 7) % v]
                    } else {
                        Vec::new()
                    }
                })
                .collect();
            let mut steps: Vec<Step> = sess
                .iter_mut()
                .zip(&tokens)
                .filter(|(_, t)| !t.is_empty())
                .map(|(s, t)| Step {
                    sess: s,
                    tokens: t,
                    logits: if t.len() > 1 {
                        Logits::All
                    } else {
                        Logits::Last
                    },
                })
                .collect();
            forward_batch(&mut steps).unwrap();
            for (i, t) in tokens.iter().enumerate() {
                if !t.is_empty() {
                    batched[i].extend_from_slice(&sess[i].logits);
                    if sess[i].pos > ps[i].len() {
                        next[i] += 1;
                    }
                }
            }
        }
        for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
            assert_eq!(a.len(), (ps[i].len() + 2) * v as usize);
            assert!(a == b, "{weights:?} {kv}: sequence {i} differs in a batch");
        }
        // The adapter changed sequence 1's logits (so the comparison above covers it).
        let mut plain = Session::new(&m, 96).unwrap();
        assert_ne!(
            plain.forward(&ps[1], Logits::All).unwrap(),
            &alone[1][..3 * v as usize]
        );
    }
}

#[test]
fn a_batch_refuses_what_a_session_refuses() {
    let m = model(GgmlType::Tq2_0);
    let mut a = Session::new(&m, 4).unwrap();
    let mut b = Session::new(&m, 4).unwrap();
    let v = m.cfg.vocab as u32;
    let err = forward_batch(&mut [
        Step {
            sess: &mut a,
            tokens: &[1, 2],
            logits: Logits::Last,
        },
        Step {
            sess: &mut b,
            tokens: &[1, 2, 3, 4, 5],
            logits: Logits::Last,
        },
    ])
    .unwrap_err();
    assert!(err.to_string().contains("exceed the context of 4"), "{err}");
    assert_eq!((a.pos, b.pos), (0, 0), "a refused batch runs nothing");
    let err = forward_batch(&mut [Step {
        sess: &mut a,
        tokens: &[v],
        logits: Logits::Last,
    }])
    .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let mut h = Session::with_kv(&m, 4, KvType::F16).unwrap();
    let err = forward_batch(&mut [
        Step {
            sess: &mut a,
            tokens: &[1],
            logits: Logits::Last,
        },
        Step {
            sess: &mut h,
            tokens: &[1],
            logits: Logits::Last,
        },
    ])
    .unwrap_err();
    assert!(err.to_string().contains("one KV cache type"), "{err}");
}

/// An f16 cache rounds each key and value once (relative error ≤ 2⁻¹¹); what reaches the logits
/// stays small beside their spread, while a cache that did not round would give equal bits.
#[test]
fn an_f16_cache_stays_close_to_the_f32_one() {
    let m = model(GgmlType::Tq2_0);
    let v = m.cfg.vocab as u32;
    let prompt: Vec<u32> = (0..40).map(|t| (t * 37 + 5) % v).collect();
    let run = |kv| {
        let mut s = Session::with_kv(&m, 96, kv).unwrap();
        let mut got = s.forward(&prompt, Logits::All).unwrap().to_vec();
        for t in 0..8 {
            got.extend(s.forward(&[(t * 11 + 3) % v], Logits::Last).unwrap());
        }
        got
    };
    let (a, b) = (run(KvType::F32), run(KvType::F16));
    let spread = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let mean = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    eprintln!("f16 vs f32 cache: worst {worst}, mean {mean}, |logit| up to {spread}");
    assert!(worst > 0.0, "the f16 cache changed nothing: is it used?");
    assert!(
        worst < 0.05 * spread && mean < 0.005 * spread,
        "{worst} {mean} {spread}"
    );
}
