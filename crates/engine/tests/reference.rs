//! The engine against an independent float64 implementation of the `bitnet` forward pass written
//! here from the GGUF's dequantized tensors (no packing, no kernels, no KV cache), with and without
//! a LoRA adapter.

use std::path::Path;

use tritium_engine::synthetic::{Spec, gguf};
use tritium_engine::{Logits, Lora, Model, Runtime, Session};
use tritium_gguf::blocks::encode_f32;
use tritium_gguf::names::{self, BlockNorm, Projection, adapter, arch, general};
use tritium_gguf::{GgmlType, Gguf, Value, Writer};

/// Two threads, as CI has.
fn rt() -> Runtime {
    Runtime::new(2)
}

fn rmsnorm(x: &[f64], g: &[f32]) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + 1e-5).sqrt();
    x.iter().zip(g).map(|(v, g)| v * r * *g as f64).collect()
}

/// int8 fake quantization as training does it (round half to even).
fn quant(x: &[f64]) -> Vec<f64> {
    let m = x.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-5);
    let s = 127.0 / m;
    x.iter()
        .map(|v| (v * s).round_ties_even().clamp(-128.0, 127.0) / s)
        .collect()
}

/// `W·x` with `W` in ggml order `[cols, rows]` (row-major `[rows][cols]`).
fn matvec(w: &[f32], x: &[f64]) -> Vec<f64> {
    w.chunks_exact(x.len())
        .map(|r| r.iter().zip(x).map(|(a, b)| *a as f64 * b).sum())
        .collect()
}

type Adapter = Vec<(String, Vec<f32>, Vec<f32>, usize)>; // base, A [r, in], B [out, r], r

fn reference(g: &Gguf, tokens: &[u32], lora: &Adapter, alpha: f64) -> Vec<Vec<f64>> {
    let t = |n: &str| g.dequantize(g.tensor(n).unwrap());
    let u = |k: &str| g.get(k).unwrap().as_u32().unwrap() as usize;
    let (d, nl, nh, nkv) = (
        u(arch::EMBEDDING_LENGTH),
        u(arch::BLOCK_COUNT),
        u(arch::HEAD_COUNT),
        u(arch::HEAD_COUNT_KV),
    );
    let hd = d / nh;
    let embd = t(names::TOKEN_EMBD);
    // llama.cpp's projection, from its llama-graph.cpp: the `.scale` tensor (if any) multiplies
    // the ternary product; the adapter branch is added after that, except in build_ffn's up and
    // gate products, where it is added first and scaled with them.
    let proj = |name: &str, x: &[f64]| -> Vec<f64> {
        let scale_name = format!("{}.scale", name.strip_suffix(".weight").unwrap());
        let s = g
            .tensor(&scale_name)
            .map_or(1.0, |st| g.dequantize(st)[0] as f64);
        let in_ffn_gate_or_up = (0..nl).any(|l| {
            [Projection::Gate, Projection::Up]
                .iter()
                .any(|p| p.weight(l) == name)
        });
        let mut y: Vec<f64> = matvec(&t(name), &quant(x)).iter().map(|v| v * s).collect();
        if let Some((_, a, b, r)) = lora.iter().find(|(n, ..)| n == name) {
            let ax = matvec(a, x);
            let bax = matvec(b, &ax);
            let branch = if in_ffn_gate_or_up { s } else { 1.0 };
            for (y, v) in y.iter_mut().zip(bax) {
                *y += branch * alpha / *r as f64 * v;
            }
        }
        y
    };
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&tok| {
            embd[tok as usize * d..(tok as usize + 1) * d]
                .iter()
                .map(|&v| v as f64)
                .collect()
        })
        .collect();
    for l in 0..nl {
        use Projection::*;
        let b = |p: Projection| p.weight(l);
        let n = |n: BlockNorm| n.weight(l);
        let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
        for (p, x) in xs.iter().enumerate() {
            let h = rmsnorm(x, &t(&n(BlockNorm::Attn)));
            let (mut q, mut k) = (proj(&b(Q), &h), proj(&b(K), &h));
            for v in [&mut q, &mut k] {
                for head in v.chunks_exact_mut(hd) {
                    for i in 0..hd / 2 {
                        let a = p as f64 * 10000f64.powf(-2.0 * i as f64 / hd as f64);
                        let (x0, x1) = (head[i], head[i + hd / 2]);
                        head[i] = x0 * a.cos() - x1 * a.sin();
                        head[i + hd / 2] = x1 * a.cos() + x0 * a.sin();
                    }
                }
            }
            qs.push(q);
            ks.push(k);
            vs.push(proj(&b(V), &h));
        }
        for p in 0..xs.len() {
            let mut att = vec![0f64; d];
            for head in 0..nh {
                let kh = head / (nh / nkv);
                let s: Vec<f64> = (0..=p)
                    .map(|j| {
                        (0..hd)
                            .map(|i| qs[p][head * hd + i] * ks[j][kh * hd + i])
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for (j, sj) in s.iter().enumerate() {
                    for i in 0..hd {
                        att[head * hd + i] += (sj - m).exp() / z * vs[j][kh * hd + i];
                    }
                }
            }
            let o = proj(&b(O), &rmsnorm(&att, &t(&n(BlockNorm::AttnSub))));
            xs[p].iter_mut().zip(o).for_each(|(x, o)| *x += o);
            let h = rmsnorm(&xs[p], &t(&n(BlockNorm::Ffn)));
            let (gate, up) = (proj(&b(Gate), &h), proj(&b(Up), &h));
            let m: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(a, u)| a / (1.0 + (-a).exp()) * u)
                .collect();
            let dn = proj(&b(Down), &rmsnorm(&m, &t(&n(BlockNorm::FfnSub))));
            xs[p].iter_mut().zip(dn).for_each(|(x, o)| *x += o);
        }
    }
    xs.iter()
        .map(|x| matvec(&embd, &rmsnorm(x, &t(names::OUTPUT_NORM))))
        .collect()
}

