//! LoRA: adapters applied by the engine equal the Burn model with adapters; fine-tuning trains
//! only the adapter, resumes exactly, merges, and ties the adapter to its base.

use tritium_checkpoint::AdapterSet;
use tritium_engine::{Logits, Session};
use tritium_export::BaseScales;
use tritium_gguf::names::{self, Projection};
use tritium_train::finetune::{FinetuneConfig, FinetuneOptions, RunSpec};

use super::*;

/// A LoRA adapter on every projection: exported as a llama.cpp adapter GGUF, applied by the
/// engine beside the base GGUF, it gives the Burn model's logits and greedy tokens.
#[test]
fn lora_adapter_in_the_engine_matches_burn() {
    let _rng = rng_lock();
    use tritium_model::bitlinear::Lora as BurnLora;
    use tritium_model::burn::module::Param;
    let f = fixture();
    let (mut model, dev) = burn_model();
    dev.seed(11);
    let cfg = {
        let m = load_gguf(&f.files[0].1);
        m.cfg.clone()
    };
    for b in model.blocks.iter_mut() {
        for l in b.projections_mut() {
            let [d_out, d_in] = l.weight.dims();
            let mut lora = BurnLora::new(d_in, d_out, 4, 8.0, 0.0, &dev);
            // A trained adapter has a non-zero B; a random one moves the logits visibly.
            lora.b = Param::from_tensor(Tensor::<2>::random(
                [d_out, 4],
                tritium_model::burn::tensor::Distribution::Normal(0.0, 0.2),
                &dev,
            ));
            l.lora = Some(lora);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let set = AdapterSet::from_model(&model, None);
    let plain_model = burn_model().0;
    // The exact-scale base (where llama.cpp scales the gate and up branches, so the file holds
    // B/s there) and the folded one (B as trained).
    for name in ["tq2_0-f32embd", "tq2_0-folded"] {
        let base = &f.files.iter().find(|(n, _)| n == name).unwrap().1;
        let scales = BaseScales::from_gguf(base).unwrap();
        let adapter = dir.path().join(format!("{name}-adapter.gguf"));
        assert_eq!(
            tritium_export::export_lora(&set, &scales, &adapter).unwrap(),
            7 * cfg.n_layers
        );
        let m = load_gguf(base);
        // The file's B for block 0's up projection: B/s on the exact base, B on the folded one.
        let file = std::fs::read(&adapter).unwrap();
        let g = tritium_gguf::Gguf::parse(&file).unwrap();
        let up = Projection::Up;
        let in_file = g.dequantize(g.tensor(&names::lora_b(&up.weight(0))).unwrap());
        let trained = &set
            .adapters
            .iter()
            .find(|a| a.layer == 0 && a.target == up)
            .unwrap()
            .b;
        let s = m.layers[0].scales[up.index()];
        assert_eq!(s.is_some(), name == "tq2_0-f32embd");
        for (x, y) in in_file.iter().zip(trained) {
            assert_eq!(*x, y / s.unwrap_or(1.0));
        }
        let lora = tritium_engine::Lora::load(&adapter, &m).unwrap();
        // On the other kind of base the adapter would be off by s on some branches: refused.
        let other = if name == "tq2_0-f32embd" {
            "tq2_0-folded"
        } else {
            "tq2_0-f32embd"
        };
        let other = load_gguf(&f.files.iter().find(|(n, _)| n == other).unwrap().1);
        let Err(e) = tritium_engine::Lora::load(&adapter, &other) else {
            panic!("{name}'s adapter loaded on the other kind of base");
        };
        let e = e.to_string();
        assert!(
            e.contains("scales") && e.contains("export the adapter again"),
            "{e}"
        );
        let ids = m.tokenizer.encode(PROMPT).unwrap();
        let want = burn_logits(&model, &dev, &ids);
        let plain = burn_logits(&plain_model, &dev, &ids);
        let mut s = Session::new(&m, 256).unwrap();
        s.lora = Some(&lora);
        let got = s.forward(&ids, Logits::All).unwrap().to_vec();
        let v = m.cfg.vocab;
        let mut errs: Vec<f32> = Vec::new();
        let mut moved = 0f32;
        for t in 0..ids.len() {
            let w = &want[t * v..(t + 1) * v];
            let scale = w.iter().fold(0f32, |a, x| a.max(x.abs()));
            let max_diff = |o: &[f32]| o.iter().zip(w).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            errs.push(max_diff(&got[t * v..(t + 1) * v]) / scale);
            moved = moved.max(max_diff(&plain[t * v..(t + 1) * v]) / scale);
        }
        errs.sort_by(f32::total_cmp);
        eprintln!(
            "LoRA on {name}: engine vs Burn relative error median {:.1e}, max {:.1e}; the adapter moved logits by {moved:.2}",
            errs[errs.len() / 2],
            errs[errs.len() - 1]
        );
        assert!(
            moved > 0.1,
            "the adapter must matter for the test to mean anything"
        );
        // The folded base rounds its scales to fp16 and its embedding to f16: looser bounds, as
        // in the engine's own logits test.
        let (med_tol, max_tol) = if name.contains("folded") {
            (3e-3, 1e-2)
        } else {
            (1e-3, 5e-3)
        };
        assert!(
            errs[errs.len() / 2] <= med_tol && errs[errs.len() - 1] <= max_tol,
            "{name}"
        );
        if name != "tq2_0-f32embd" {
            continue;
        }
        // Greedy: 32 tokens identical.
        let prompt = m.tokenizer.encode("Once upon a time").unwrap();
        let mut burn_ids = prompt.clone();
        for _ in 0..32 {
            let l = burn_logits(&model, &dev, &burn_ids);
            let last = &l[(burn_ids.len() - 1) * v..];
            burn_ids.push((0..v).fold(0, |b, i| if last[i] > last[b] { i } else { b }) as u32);
        }
        let mut s = Session::new(&m, 256).unwrap();
        s.lora = Some(&lora);
        assert_eq!(greedy_tokens(&mut s, &prompt, 32), burn_ids[prompt.len()..]);
    }
}

/// LoRA fine-tuning on the bundled instruction data: the base stays bitwise the same, the
/// trainable count is the formula's, and the held-out response loss falls.
#[test]
fn lora_finetune_trains_only_the_adapter() {
    let _rng = rng_lock();
    use tritium_train::finetune::{finetune, lora_param_count};
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("ft.toml");
    std::fs::write(&cfg_path, "[finetune]\nrank = 4\nalpha = 8.0\nsteps = 30\nbatch_size = 4\nseq_len = 128\nlr = 3e-3\nwarmup_steps = 5\nlog_every = 10\n").unwrap();
    let config = FinetuneConfig::load(&cfg_path).unwrap();
    let (base, dev) = burn_model();
    let (model, state, s) = finetune(
        ft_options(
            RunSpec {
                config: config.clone(),
                base: f.ckpt.clone(),
                data: vec![root().join("datasets/instruct/seed_tasks.alpaca.jsonl")],
                eval_data: None,
                merge: false,
            },
            dir.path().join("out"),
            false,
            Default::default(),
        ),
        &mut |_| {},
    )
    .unwrap();
    eprintln!(
        "held-out response loss {:.4} → {:.4}; trainable {} of {}",
        s.base_val_loss, s.final_val_loss, s.trainable_params, s.total_params
    );
    assert!(
        s.final_val_loss < s.base_val_loss,
        "the response loss falls"
    );
    assert_eq!(
        s.trainable_params,
        lora_param_count(&state.model, 4, &config.target)
    );
    let counted: usize = AdapterSet::from_model(&model, None)
        .adapters
        .iter()
        .map(|ad| ad.a.len() + ad.b.len())
        .sum();
    assert_eq!(counted, s.trainable_params);
    // Bitwise-unchanged base: every BitLinear and norm, and the original embedding rows. The
    // run held the projections packed; its checkpoint holds them as the base's latent weights.
    let vals = |t: Tensor<2>| -> Vec<u32> {
        t.into_data()
            .convert::<f32>()
            .iter::<f32>()
            .map(f32::to_bits)
            .collect()
    };
    let saved = load_model(
        &tritium_checkpoint::latest(&dir.path().join("out")).unwrap(),
        &dev,
    );
    assert!(model.is_packed() && !saved.is_packed());
    for ((bb, bm), bs) in base.blocks.iter().zip(&model.blocks).zip(&saved.blocks) {
        for ((x, y), z) in bb
            .projections()
            .into_iter()
            .zip(bm.projections())
            .zip(bs.projections())
        {
            assert_eq!(vals(x.weight.val()), vals(z.weight.val()));
            let mut repacked = x.clone();
            repacked.pack();
            let codes = |l: &tritium_model::BitLinear| l.packed.as_ref().unwrap().dequantize();
            assert_eq!(codes(&repacked), codes(y));
            // What export and the adapter's exact scales read from a packed layer.
            assert_eq!(tritium_export::ternarize(y), tritium_export::ternarize(x));
        }
        assert_eq!(
            vals(bb.ffn_norm.gamma.val().unsqueeze()),
            vals(bm.ffn_norm.gamma.val().unsqueeze())
        );
    }
    let v = base.tok_embd.weight.dims()[0];
    let d = base.tok_embd.weight.dims()[1];
    assert_eq!(
        vals(base.tok_embd.weight.val()),
        vals(model.tok_embd.weight.val().slice([0..v, 0..d]))
    );
    assert_eq!(s.added_tokens, vec!["<|im_start|>", "<|im_end|>"]);
}

/// A CPU fine-tuning run of `spec` into `out`, fused.
fn ft_options(spec: RunSpec, out: PathBuf, resume: bool, stop: Arc<AtomicBool>) -> FinetuneOptions {
    FinetuneOptions {
        spec,
        out,
        resume,
        stop,
        device: Backend::Flex,
        fused: true,
        check_memory: true,
    }
}

fn ft_spec(f: &Fixture, cfg: &str, merge: bool) -> RunSpec {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ft.toml");
    std::fs::write(&p, cfg).unwrap();
    RunSpec {
        config: FinetuneConfig::load(&p).unwrap(),
        base: f.ckpt.clone(),
        data: vec![root().join("datasets/instruct/seed_tasks.alpaca.jsonl")],
        eval_data: None,
        merge,
    }
}

/// Fine-tuning checkpoints resume exactly: a run stopped (as by Ctrl-C) at step 6 and resumed ends
/// with the same adapter, bit for bit, as a straight run — packing and dropout included. The
/// merged checkpoint folds `(alpha/r)·B·A` into the latent weights, and the adapter survives the
/// trip safetensors → `export --lora` GGUF, which the engine accepts on its own base and refuses
/// on a same-shaped other base.
#[test]
fn finetune_resumes_exactly_merges_and_ties_the_adapter_to_its_base() {
    let _rng = rng_lock();
    use std::sync::atomic::Ordering;
    use tritium_train::Event;
    use tritium_train::finetune::finetune;
    let adapters = |m: &Transformer| AdapterSet::from_model(m, None).adapters;
    let f = fixture();
    let cfg = "[finetune]\nrank = 4\nalpha = 8.0\ndropout = 0.1\nsteps = 10\nbatch_size = 2\nseq_len = 128\npacking = true\nlr = 3e-3\nwarmup_steps = 2\nlog_every = 2\neval_every = 5\ncheckpoint_every = 4\n";
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let (m1, _, s1) = finetune(
        ft_options(
            ft_spec(f, cfg, true),
            straight.clone(),
            false,
            Default::default(),
        ),
        &mut |_| {},
    )
    .unwrap();
    assert!(s1.rows < s1.examples, "packing joined examples");

    let resumed = dir.path().join("resumed");
    let stop = Arc::new(AtomicBool::new(false));
    let (_, _, part) = finetune(
        ft_options(ft_spec(f, cfg, true), resumed.clone(), false, stop.clone()),
        &mut |e| {
            if let Event::Step(r) = e
                && r.step == 6
            {
                stop.store(true, Ordering::SeqCst)
            }
        },
    )
    .unwrap();
    assert!(part.interrupted && part.step == 6);
    let spec = RunSpec::read(&resumed).unwrap();
    let (m2, _, s2) = finetune(
        ft_options(spec, resumed.clone(), true, Default::default()),
        &mut |_| {},
    )
    .unwrap();
    let bits = |m: &Transformer| -> Vec<Vec<u32>> {
        adapters(m)
            .into_iter()
            .map(|ad| ad.a.iter().chain(&ad.b).map(|x| x.to_bits()).collect())
            .collect()
    };
    assert!(bits(&m1) == bits(&m2), "resumed adapter differs");
    assert_eq!(s1.final_val_loss, s2.final_val_loss);
    assert_eq!(s1.base_val_loss, s2.base_val_loss);
    let rows = tritium_train::metrics::read(&resumed.join("metrics.jsonl"));
    assert_eq!(
        rows.iter().filter(|r| r.loss.is_some()).count(),
        5,
        "one training row per logged step, none doubled by the resume"
    );
    // The token count carries on across the resume as in the straight run.
    let tokens = |run: &Path| -> Vec<(usize, u64)> {
        tritium_train::metrics::read(&run.join("metrics.jsonl"))
            .iter()
            .map(|r| (r.step, r.tokens))
            .collect()
    };
    assert_eq!(tokens(&resumed), tokens(&straight));
    assert!(resumed.join("loss.svg").exists());

    // Merge: W' = W + (alpha/r)·B·A for one projection, by hand; no adapter left.
    let dev = Backend::Flex.device().unwrap();
    let merged = load_model(&straight.join("merged"), &dev);
    assert!(merged.blocks[0].attn.wq.lora.is_none());
    let base = load_model(&f.ckpt, &dev);
    let ad = adapters(&m1);
    let first = &ad[0]; // blk.0 attn_q
    let (a, b, alpha) = (&first.a, &first.b, first.alpha);
    let (r, d_in) = (first.rank, first.d_in);
    let wq = |m: &Transformer| -> Vec<f32> {
        let w = m.blocks[0].attn.wq.weight.val();
        w.into_data().try_to_vec::<f32>().unwrap()
    };
    let (w0, w1) = (wq(&base), wq(&merged));
    for (idx, (x, y)) in w0.iter().zip(&w1).enumerate().step_by(97) {
        let (o, i) = (idx / d_in, idx % d_in);
        let delta: f32 =
            (0..r).map(|k| b[o * r + k] * a[k * d_in + i]).sum::<f32>() * alpha / r as f32;
        assert!(
            (y - (x + delta)).abs() <= 1e-6 + 1e-5 * delta.abs(),
            "w[{o},{i}]"
        );
    }
    assert!(s1.merged_val_loss.unwrap().is_finite());

    // export --lora from the safetensors: the same tensors as the trained model's.
    let set = AdapterSet::read(&straight.join("adapter.safetensors")).unwrap();
    assert_eq!(set.base_hash.as_deref(), Some(s1.base_hash.as_str()));
    let mut want = ad.clone();
    let mut got = set.adapters.clone();
    want.sort_by_key(|x| x.base_name());
    got.sort_by_key(|x| x.base_name());
    assert_eq!(want, got);
    // Its own base (with the chat markers added) accepts it; the original base, whose
    // projections have the same shapes, is refused by hash (by export as by the engine).
    let own = dir.path().join("own-base.gguf");
    export(
        &s1.adapter_base,
        &ExportOptions {
            weights: WeightType::Tq2_0,
            scale: ScaleMode::Exact,
            embd: EmbdType::F32,
            device: Backend::Flex,
        },
        &own,
    )
    .unwrap();
    let gguf = dir.path().join("adapter.gguf");
    tritium_export::export_lora(&set, &BaseScales::from_gguf(&own).unwrap(), &gguf).unwrap();
    let other_scales = BaseScales::from_gguf(&f.files[0].1).unwrap();
    let e = tritium_export::export_lora(&set, &other_scales, &dir.path().join("x.gguf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("wrong base model"), "{e}");
    let own = load_gguf(&own);
    tritium_engine::Lora::load(&gguf, &own).unwrap();
    // The template the run trained with travels into the GGUF.
    assert_eq!(
        own.get(names::tokenizer::CHAT_TEMPLATE)
            .and_then(tritium_gguf::Value::as_str),
        Some(names::DEFAULT_CHAT_TEMPLATE)
    );
    let other = load_gguf(&f.files[0].1);
    let err = tritium_engine::Lora::load(&gguf, &other)
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong base model"), "{err}");
}
