//! `gradient_checkpointing` changes the memory a step holds, not what it computes. In a test
//! binary of its own: the flex device's random generator is shared by the process, and a
//! concurrent test drawing from it would change this run's adapter initialisation.

use std::path::Path;

use tritium_checkpoint::Origin;
use tritium_model::{Backend, FfnAct, ModelConfig, Quant, Transformer};
use tritium_train::Event;
use tritium_train::finetune::{FinetuneConfig, FinetuneOptions, RunSpec, finetune};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Losses and gradient norms step by step, and the adapter's tensor bytes.
fn run(dir: &Path, ckpt: &str) -> (Vec<(f64, f64)>, Vec<u8>) {
    let cfg = ModelConfig {
        vocab_size: 4096,
        d_model: 32,
        n_layers: 2,
        n_heads: 2,
        n_kv_heads: None,
        d_ff: 64,
        ffn_act: FfnAct::Silu,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        max_seq_len: 128,
        quant: Quant::Ternary,
        quant_warmup_steps: 0,
    };
    let dev = Backend::Flex.device().unwrap();
    dev.seed(1);
    let tok = root().join("datasets/tinystories/tokenizer.json");
    let base = tritium_checkpoint::save_initial(
        &dir.join("base"),
        &Transformer::new(&cfg, &dev),
        &cfg,
        &tok,
        Origin::Train,
    )
    .unwrap();
    let toml = dir.join("ft.toml");
    std::fs::write(
        &toml,
        format!(
            "[finetune]\nrank = 4\nsteps = 3\nbatch_size = 2\nseq_len = 64\nlr = 1e-2\n\
             warmup_steps = 0\ndropout = 0.0\neval_every = 0\npacking = true\n\
             gradient_checkpointing = {ckpt}\n"
        ),
    )
    .unwrap();
    let opts = FinetuneOptions {
        spec: RunSpec {
            config: FinetuneConfig::load(&toml).unwrap(),
            base,
            data: vec![root().join("datasets/instruct/seed_tasks.alpaca.jsonl")],
            eval_data: None,
            merge: false,
        },
        out: dir.join("out"),
        resume: false,
        stop: Default::default(),
        device: Backend::Flex,
        fused: true,
        check_memory: true,
    };
    let mut rows = Vec::new();
    finetune(opts, &mut |e| {
        if let Event::Step(r) = e {
            rows.push((r.loss.unwrap(), r.grad_norm.unwrap()))
        }
    })
    .unwrap();
    // The tensors, not the header (whose metadata names this run's temporary base).
    let file = std::fs::read(dir.join("out/adapter.safetensors")).unwrap();
    let header = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    (rows, file[8 + header..].to_vec())
}

/// The same run with and without it: the same losses and gradient norms, step by step (packed
/// rows, so the recomputed blocks take the example starts too), and the same adapter, to the bit:
/// each recomputed block builds the graph the plain step builds, in the same order.
#[test]
fn gradient_checkpointing_trains_the_same_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, a) = run(&dir.path().join("plain"), "false");
    assert_eq!(plain.len(), 3);
    assert!(plain[2].0 < plain[0].0, "the adapter learns: {plain:?}");
    // Every block, and the first of the two.
    for ckpt in ["true", "1"] {
        let (recomputed, b) = run(&dir.path().join(ckpt), ckpt);
        assert_eq!(plain, recomputed, "gradient_checkpointing = {ckpt}");
        assert!(
            a == b,
            "gradient_checkpointing = {ckpt}: the adapters' tensors differ"
        );
    }
}