fn adapter(spec: &Spec, alpha: f32, rank: usize) -> (Vec<u8>, Adapter) {
    let d = spec.d_model;
    let kv = d / spec.n_heads * spec.n_kv_heads;
    let mut w = Writer::new();
    w.kv(general::ARCHITECTURE, Value::String(names::ARCH.into()))
        .kv(general::TYPE, Value::String("adapter".into()))
        .kv(adapter::TYPE, Value::String("lora".into()))
        .kv(adapter::LORA_ALPHA, Value::F32(alpha));
    let mut list = Adapter::new();
    let mut s = 7u64;
    let mut rnd = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    };
    use Projection::*;
    for p in [Q, V, O, Up, Down] {
        let (cols, rows) = p.dims(d, kv, spec.d_ff);
        let base = p.weight(0);
        let (a, b) = (rnd(rank * cols, 0.2), rnd(rows * rank, 0.2));
        w.tensor(
            &names::lora_a(&base),
            &[cols as u64, rank as u64],
            GgmlType::F32,
            encode_f32(&a),
        );
        w.tensor(
            &names::lora_b(&base),
            &[rank as u64, rows as u64],
            GgmlType::F32,
            encode_f32(&b),
        );
        list.push((base, a, b, rank));
    }
    (w.to_bytes(), list)
}

fn max_rel(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()))
        / scale
}

/// With scales folded into the blocks and with exact `.scale` tensors (where llama.cpp scales the
/// up and gate adapter branches too), with and without an adapter on five projections.
#[test]
fn engine_equals_float64_reference_with_and_without_lora() {
    for exact_scales in [false, true] {
        engine_equals_reference(Spec {
            n_layers: 2,
            exact_scales,
            ..Spec::default()
        });
    }
}

fn engine_equals_reference(spec: Spec) {
    let bytes = gguf(&spec);
    let g = Gguf::parse(&bytes).unwrap();
    let model = Model::from_bytes(Path::new("m.gguf"), bytes.clone(), &rt()).unwrap();
    let tokens: Vec<u32> = vec![257, 10, 100, 3, 77, 200, 5, 42];
    let dir = tempfile::tempdir().unwrap();
    let (ab, list) = adapter(&spec, 16.0, 4);
    let apath = dir.path().join("a.gguf");
    std::fs::write(&apath, ab).unwrap();
    let lora = Lora::load(&apath, &model).unwrap();
    assert_eq!(lora.tensors, 10);
    for (name, adapter_list, use_lora) in [("base", Adapter::new(), false), ("lora", list, true)] {
        let want = reference(&g, &tokens, &adapter_list, 16.0);
        let mut s = Session::new(&model, 16).unwrap();
        if use_lora {
            s.lora = Some(&lora);
        }
        let got = s.forward(&tokens, Logits::All).unwrap().to_vec();
        let v = model.cfg.vocab;
        for (t, w) in want.iter().enumerate() {
            let e = max_rel(&got[t * v..(t + 1) * v], w);
            assert!(
                e < 1e-4,
                "{name} (exact scales: {}) position {t}: {e:.2e}",
                spec.exact_scales
            );
        }
        if use_lora {
            let mut base = Session::new(&model, 16).unwrap();
            let b = base.forward(&tokens, Logits::All).unwrap();
            assert!(
                max_rel(b, &want.concat()) > 1e-2,
                "the adapter changes the logits"
            );
        }
    }
}

