//! `tritium eval` on a checkpoint and on its GGUF.

use super::*;
/// `tritium eval`'s two scorers on the same model: perplexity within 0.1% and the same choice on
/// ≥ 99.5% of the items of every task (a slice of each bundled task, to keep CI short).
#[test]
fn eval_agrees_between_checkpoint_and_gguf() {
    let _rng = rng_lock();
    use tritium_eval::scorers::{BurnScorer, GgufScorer};
    use tritium_eval::{Scorer, TASKS, perplexity, run_task, tasks};
    let f = fixture();
    let dev = Backend::Flex.device().unwrap();
    let mut burn = BurnScorer::load(&f.ckpt, &dev).unwrap();
    let text =
        tritium_train::text::read_text(&root().join("datasets/tinystories/valid_head.txt.gz"))
            .unwrap();
    let text: String = text.chars().take(20_000).collect();
    let want = perplexity(&mut burn, &text, 128, 64, |_, _| {}).unwrap();
    let limit = 40;
    let mut burn_tasks = Vec::new();
    for t in TASKS {
        let items = tasks::load(
            &tasks::task_file(&root().join("datasets/eval"), t).unwrap(),
            Some(limit),
        )
        .unwrap();
        burn_tasks.push((
            t,
            items.clone(),
            run_task(&mut burn, t, &items, || {}).unwrap(),
        ));
    }
    for name in ["tq2_0-f32embd", "tq2_0"] {
        let path = &f.files.iter().find(|(n, _)| n == name).unwrap().1;
        let mut gguf = GgufScorer::load(path, &Runtime::new(2), KvType::F32).unwrap();
        assert_eq!(gguf.max_len(), burn.max_len());
        let got = perplexity(&mut gguf, &text, 128, 64, |_, _| {}).unwrap();
        let rel = (got.perplexity / want.perplexity - 1.0).abs();
        eprintln!(
            "{name}: perplexity {:.4} vs checkpoint {:.4} ({:.2e} relative)",
            got.perplexity, want.perplexity, rel
        );
        assert_eq!(got.tokens, want.tokens);
        assert!(rel < 1e-3, "{name}: perplexity differs by {rel:.2e}");
        for (t, items, b) in &burn_tasks {
            let g = run_task(&mut gguf, t, items, || {}).unwrap();
            let same = g
                .items
                .iter()
                .zip(&b.items)
                .filter(|(x, y)| x.pred == y.pred && x.pred_norm == y.pred_norm)
                .count();
            let frac = same as f64 / g.n as f64;
            eprintln!(
                "{name} {t}: {same}/{} items choose alike (acc {:.3} vs {:.3})",
                g.n, g.acc, b.acc
            );
            // On a 40-item slice one differing near-tie would be 2.5%: allow it for the f16 embedding,
            // whose rounding moves log-likelihoods by ~1e-3; identical weights must agree exactly.
            let need = if name.contains("f32") { 1.0 } else { 0.97 };
            assert!(frac >= need, "{name} {t}: only {same}/{} items agree", g.n);
        }
    }
}
