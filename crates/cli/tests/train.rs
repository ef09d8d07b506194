//! End-to-end tests of `tritium train` through the binary: exact resume after Ctrl-C and after
//! SIGKILL, and the bad inputs that must give a one-line error instead of a panic or lost data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{losses, root};

fn tritium(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tritium"));
    c.args(args).current_dir(root());
    c
}

fn run(args: &[&str]) -> Output {
    tritium(args).output().expect("tritium runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A small model on the bundled TinyStories head, slow enough (tens of ms a step) to interrupt.
fn micro_config(dir: &Path) -> PathBuf {
    let root = root();
    let cfg = format!(
        r#"
[model]
vocab_size = 4096
d_model = 128
n_layers = 2
n_heads = 2
d_ff = 256
max_seq_len = 64

[data]
tokenizer = "{root}/datasets/tinystories/tokenizer.json"
prepared = "{dir}/prepared"
inputs = ["{root}/datasets/tinystories/train_head.txt.gz"]
val_every = 10

[train]
max_steps = 60
batch_size = 4
seq_len = 64
lr = 3e-3
min_lr = 3e-4
warmup_steps = 5
schedule = "cosine"
weight_decay = 0.1
grad_clip = 1.0
eval_every = 20
eval_batches = 2
checkpoint_every = 5
keep_checkpoints = 2
log_every = 1
seed = 7
"#,
        root = root.display(),
        dir = dir.display()
    );
    let p = dir.join("micro.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn last_step(run: &Path) -> u64 {
    losses(run).train.last().map(|r| r.0).unwrap_or(0)
}

/// Waits until the run has logged `step`, or panics if the process ends first.
fn wait_for_step(child: &mut Child, run: &Path, step: u64) {
    let start = Instant::now();
    while last_step(run) < step {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("training ended ({status}) before step {step}");
        }
        assert!(start.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn assert_same(a: &[(u64, f64)], b: &[(u64, f64)]) {
    assert_eq!(a.len(), b.len(), "row counts differ:\n{a:?}\n{b:?}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.0, y.0);
        assert!(
            (x.1 - y.1).abs() <= 1e-6,
            "step {}: {} vs {}",
            x.0,
            x.1,
            y.1
        );
    }
}

#[test]
fn resume_after_ctrl_c_and_after_sigkill_matches_a_straight_run() {
    let d = tempfile::tempdir().unwrap();
    let cfg = micro_config(d.path());
    let cfg = cfg.to_str().unwrap();
    let straight = d.path().join("straight");
    let o = run(&[
        "train",
        "--config",
        cfg,
        "--out",
        straight.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = losses(&straight);
    assert_eq!(want.train.len(), 60);
    // The config names no precision: on the fused CPU ops the run takes int8 input gradients
    // (with bf16 or f32 for the rest, as the CPU allows), says so, and records it for --resume.
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(
        said.contains("training products: BitLinear input gradients int8 × ternary"),
        "{said}"
    );
    let saved = std::fs::read_to_string(straight.join("config.toml")).unwrap();
    assert!(saved.contains("precision = \"int8\""), "{saved}");

    // Ctrl-C (SIGINT) a second run mid-way: it checkpoints at the next step boundary and exits 0.
    let broken = d.path().join("broken");
    let b = broken.to_str().unwrap();
    let mut child = tritium(&["train", "--config", cfg, "--out", b])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_step(&mut child, &broken, 12);
    // A second writer of the same run directory, while the first runs, is refused and changes
    // nothing (its seed would otherwise be what a later --resume reads from config.toml).
    let second = run(&["train", "--config", cfg, "--set", "seed=99", "--out", b]);
    let e = stderr(&second);
    assert!(
        !second.status.success() && e.contains("being written by another tritium process"),
        "{e}"
    );
    let saved = std::fs::read_to_string(broken.join("config.toml")).unwrap();
    assert!(
        saved.contains("seed = 7") && !saved.contains("seed = 99"),
        "{saved}"
    );
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("interrupted at step") && said.contains("--resume"),
        "{said}"
    );
    let stopped = last_step(&broken);
    assert!(stopped < 60, "the run was interrupted before the end");

    // Resume, then SIGKILL between checkpoints (no chance to save): the next resume starts from
    // the last checkpoint and recomputes the steps after it.
    let mut child = tritium(&["train", "--resume", b])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_step(&mut child, &broken, stopped + 13);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(last_step(&broken) < 60, "killed before the end");
    let o = run(&["train", "--resume", b]);
    assert!(o.status.success(), "{}", stderr(&o));

    let got = losses(&broken);
    assert_same(&got.train, &want.train);
    assert_same(&got.val, &want.val);
    // The last checkpoint's record (tokens seen, best validation loss) is the straight run's too.
    let state = |run: &Path| -> serde_json::Value {
        let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
        let p = run
            .join("checkpoints")
            .join(latest.trim())
            .join("state.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (a, b) = (state(&straight), state(&broken));
    assert_eq!((&a["step"], &a["tokens"]), (&b["step"], &b["tokens"]));
    assert_eq!(a["best_val_loss"], b["best_val_loss"]);
    // keep_checkpoints = 2: only the newest two remain.
    let n = std::fs::read_dir(broken.join("checkpoints"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("step-")
        })
        .count();
    assert_eq!(n, 2);
    assert!(broken.join("loss.svg").exists() && broken.join("config.toml").exists());
}

#[test]
fn bad_inputs_give_one_line_errors() {
    let d = tempfile::tempdir().unwrap();
    let cfg = micro_config(d.path());
    let cfg = cfg.to_str().unwrap();
    let out = d.path().join("r");
    let o = out.to_str().unwrap();
    let other = d.path().join("r-other.gguf");
    let o2 = other.to_str().unwrap();

    let e = stderr(&run(&["train", "--config", "missing.toml"]));
    assert!(e.contains("missing.toml") && !e.contains("panicked"), "{e}");
    let e = stderr(&run(&[
        "train",
        "--config",
        cfg,
        "--set",
        "max_stepz=3",
        "--out",
        o,
    ]));
    assert!(e.contains("max_stepz"), "{e}");
    let e = stderr(&run(&[
        "train",
        "--config",
        cfg,
        "--set",
        "d_model=99",
        "--out",
        o,
    ]));
    assert!(
        e.contains("[model].d_model") && e.contains("n_heads"),
        "{e}"
    );
    let e = stderr(&run(&[
        "train",
        "--config",
        cfg,
        "--set",
        "seq_len=5000",
        "--out",
        o,
    ]));
    assert!(e.contains("max_seq_len"), "{e}");
    // A corpus shorter than one window.
    let short = d.path().join("short.txt");
    std::fs::write(&short, "a tiny corpus.\n\nanother line.\n").unwrap();
    let inputs = format!("inputs=[\"{}\"]", short.display());
    let prepared = format!("prepared=\"{}\"", d.path().join("short-prep").display());
    let e = stderr(&run(&[
        "train", "--config", cfg, "--set", &inputs, "--set", &prepared, "--out", o,
    ]));
    assert!(e.contains("fewer than one window"), "{e}");
    // An empty corpus.
    let empty = d.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let inputs = format!("inputs=[\"{}\"]", empty.display());
    let prepared = format!("prepared=\"{}\"", d.path().join("empty-prep").display());
    let e = stderr(&run(&[
        "train", "--config", cfg, "--set", &inputs, "--set", &prepared, "--out", o,
    ]));
    assert!(
        e.contains("empty.txt") && e.contains("nothing to train on"),
        "{e}"
    );

    // A real run of 5 steps, then the ways of misusing it.
    let ok = run(&["train", "--config", cfg, "--set", "max_steps=5", "--out", o]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let e = stderr(&run(&[
        "train",
        "--config",
        cfg,
        "--set",
        "max_steps=5",
        "--out",
        o,
    ]));
    assert!(
        e.contains("already holds checkpoints") && e.contains("--resume"),
        "{e}"
    );
    // A checkpoint of another model shape.
    let e = stderr(&run(&[
        "train",
        "--resume",
        o,
        "--config",
        cfg,
        "--set",
        "d_model=256",
        "--set",
        "max_steps=9",
    ]));
    assert!(e.contains("another model"), "{e}");
    // Data prepared with another tokenizer.
    let gpt2 = root().join("datasets/tokenizers/gpt2/tokenizer.json");
    let e = stderr(&run(&[
        "train",
        "--config",
        cfg,
        "--set",
        &format!("tokenizer=\"{}\"", gpt2.display()),
        "--set",
        "vocab_size=50257",
        "--out",
        d.path().join("r2").to_str().unwrap(),
    ]));
    assert!(e.contains("prepare the data again"), "{e}");
    // An absurd size is refused before anything is allocated, with the estimate; a state.json
    // that claims one is refused against the size of its weights.
    let e = stderr(&run(&[
        "train",
        "--config",
        cfg,
        "--set",
        "vocab_size=4000000000",
        "--out",
        o2,
    ]));
    assert!(
        e.contains("GiB available") && e.contains("--ignore-memory"),
        "{e}"
    );
    let state = out.join("checkpoints/step-5/state.json");
    let honest = std::fs::read_to_string(&state).unwrap();
    std::fs::write(
        &state,
        honest.replace("\"vocab_size\": 4096", "\"vocab_size\": 4000000000"),
    )
    .unwrap();
    let e = stderr(&run(&["export", "--checkpoint", o, "--out", o2]));
    assert!(e.contains("state.json") && e.contains("room for"), "{e}");
    std::fs::write(&state, honest).unwrap();
    // A file where the run directory should be; a perplexity window beyond the model's context
    // (used at the context, with the default stride following it).
    std::fs::write(&other, "not a directory").unwrap();
    let e = stderr(&run(&["train", "--config", cfg, "--out", o2]));
    assert!(
        e.contains("r-other.gguf") && e.contains("not a directory"),
        "{e}"
    );
    let short = d.path().join("short.txt");
    std::fs::write(&short, "Once upon a time there was a cat. ".repeat(20)).unwrap();
    let r = run(&[
        "eval",
        "--model",
        o,
        "--text",
        short.to_str().unwrap(),
        "--ctx",
        "100000",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stderr(&r).contains("--ctx 100000"), "{}", stderr(&r));
    std::fs::remove_file(&other).unwrap();
    // Outputs that are inputs: export and eval would replace the weights they read.
    let model = out.join("checkpoints/step-5/model.bpk");
    let before = std::fs::read(&model).unwrap();
    let m = model.to_str().unwrap();
    let valid = root().join("datasets/tinystories/valid_head.txt.gz");
    for args in [
        vec!["export", "--checkpoint", o, "--out", m],
        vec![
            "eval",
            "--model",
            o,
            "--text",
            valid.to_str().unwrap(),
            "--out",
            m,
        ],
    ] {
        let e = stderr(&run(&args));
        assert!(
            e.contains("model.bpk") && e.contains("is an input"),
            "{args:?}: {e}"
        );
    }
    assert_eq!(std::fs::read(&model).unwrap(), before);
    // A corrupt checkpoint: refused with its path, and never overwritten.
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let r = run(&["train", "--resume", o, "--set", "max_steps=9"]);
    let e = stderr(&r);
    assert!(
        !r.status.success() && e.contains("model.bpk") && !e.contains("panicked"),
        "{e}"
    );
    assert_eq!(std::fs::read(&model).unwrap().len(), bytes.len() / 2);
    // A loss that blows up stops the run with the step and keeps the last good checkpoint.
    let nan = d.path().join("nan");
    let r = run(&[
        "train",
        "--config",
        cfg,
        "--set",
        "lr=1e30",
        "--set",
        "min_lr=0",
        "--set",
        "grad_clip=0",
        "--set",
        "warmup_steps=0",
        "--set",
        "checkpoint_every=1",
        "--out",
        nan.to_str().unwrap(),
    ]);
    let e = stderr(&r);
    assert!(
        !r.status.success() && e.contains("at step") && !e.contains("panicked"),
        "{e}"
    );
    let bad_step: u64 = e
        .split("at step ")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let latest = std::fs::read_to_string(nan.join("checkpoints/latest")).unwrap();
    let kept: u64 = latest
        .trim()
        .strip_prefix("step-")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        kept,
        bad_step - 1,
        "the checkpoint before the bad step is the latest"
    );
    assert!(
        nan.join("checkpoints")
            .join(latest.trim())
            .join("model.bpk")
            .exists()
    );
}

/// The fused ops' loops are compiled twice (baseline and AVX-512, `TRITIUM_ISA` picks) and the
/// ternary kernels three times (scalar, AVX2, AVX-512 VNNI). Their reductions run in a fixed
/// 16-lane order and the integer products are exact, so a training step gives the same loss to
/// the last bit whichever set runs: that checks every SIMD version against the scalar one through
/// the whole model.
#[test]
fn a_training_step_is_the_same_on_every_instruction_set() {
    let loss = |isa: &str| -> String {
        let o = tritium(&[
            "bench-train",
            "--config",
            "configs/tiny.toml",
            "--batch",
            "2",
            "--seq",
            "40",
            "--warmup",
            "1",
            "--steps",
            "1",
            "--windows",
            "1",
            "--json",
        ])
        .env("TRITIUM_ISA", isa)
        .output()
        .expect("tritium runs");
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("bench JSON");
        v["final_loss"].to_string()
    };
    let scalar = loss("scalar");
    assert!(scalar.parse::<f64>().unwrap() > 1.0, "{scalar}");
    for isa in ["avx2", "avx512"] {
        assert_eq!(loss(isa), scalar, "TRITIUM_ISA={isa}");
    }
}