#[test]
fn adapters_for_another_model_are_refused() {
    let model = Model::from_bytes(Path::new("m.gguf"), gguf(&Spec::default()), &rt()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Rank-4 adapter made for a 512-wide model.
    let (ab, _) = adapter(
        &Spec {
            d_model: 512,
            d_ff: 512,
            ..Spec::default()
        },
        8.0,
        4,
    );
    let p = dir.path().join("wrong.gguf");
    std::fs::write(&p, ab).unwrap();
    let e = Lora::load(&p, &model).unwrap_err().to_string();
    assert!(
        e.contains("do not fit the base") && e.contains("wrong base model"),
        "{e}"
    );
    // A model file is not an adapter.
    let m = dir.path().join("model.gguf");
    std::fs::write(&m, gguf(&Spec::default())).unwrap();
    assert!(
        Lora::load(&m, &model)
            .unwrap_err()
            .to_string()
            .contains("not a LoRA adapter")
    );
}

/// Two engines with different thread teams live in one process and run at the same time; the
/// logits do not depend on the team (every output is computed by one task in a fixed order).
#[test]
fn two_engines_with_different_thread_counts_run_side_by_side() {
    let bytes = gguf(&Spec {
        n_layers: 2,
        ctx: 64,
        ..Spec::default()
    });
    let one = Model::from_bytes(Path::new("one.gguf"), bytes.clone(), &Runtime::new(1)).unwrap();
    // Two on the 2-core machines this runs on (the team is capped at the cores).
    let two = Model::from_bytes(Path::new("two.gguf"), bytes, &Runtime::new(2)).unwrap();
    assert_eq!((one.rt.threads(), two.rt.threads()), (1, Runtime::cap(2).0));
    // Enough tokens that prompt processing splits its work across the larger team.
    let tokens: Vec<u32> = (0..40).map(|i| (i * 37 % 250) as u32).collect();
    let run = |m: &Model| {
        let mut s = Session::new(m, 64).unwrap();
        s.forward(&tokens, Logits::All).unwrap().to_vec()
    };
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(|| run(&one));
        let b = sc.spawn(|| run(&two));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(a.len(), 40 * one.cfg.vocab);
    assert_eq!(a, b);
}

/// A chat turn that reuses the KV cache of the turns before gives the tokens the whole
/// conversation gives from an empty cache. The first reply ends at its length limit, so its last
/// token was sampled but never run: the cache holds one token fewer than the conversation, which
/// is why reuse stops at the session's position (a random model's bytes rarely re-tokenize to the
/// same ids, so this test does not reach that edge by itself).
#[test]
fn a_chat_turn_reusing_the_cache_equals_the_whole_conversation_run_afresh() {
    use tritium_engine::{Chat, Sampler, SamplerConfig};
    let m = Model::from_bytes(
        Path::new("chat.gguf"),
        gguf(&Spec {
            ctx: 256,
            ..Spec::default()
        }),
        &rt(),
    )
    .unwrap();
    let greedy = || {
        Sampler::new(SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        })
    };
    let mut s = Session::new(&m, 256).unwrap();
    let mut chat = Chat::new(None, Some("be brief")).unwrap();
    let first = chat
        .reply(&mut s, &mut greedy(), "hello", 6, &[], |_| {})
        .unwrap();
    assert_eq!(first.tokens.len(), 6, "the first reply ends at its limit");
    assert_eq!(
        s.pos,
        first.prompt_tokens + 5,
        "its last token is not in the cache"
    );
    // A turn too long for the context fails and leaves the conversation as it was.
    let before = chat.messages.len();
    let long = "x".repeat(400);
    assert!(
        chat.reply(&mut s, &mut greedy(), &long, 6, &[], |_| {})
            .is_err()
    );
    assert_eq!(chat.messages.len(), before);
    let second = chat
        .reply(&mut s, &mut greedy(), "and then?", 6, &[], |_| {})
        .unwrap();

    let mut fresh = Chat::new(None, None).unwrap();
    fresh.messages = chat.messages[..chat.messages.len() - 2].to_vec();
    let mut s2 = Session::new(&m, 256).unwrap();
    let again = fresh
        .reply(&mut s2, &mut greedy(), "and then?", 6, &[], |_| {})
        .unwrap();
    assert_eq!(second.tokens, again.tokens);
    assert!(
        second.prompt_tokens < again.prompt_tokens,
        "the cache was reused"
    );
}
