//! Hostile input, every subcommand: a table of invocations a careless or malicious user might type,
//! each run through the `tritium` binary. Every case must end with a plain exit status (never 101,
//! the panic code; never a signal; never a hang) and a message that names the flag, key, file or
//! line at fault. A few cases must succeed with a warning instead (a thread count above the cores
//! is capped, a window beyond the model's context is clamped).
//!
//! The fixture is a one-layer model trained for two steps, its GGUF and a one-step LoRA adapter, so
//! that every subcommand has something real to refuse bad company with.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::root;

/// What a case must end with.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Want {
    /// A non-zero exit (not 101) with every needle in stderr.
    Refused,
    /// Success, with every needle in stderr (a warning) or stdout (a summary).
    Warned,
}
use Want::*;

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

/// Runs the binary with stdin closed, killing it after `limit`.
fn run(args: &[String], limit: Duration) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tritium"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tritium starts");
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            r.read_to_end(&mut s).ok();
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            timed_out = true;
            child.kill().ok();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Outcome {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        timed_out,
    }
}

fn ok(args: &[String]) {
    let o = run(args, Duration::from_secs(300));
    assert_eq!(o.code, Some(0), "{args:?}: {}", o.stderr);
}

/// Writes `text` to `dir/name` and returns the path.
fn put(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const MICRO: &str = r#"[model]
vocab_size = 4096
d_model = 256
n_layers = 1
n_heads = 2
n_kv_heads = 2
d_ff = 256
max_seq_len = 32

[data]
tokenizer = "datasets/tinystories/tokenizer.json"
prepared = "{d}/prepared"
inputs = ["{d}/corpus.txt"]
val_every = 5

[train]
max_steps = 2
batch_size = 2
seq_len = 32
lr = 3e-3
min_lr = 3e-4
warmup_steps = 1
schedule = "cosine"
weight_decay = 0.1
grad_clip = 1.0
eval_every = 1000
eval_batches = 1
checkpoint_every = 2
keep_checkpoints = 2
log_every = 1
seed = 7
sample_tokens = 0
"#;

const FT: &str = r#"[finetune]
method = "lora"
rank = 4
alpha = 8.0
dropout = 0.0
target = ["q", "v"]
steps = 1
batch_size = 2
seq_len = 32
packing = true
lr = 1e-3
warmup_steps = 0
weight_decay = 0.0
grad_clip = 1.0
holdout_every = 4
log_every = 1
eval_every = 100
checkpoint_every = 100
keep_checkpoints = 1
seed = 1
"#;

/// Config variants: (file name, base text, text to replace, replacement).
const CONFIGS: &[(&str, &str, &str, &str)] = &[
    (
        "c-dmodel-str.toml",
        "micro",
        "d_model = 256",
        "d_model = \"256\"",
    ),
    ("c-syntax.toml", "micro", "n_layers = 1", "n_layers = = 1"),
    (
        "c-unknown.toml",
        "micro",
        "n_layers = 1",
        "n_layers = 1\nn_layerz = 2",
    ),
    ("c-nolayers.toml", "micro", "n_layers = 1\n", ""),
    ("c-neg.toml", "micro", "n_layers = 1", "n_layers = -1"),
    ("c-float.toml", "micro", "n_layers = 1", "n_layers = 1.5"),
    (
        "c-quant.toml",
        "micro",
        "max_seq_len = 32",
        "max_seq_len = 32\nquant = \"binary\"",
    ),
    (
        "c-act.toml",
        "micro",
        "max_seq_len = 32",
        "max_seq_len = 32\nffn_act = \"tanh\"",
    ),
    (
        "c-sched.toml",
        "micro",
        "schedule = \"cosine\"",
        "schedule = \"cosin\"",
    ),
    (
        "c-device.toml",
        "micro",
        "seed = 7",
        "seed = 7\ndevice = \"tpu\"",
    ),
    (
        "c-nodata.toml",
        "micro",
        "inputs = [\"{d}/corpus.txt\"]",
        "inputs = []",
    ),
    (
        "c-missing-input.toml",
        "micro",
        "prepared = \"{d}/prepared\"\ninputs = [\"{d}/corpus.txt\"]",
        "prepared = \"{d}/p-missing\"\ninputs = [\"{d}/nope.txt\"]",
    ),
    (
        "c-tok-missing.toml",
        "micro",
        "datasets/tinystories/tokenizer.json",
        "{d}/nope.json",
    ),
    (
        "c-tok-bad.toml",
        "micro",
        "datasets/tinystories/tokenizer.json",
        "{d}/garbage.json",
    ),
    (
        "c-theta.toml",
        "micro",
        "max_seq_len = 32",
        "max_seq_len = 32\nrope_theta = -1.0",
    ),
    (
        "c-eps.toml",
        "micro",
        "max_seq_len = 32",
        "max_seq_len = 32\nnorm_eps = 0.0",
    ),
    ("c-lr-nan.toml", "micro", "lr = 3e-3", "lr = nan"),
    (
        "c-array.toml",
        "micro",
        "batch_size = 2",
        "batch_size = [2]",
    ),
    ("c-table.toml", "micro", "[train]", "train = 3\n[trainx]"),
    ("f-syntax.toml", "ft", "rank = 4", "rank = 4 4"),
    ("f-unknown.toml", "ft", "rank = 4", "rank = 4\nrenk = 2"),
    ("f-notable.toml", "ft", "[finetune]", "[fine_tune]"),
    (
        "f-target-empty.toml",
        "ft",
        "target = [\"q\", \"v\"]",
        "target = []",
    ),
    (
        "f-target-bogus.toml",
        "ft",
        "target = [\"q\", \"v\"]",
        "target = [\"q\", \"x\"]",
    ),
    (
        "f-target-dup.toml",
        "ft",
        "target = [\"q\", \"v\"]",
        "target = [\"q\", \"q\"]",
    ),
    ("f-rank0.toml", "ft", "rank = 4", "rank = 0"),
    ("f-alpha-neg.toml", "ft", "alpha = 8.0", "alpha = -8.0"),
    ("f-alpha-nan.toml", "ft", "alpha = 8.0", "alpha = nan"),
    ("f-dropout.toml", "ft", "dropout = 0.0", "dropout = 1.5"),
    (
        "f-method.toml",
        "ft",
        "method = \"lora\"",
        "method = \"qlora\"",
    ),
    ("f-steps0.toml", "ft", "steps = 1", "steps = 0"),
    ("f-batch0.toml", "ft", "batch_size = 2", "batch_size = 0"),
    ("f-seq0.toml", "ft", "seq_len = 32", "seq_len = 0"),
    ("f-seq-long.toml", "ft", "seq_len = 32", "seq_len = 4096"),
    ("f-lr-neg.toml", "ft", "lr = 1e-3", "lr = -1e-3"),
    ("f-lr-inf.toml", "ft", "lr = 1e-3", "lr = inf"),
    (
        "f-holdout0.toml",
        "ft",
        "holdout_every = 4",
        "holdout_every = 0",
    ),
    (
        "f-holdout1.toml",
        "ft",
        "holdout_every = 4",
        "holdout_every = 1",
    ),
    (
        "f-clip-neg.toml",
        "ft",
        "grad_clip = 1.0",
        "grad_clip = -1.0",
    ),
    (
        "f-wd-neg.toml",
        "ft",
        "weight_decay = 0.0",
        "weight_decay = -0.1",
    ),
    ("f-rank-str.toml", "ft", "rank = 4", "rank = \"4\""),
    (
        "f-keep0.toml",
        "ft",
        "keep_checkpoints = 1",
        "keep_checkpoints = 0",
    ),
    (
        "f-ckpt0.toml",
        "ft",
        "checkpoint_every = 100",
        "checkpoint_every = 0",
    ),
    ("f-log0.toml", "ft", "log_every = 1", "log_every = 0"),
];

/// Instruction data files: (name, contents).
fn data_files() -> Vec<(&'static str, Vec<u8>)> {
    let good = r#"{"instruction": "Say hi.", "input": "", "output": "Hi there, friend."}"#;
    let rows = |n: usize| (0..n).map(|_| good).collect::<Vec<_>>().join("\n");
    vec![
        ("d-good.jsonl", rows(8).into_bytes()),
        ("d-empty.jsonl", Vec::new()),
        ("d-blank.jsonl", b"\n\n  \n".to_vec()),
        (
            "d-badline.jsonl",
            format!("{}\n{{\"instruction\": \"x\", \"output\"\n{}", rows(2), rows(2)).into_bytes(),
        ),
        (
            "d-schema.jsonl",
            format!("{}\n{{\"foo\": \"x\", \"bar\": \"y\"}}\n", rows(2)).into_bytes(),
        ),
        (
            "d-types.jsonl",
            format!("{}\n{{\"instruction\": 3, \"output\": \"y\"}}\n", rows(2)).into_bytes(),
        ),
        ("d-nonutf8.jsonl", {
            let mut v = rows(2).into_bytes();
            v.extend_from_slice(b"\n{\"instruction\": \"\xff\xfe\", \"output\": \"y\"}\n");
            // Enough good rows after it for a held-out one when it is skipped.
            v.extend_from_slice(rows(5).as_bytes());
            v
        }),
        ("d-array-bad.json", b"[{\"instruction\": \"x\", \"output\": \"y\"}, 3]".to_vec()),
        ("d-notjson.json", b"instruction: hello".to_vec()),
        (
            "d-roles.jsonl",
            br#"{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#
                .to_vec(),
        ),
        (
            "d-noassistant.jsonl",
            br#"{"messages": [{"role": "user", "content": "hi"}]}"#.to_vec(),
        ),
        ("d-null.jsonl", b"null\n".to_vec()),
        (
            "d-deep.json",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        ),
        (
            "d-emptyout.jsonl",
            br#"{"instruction": "x", "input": "", "output": ""}"#.to_vec(),
        ),
    ]
}

/// Runs `setup` commands and builds the case table; every case runs and failures are reported
/// together.
#[test]
fn hostile_inputs_are_refused_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ds = d.display().to_string();
    let sub = |s: &str| s.replace("{d}", &ds);

    // Fixture: corpus, micro model (2 steps), its GGUF, a one-step adapter.
    let paragraph = "Once upon a time there was a cat who liked to sit in the sun. ".repeat(6);
    put(d, "corpus.txt", vec![paragraph; 40].join("\n\n"));
    put(d, "micro.toml", sub(MICRO));
    put(d, "ft.toml", FT);
    put(d, "garbage.json", "{ this is not a tokenizer");
    put(
        d,
        "text.txt",
        "Once upon a time there was a dog. ".repeat(30),
    );
    put(d, "empty.txt", "");
    put(
        d,
        "binary.txt",
        (0..=255u8).cycle().take(5000).collect::<Vec<_>>(),
    );
    put(d, "notgguf.gguf", "this is text, not a GGUF file\n");
    put(d, "empty.gguf", "");
    for (name, base, from, to) in CONFIGS {
        let base = if *base == "micro" {
            sub(MICRO)
        } else {
            FT.to_string()
        };
        let text = base.replacen(&sub(from), &sub(to), 1);
        assert_ne!(text, base, "{name}: the variant changes nothing");
        put(d, name, text);
    }
    put(d, "c-empty.toml", "");
    for (name, bytes) in data_files() {
        put(d, name, bytes);
    }
    let a = |v: &[&str]| v.iter().map(|s| sub(s)).collect::<Vec<_>>();
    ok(&a(&[
        "train",
        "--config",
        "{d}/micro.toml",
        "--out",
        "{d}/run",
    ]));
    ok(&a(&[
        "export",
        "--checkpoint",
        "{d}/run",
        "--out",
        "{d}/m.gguf",
    ]));
    ok(&a(&[
        "finetune",
        "--config",
        "{d}/ft.toml",
        "--base",
        "{d}/run",
        "--data",
        "{d}/d-good.jsonl",
        "--out",
        "{d}/ft",
    ]));
    let ck = tritium_checkpoint::resolve(&d.join("run")).unwrap();
    let cks = ck.display().to_string();
    let gguf = std::fs::read(d.join("m.gguf")).unwrap();
    put(d, "half.gguf", &gguf[..gguf.len() / 2]);
    put(d, "head.gguf", &gguf[..20]);
    let mut badver = gguf.clone();
    badver[4] = 99;
    put(d, "badver.gguf", badver);
    let mut many = gguf.clone();
    many[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
    put(d, "many.gguf", many);
    let mut kvs = gguf.clone();
    kvs[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes()); // metadata count
    put(d, "kvs.gguf", kvs);
    let mut keylen = gguf.clone();
    keylen[24..32].copy_from_slice(&u64::MAX.to_le_bytes()); // first key's length
    put(d, "keylen.gguf", keylen);
    // Damaged copies of the checkpoint, one fault each.
    let damaged = |name: &str, file: &str, f: &dyn Fn(Vec<u8>) -> Option<Vec<u8>>| {
        let to = d.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&ck).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        let p = to.join(file);
        match f(std::fs::read(&p).unwrap()) {
            Some(bytes) => std::fs::write(&p, bytes).unwrap(),
            None => std::fs::remove_file(&p).unwrap(),
        }
    };
    let text_edit = |from: &'static str, to: &'static str| {
        move |b: Vec<u8>| {
            let s = String::from_utf8(b).unwrap();
            assert!(s.contains(from), "{from}");
            Some(s.replacen(from, to, 1).into_bytes())
        }
    };
    damaged("ck-trunc-model", "model.bpk", &|b| {
        Some(b[..b.len() / 3].to_vec())
    });
    damaged("ck-zero-model", "model.bpk", &|b| Some(vec![0; b.len()]));
    damaged("ck-no-model", "model.bpk", &|_| None);
    damaged("ck-no-state", "state.json", &|_| None);
    damaged("ck-state-trunc", "state.json", &|b| {
        Some(b[..b.len() / 2].to_vec())
    });
    damaged(
        "ck-state-type",
        "state.json",
        &text_edit("\"d_model\": 256", "\"d_model\": \"256\""),
    );
    damaged(
        "ck-state-heads",
        "state.json",
        &text_edit("\"n_heads\": 2", "\"n_heads\": 3"),
    );
    damaged(
        "ck-state-vocab",
        "state.json",
        &text_edit("\"vocab_size\": 4096", "\"vocab_size\": 40960"),
    );
    damaged(
        "ck-state-huge",
        "state.json",
        &text_edit("\"d_model\": 256", "\"d_model\": 1000000000000"),
    );
    damaged("ck-no-tok", "tokenizer.json", &|_| None);
    // One id changed: the file still parses, its hash no longer matches.
    damaged(
        "ck-tok-swapped",
        "tokenizer.json",
        &text_edit("\"Ġthe\": 263", "\"Ġthe\": 264"),
    );
    damaged("ck-tok-garbage", "tokenizer.json", &|_| {
        Some(b"{ nope".to_vec())
    });
    // As an older tritium wrote it: no tokenizer.json, and a path relative to where the run was.
    damaged("ck-no-tok-rel", "tokenizer.json", &|_| None);
    let state = d.join("ck-no-tok-rel/state.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    v["provenance"]["tokenizer"] = "datasets/tinystories/tokenizer.json".into();
    std::fs::write(&state, v.to_string()).unwrap();
    std::fs::create_dir_all(d.join("pin")).unwrap();
    put(&d.join("pin"), "meta.json", "text that is not meta data");
    let parquet = std::fs::read(root().join("crates/train/testdata/docs.parquet")).unwrap();
    std::fs::write(d.join("docs.parquet"), &parquet).unwrap();
    std::fs::write(d.join("half.parquet"), &parquet[..parquet.len() / 2]).unwrap();
    put(d, "bad.jsonl.zst", "this is not zstd");
    std::fs::create_dir_all(d.join("pbad")).unwrap();
    put(
        &d.join("pbad"),
        "progress.json",
        "{\"format\": 2, \"truncated",
    );
    let ft_ad = d.join("ft/adapter.safetensors").display().to_string();
    let ad = std::fs::read(&ft_ad).unwrap();
    put(d, "ad-trunc.safetensors", &ad[..ad.len() / 2]);
    put(d, "ad-garbage.safetensors", "not safetensors at all");
    put(d, "task-bad.jsonl", "{\"query\": \"x\"}\nnot json\n");
    std::fs::create_dir_all(d.join("tasks-bad")).unwrap();
    for t in ["arc_easy", "piqa"] {
        put(
            &d.join("tasks-bad"),
            &format!("{t}.jsonl"),
            "{\"nope\": 1}\n",
        );
    }
    // Hugging Face directories with one fault each, from the transformers-written fixture.
    let hf = root().join("tests/hf/bitnet-bf16");
    let hf_config = std::fs::read_to_string(hf.join("config.json")).unwrap();
    let hf_copy = |name: &str, config: Option<String>| {
        let to = d.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for f in [
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            std::fs::copy(hf.join(f), to.join(f)).unwrap();
        }
        if let Some(c) = config {
            std::fs::write(to.join("config.json"), c).unwrap();
        }
    };
    let edit = |from: &str, to: &str| {
        assert!(hf_config.contains(from), "{from}");
        Some(hf_config.replacen(from, to, 1))
    };
    hf_copy("hf-noconfig", None);
    hf_copy(
        "hf-llama",
        edit("\"BitNetForCausalLM\"", "\"LlamaForCausalLM\""),
    );
    hf_copy("hf-gelu", edit("\"relu2\"", "\"gelu\""));
    hf_copy(
        "hf-float",
        edit("\"quantization_config\"", "\"quantization_confix\""),
    );
    hf_copy(
        "hf-shape",
        edit("\"intermediate_size\": 512", "\"intermediate_size\": 768"),
    );
    hf_copy(
        "hf-type",
        edit("\"hidden_size\": 256", "\"hidden_size\": \"256\""),
    );
    hf_copy("hf-shards", Some(hf_config.clone()));
    hf_copy("hf-trunc", Some(hf_config.clone()));
    let st = std::fs::read(d.join("hf-trunc/model.safetensors")).unwrap();
    std::fs::write(d.join("hf-trunc/model.safetensors"), &st[..st.len() / 2]).unwrap();
    hf_copy("hf-header", Some(hf_config.clone()));
    std::fs::write(
        d.join("hf-header/model.safetensors"),
        u64::MAX.to_le_bytes(),
    )
    .unwrap();
    std::fs::write(
        d.join("hf-shards/model.safetensors.index.json"),
        r#"{"weight_map": {"model.embed_tokens.weight": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    std::fs::create_dir_all(d.join("peft-rslora")).unwrap();
    let peft = root().join("tests/hf/peft-lora");
    std::fs::copy(
        peft.join("adapter_model.safetensors"),
        d.join("peft-rslora/adapter_model.safetensors"),
    )
    .unwrap();
    let peft_config = std::fs::read_to_string(peft.join("adapter_config.json")).unwrap();
    assert!(peft_config.contains("\"use_rslora\": false"));
    std::fs::write(
        d.join("peft-rslora/adapter_config.json"),
        peft_config.replace("\"use_rslora\": false", "\"use_rslora\": true"),
    )
    .unwrap();
    std::fs::create_dir_all(d.join("outdir")).unwrap();
    put(d, "existing.txt", "keep me");

    let run_ = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["run", "{d}/m.gguf", "-p", "hi", "-n", "2"];
        v.extend_from_slice(extra);
        v
    };
    // Any free port, so rows never collide; every row must be refused before serving.
    let serve = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["serve", "{d}/m.gguf", "--port", "0"];
        v.extend_from_slice(extra);
        v
    };
    // The flag under test is given once; the others keep the run short.
    let bench = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["bench", "{d}/m.gguf"];
        for (flag, value) in [("--pp", "4"), ("--tg", "2"), ("--reps", "1")] {
            if !extra.contains(&flag) {
                v.extend([flag, value]);
            }
        }
        v.extend_from_slice(extra);
        v
    };
    let evalg = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["eval", "--model", "{d}/m.gguf", "--text", "{d}/text.txt"];
        // Results of its own: two cases running at once must not write one file.
        if !extra.contains(&"--out") {
            v.extend(["--out", "{out}.json"]);
        }
        v.extend_from_slice(extra);
        v
    };
    let evalc = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["eval", "--model", "{d}/run", "--text", "{d}/text.txt"];
        if !extra.contains(&"--out") {
            v.extend(["--out", "{out}.json"]);
        }
        v.extend_from_slice(extra);
        v
    };
    let train = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["train", "--config", "{d}/micro.toml", "--out", "{out}"];
        v.extend_from_slice(extra);
        v
    };
    let traincfg = |cfg: &'static str| -> Vec<&'static str> {
        vec!["train", "--config", cfg, "--out", "{out}"]
    };
    let ft = |cfg: &'static str, data: &'static str, extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec![
            "finetune", "--config", cfg, "--base", "{d}/run", "--data", data, "--out", "{out}",
        ];
        v.extend_from_slice(extra);
        v
    };
    let ftc = |cfg: &'static str, needle: &'static str| {
        (ft(cfg, "{d}/d-good.jsonl", &[]), Refused, vec![needle])
    };
    let ftd = |data: &'static str, needles: Vec<&'static str>| {
        (ft("{d}/ft.toml", data, &[]), Refused, needles)
    };
    let export =
        |ckpt: &'static str| vec!["export", "--checkpoint", ckpt, "--out", "{d}/never.gguf"];
    let inspect = |f: &'static str| vec!["inspect", f];
    let setr =
        |kv: &'static str, needle: &'static str| (train(&["--set", kv]), Refused, vec![needle]);

    #[rustfmt::skip]
    let cases: Vec<(Vec<&str>, Want, Vec<&str>)> = vec![
        // ---- the command line itself
        (vec![], Refused, vec!["Usage"]),
        (vec!["frobnicate"], Refused, vec!["frobnicate"]),
        (vec!["run"], Refused, vec!["<MODEL>"]),
        (vec!["train", "--bogus"], Refused, vec!["--bogus"]),
        (vec!["tokenizer"], Refused, vec!["Usage"]),
        (vec!["data"], Refused, vec!["Usage"]),
        // ---- run: sampling, counts and files
        (run_(&["--temp", "nan"]), Refused, vec!["--temp"]),
        (run_(&["--temp", "-1"]), Refused, vec!["--temp"]),
        (run_(&["--temp", "inf"]), Refused, vec!["--temp"]),
        (run_(&["--top-p", "2"]), Refused, vec!["--top-p"]),
        (run_(&["--top-p", "0"]), Refused, vec!["--top-p"]),
        (run_(&["--top-p", "-0.5"]), Refused, vec!["--top-p"]),
        (run_(&["--min-p", "-1"]), Refused, vec!["--min-p"]),
        (run_(&["--min-p", "1.5"]), Refused, vec!["--min-p"]),
        (run_(&["--repeat-penalty", "-1"]), Refused, vec!["--repeat-penalty"]),
        (run_(&["--repeat-penalty", "0"]), Refused, vec!["--repeat-penalty"]),
        (run_(&["--repeat-penalty", "inf"]), Refused, vec!["--repeat-penalty"]),
        (run_(&["--repeat-last-n", "-1"]), Refused, vec!["--repeat-last-n"]),
        (run_(&["--top-k", "-3"]), Refused, vec!["--top-k"]),
        (run_(&["--top-k", "x"]), Refused, vec!["--top-k"]),
        (run_(&["--seed", "-1"]), Refused, vec!["--seed"]),
        (run_(&["--stop", ""]), Refused, vec!["--stop"]),
        (run_(&["--ctx", "0"]), Refused, vec!["--ctx"]),
        (run_(&["--ctx", "1"]), Refused, vec!["context holds 1"]),
        (run_(&["--ctx", "1000000"]), Refused, vec!["--ctx 1000000"]),
        (run_(&["-t", "1000"]), Warned, vec!["-t 1000: using"]),
        (run_(&["-t", "-2"]), Refused, vec!["--threads"]),
        (run_(&["--lora", "{d}/nope.gguf"]), Refused, vec!["nope.gguf"]),
        (run_(&["--lora", "{d}/m.gguf"]), Refused, vec!["m.gguf"]),
        (run_(&["--lora", "{d}/notgguf.gguf"]), Refused, vec!["notgguf.gguf"]),
        (run_(&["--lora-scale", "nan"]), Refused, vec!["--lora-scale"]),
        (run_(&["--lora-scale", "1"]), Refused, vec!["--lora"]),
        (run_(&["--system", "be nice"]), Refused, vec!["--chat"]),
        (vec!["run", "{d}/m.gguf", "-n", "-1", "-p", "hi"], Refused, vec!["-n"]),
        (vec!["run", "{d}/m.gguf", "-n", "99999999999999999999", "-p", "hi"], Refused, vec!["-n"]),
        (vec!["run", "{d}/nope.gguf", "-p", "hi"], Refused, vec!["nope.gguf", "No such file"]),
        (vec!["run", "{d}", "-p", "hi"], Refused, vec!["is a directory"]),
        (vec!["run", "{d}/run", "-p", "hi"], Refused, vec!["is a directory"]),
        (vec!["run", "{d}/half.gguf", "-p", "hi"], Refused, vec!["half.gguf"]),
        (vec!["run", "{d}/empty.gguf", "-p", "hi"], Refused, vec!["empty.gguf"]),
        (vec!["run", "{d}/notgguf.gguf", "-p", "hi"], Refused, vec!["notgguf.gguf"]),
        (vec!["run", "{d}/many.gguf", "-p", "hi"], Refused, vec!["many.gguf"]),
        (vec!["run", "{d}/kvs.gguf", "-p", "hi"], Refused, vec!["kvs.gguf"]),
        (vec!["run", "{d}/keylen.gguf", "-p", "hi"], Refused, vec!["keylen.gguf"]),
        (vec!["run", "{d}/badver.gguf", "-p", "hi"], Refused, vec!["badver.gguf", "version"]),
        (vec!["run", "{d}/m.gguf", "--chat", "-p", "hi"], Refused, vec!["--chat"]),
        // ---- bench
        (bench(&["--pp", "0"]), Refused, vec!["--pp"]),
        (bench(&["--tg", "0"]), Refused, vec!["--tg"]),
        (bench(&["--reps", "0"]), Refused, vec!["--reps"]),
        (bench(&["--pp", "-5"]), Refused, vec!["--pp"]),
        (bench(&["--pp", "100000"]), Refused, vec!["context"]),
        (bench(&["-t", "1000"]), Warned, vec!["-t 1000: using"]),
        (vec!["bench", "{d}/nope.gguf"], Refused, vec!["nope.gguf"]),
        (vec!["bench", "{d}/head.gguf"], Refused, vec!["head.gguf"]),
        (vec!["bench", "{d}/ft/adapter.gguf"], Refused, vec!["adapter.gguf"]),
        // ---- serve and bench-serve
        (serve(&["--parallel", "0"]), Refused, vec!["--parallel"]),
        (serve(&["--queue", "-1"]), Refused, vec!["--queue"]),
        (serve(&["--ctx", "100000"]), Refused, vec!["--ctx"]),
        (serve(&["--max-body", "10"]), Refused, vec!["--max-body"]),
        (serve(&["--rate-limit", "0"]), Refused, vec!["--rate-limit"]),
        (serve(&["--timeout", "0"]), Refused, vec!["--timeout"]),
        (serve(&["--lora", "bad"]), Refused, vec!["--lora bad", "NAME=FILE"]),
        (serve(&["--lora", "x={d}/nope.gguf"]), Refused, vec!["nope.gguf"]),
        (serve(&["--lora", "x={d}/m.gguf"]), Refused, vec!["m.gguf", "adapter"]),
        (serve(&["--lora", "m={d}/ft/adapter.gguf"]), Refused, vec!["`m` is taken"]),
        (serve(&["--api-key", ""]), Refused, vec!["--api-key"]),
        (serve(&["--api-key-file", "{d}/nope.txt"]), Refused, vec!["--api-key-file", "nope.txt"]),
        (serve(&["--host", "999.1.1.1"]), Refused, vec!["--host"]),
        (serve(&["--kv-cache", "q4_0"]), Refused, vec!["--kv-cache", "f32 or f16"]),
        (vec!["serve", "{d}/nope.gguf", "--port", "0"], Refused, vec!["nope.gguf"]),
        (vec!["serve", "{d}/head.gguf", "--port", "0"], Refused, vec!["head.gguf"]),
        (vec!["serve", "{d}/notgguf.gguf", "--port", "0"], Refused, vec!["notgguf.gguf"]),
        (vec!["serve", "{d}/ft/adapter.gguf", "--port", "0"], Refused, vec!["adapter.gguf"]),
        (vec!["bench-serve", "--streams", "0"], Refused, vec!["--streams"]),
        (vec!["bench-serve", "--tokens", "0"], Refused, vec!["--tokens"]),
        (vec!["bench-serve", "--url", "http://127.0.0.1:1", "--streams", "1"], Refused, vec!["127.0.0.1:1"]),
        // ---- inspect
        (inspect("{d}/nope.gguf"), Refused, vec!["nope.gguf"]),
        (inspect("{d}/empty.gguf"), Refused, vec!["empty.gguf"]),
        (inspect("{d}/head.gguf"), Refused, vec!["head.gguf"]),
        (inspect("{d}/half.gguf"), Refused, vec!["half.gguf"]),
        (inspect("{d}/notgguf.gguf"), Refused, vec!["notgguf.gguf"]),
        (inspect("{d}/many.gguf"), Refused, vec!["many.gguf"]),
        (inspect("{d}/kvs.gguf"), Refused, vec!["kvs.gguf"]),
        (inspect("{d}/keylen.gguf"), Refused, vec!["keylen.gguf"]),
        (inspect("{d}/badver.gguf"), Refused, vec!["badver.gguf"]),
        (inspect("{d}"), Refused, vec!["is a directory"]),
        (vec!["inspect", "{d}/half.gguf", "--json"], Refused, vec!["half.gguf"]),
        // ---- info and bench-train
        (vec!["info", "--config", "{d}/nope.toml"], Refused, vec!["nope.toml"]),
        (vec!["info", "--config", "{d}/c-syntax.toml"], Refused, vec!["c-syntax.toml", "line"]),
        (vec!["info", "--config", "{d}/c-dmodel-str.toml"], Refused, vec!["d_model"]),
        (vec!["info", "--config", "{d}/micro.toml", "--batch", "0"], Refused, vec!["--batch"]),
        (vec!["info", "--config", "{d}/micro.toml", "--seq", "0"], Refused, vec!["--seq"]),
        (vec!["info", "--config", "{d}/micro.toml", "--seq", "64"], Refused, vec!["max_seq_len"]),
        (vec!["info", "--config", "{d}"], Refused, vec!["Is a directory"]),
        (vec!["bench-train", "--config", "{d}/micro.toml", "--batch", "0"], Refused, vec!["--batch"]),
        (vec!["bench-train", "--config", "{d}/micro.toml", "--seq", "0"], Refused, vec!["--seq"]),
        (vec!["bench-train", "--config", "{d}/micro.toml", "--seq", "64"], Refused, vec!["max_seq_len"]),
        (vec!["bench-train", "--config", "{d}/micro.toml", "--steps", "0"], Refused, vec!["--steps"]),
        (vec!["bench-train", "--config", "{d}/micro.toml", "--windows", "0"], Refused, vec!["--windows"]),
        (vec!["bench-train", "--config", "{d}/micro.toml", "--device", "tpu"], Refused, vec!["--device", "tpu"]),
        (vec!["bench-train", "--config", "{d}/micro.toml", "--batch", "100000000"], Refused, vec!["--ignore-memory"]),
        (vec!["bench-train", "--config", "{d}/c-neg.toml"], Refused, vec!["n_layers"]),
        // ---- train: configs
        (traincfg("{d}/nope.toml"), Refused, vec!["nope.toml"]),
        (traincfg("{d}"), Refused, vec!["Is a directory"]),
        (traincfg("{d}/c-dmodel-str.toml"), Refused, vec!["d_model", "c-dmodel-str.toml"]),
        (traincfg("{d}/c-syntax.toml"), Refused, vec!["c-syntax.toml", "line 4"]),
        (traincfg("{d}/c-unknown.toml"), Refused, vec!["n_layerz"]),
        (traincfg("{d}/c-nolayers.toml"), Refused, vec!["n_layers"]),
        (traincfg("{d}/c-neg.toml"), Refused, vec!["n_layers"]),
        (traincfg("{d}/c-float.toml"), Refused, vec!["n_layers"]),
        (traincfg("{d}/c-quant.toml"), Refused, vec!["quant", "binary"]),
        (traincfg("{d}/c-act.toml"), Refused, vec!["ffn_act", "tanh"]),
        (traincfg("{d}/c-sched.toml"), Refused, vec!["schedule", "cosin"]),
        (traincfg("{d}/c-device.toml"), Refused, vec!["device", "tpu"]),
        (traincfg("{d}/c-nodata.toml").into_iter().chain(["--set", "prepared=\"{d}/p-none\""]).collect(), Refused, vec!["inputs"]),
        (traincfg("{d}/c-missing-input.toml"), Refused, vec!["nope.txt"]),
        (traincfg("{d}/c-tok-missing.toml"), Refused, vec!["nope.json"]),
        (traincfg("{d}/c-tok-bad.toml"), Refused, vec!["garbage.json"]),
        (traincfg("{d}/c-theta.toml"), Refused, vec!["rope_theta"]),
        (traincfg("{d}/c-eps.toml"), Refused, vec!["norm_eps"]),
        (traincfg("{d}/c-lr-nan.toml"), Refused, vec!["lr"]),
        (traincfg("{d}/c-array.toml"), Refused, vec!["batch_size"]),
        (traincfg("{d}/c-table.toml"), Refused, vec!["c-table.toml"]),
        (traincfg("{d}/c-empty.toml"), Refused, vec!["c-empty.toml", "model"]),
        (traincfg("{d}/micro.toml").into_iter().chain(["--device", "tpu"]).collect(), Refused, vec!["--device"]),
        // ---- train: --set
        (train(&["--set", "max_steps=abc"]), Refused, vec!["--set max_steps"]),
        (train(&["--set", "max_steps"]), Refused, vec!["--set max_steps", "key=value"]),
        (train(&["--set", "=3"]), Refused, vec!["--set"]),
        (train(&["--set", "max_stepz=3"]), Refused, vec!["max_stepz"]),
        (train(&["--set", "model.nope=3"]), Refused, vec!["model.nope"]),
        setr("d_model=99", "n_heads"),
        setr("d_model=0", "d_model"),
        setr("n_layers=0", "n_layers"),
        setr("n_heads=0", "n_heads"),
        setr("n_kv_heads=3", "n_kv_heads"),
        setr("d_ff=0", "d_ff"),
        setr("vocab_size=0", "vocab_size"),
        setr("vocab_size=100", "vocab_size"),
        setr("vocab_size=4000000000", "--ignore-memory"),
        setr("max_seq_len=0", "max_seq_len"),
        setr("seq_len=0", "seq_len"),
        setr("seq_len=64", "max_seq_len"),
        setr("batch_size=0", "batch_size"),
        setr("grad_accum=0", "grad_accum"),
        setr("max_steps=0", "max_steps"),
        setr("lr=-1", "lr"),
        setr("lr=inf", "lr"),
        setr("min_lr=-1", "min_lr"),
        setr("min_lr=1", "min_lr"),
        setr("weight_decay=-0.1", "weight_decay"),
        setr("grad_clip=-1", "grad_clip"),
        setr("checkpoint_every=0", "checkpoint_every"),
        setr("keep_checkpoints=0", "keep_checkpoints"),
        setr("log_every=0", "log_every"),
        setr("eval_every=0", "eval_every"),
        setr("val_every=0", "val_every"),
        setr("val_every=1", "val_every"),
        setr("warmup_steps=-1", "warmup_steps"),
        setr("seed=-1", "seed"),
        setr("quant_warmup_steps=-1", "quant_warmup_steps"),
        setr("schedule=\"x\"", "schedule"),
        setr("device=\"tpu\"", "device"),
        setr("n_layers=\"2\"", "n_layers"),
        setr("sample_tokens=-1", "sample_tokens"),
        // ---- train: run directories
        (vec!["train", "--resume", "{d}/nope"], Refused, vec!["nope"]),
        (vec!["train", "--resume", "{d}/existing.txt"], Refused, vec!["existing.txt"]),
        (vec!["train", "--resume", "{d}/outdir"], Refused, vec!["outdir", "not a training run"]),
        (vec!["train", "--config", "{d}/micro.toml", "--out", "{d}/run"], Refused, vec!["already holds checkpoints", "--resume"]),
        (vec!["train", "--config", "{d}/micro.toml", "--out", "{d}/existing.txt"], Refused, vec!["existing.txt", "not a directory"]),
        (vec!["train", "--resume", "{d}/run", "--set", "d_model=512"], Refused, vec!["another model"]),
        (vec!["train", "--config", "{d}/micro.toml", "--out", "{d}/dp1", "--devices", "flex,flex"], Refused, vec!["all-reduce", "flex has none"]),
        (vec!["train", "--config", "{d}/micro.toml", "--out", "{d}/dp2", "--devices", "cuda:0,cuda:0"], Refused, vec!["cuda"]),
        (vec!["train", "--config", "{d}/micro.toml", "--out", "{d}/dp3", "--devices", "cuda:0,cuda:1"], Refused, vec!["cuda", "--features cuda"]),
        (vec!["train", "--config", "{d}/micro.toml", "--out", "{d}/dp4", "--devices", "cuda:0,gpu"], Refused, vec!["--devices", "gpu"]),
        (vec!["train", "--config", "{d}/micro.toml", "--out", "{d}/dp5", "--device", "cuda:x"], Refused, vec!["--device", "cuda:x"]),
        // ---- tokenizer train and data prepare
        (vec!["tokenizer", "train", "--input", "{d}/nope.txt", "--vocab-size", "300", "--out", "{d}/tok.json"], Refused, vec!["nope.txt"]),
        (vec!["tokenizer", "train", "--input", "{d}/text.txt", "--vocab-size", "0", "--out", "{d}/tok.json"], Refused, vec!["--vocab-size"]),
        (vec!["tokenizer", "train", "--input", "{d}/text.txt", "--vocab-size", "10", "--out", "{d}/tok.json"], Refused, vec!["--vocab-size"]),
        (vec!["tokenizer", "train", "--input", "{d}/text.txt", "--vocab-size", "300", "--out", "{d}/text.txt"], Refused, vec!["text.txt", "is an input"]),
        (vec!["tokenizer", "train", "--input", "{d}/text.txt", "--vocab-size", "300", "--out", "{d}/outdir"], Refused, vec!["outdir"]),
        (vec!["tokenizer", "train", "--input", "{d}/empty.txt", "--vocab-size", "300", "--out", "{d}/tok.json"], Refused, vec!["empty.txt"]),
        (vec!["data", "prepare", "--tokenizer", "{d}/nope.json", "--input", "{d}/text.txt", "--out", "{d}/p1"], Refused, vec!["nope.json"]),
        (vec!["data", "prepare", "--tokenizer", "{d}/garbage.json", "--input", "{d}/text.txt", "--out", "{d}/p2"], Refused, vec!["garbage.json"]),
        (vec!["data", "prepare", "--tokenizer", "datasets/tinystories/tokenizer.json", "--input", "{d}/nope.txt", "--out", "{d}/p3"], Refused, vec!["nope.txt"]),
        (vec!["data", "prepare", "--tokenizer", "datasets/tinystories/tokenizer.json", "--input", "{d}/text.txt", "--out", "{d}/p4", "--val-every", "0"], Refused, vec!["--val-every"]),
        (vec!["data", "prepare", "--tokenizer", "datasets/tinystories/tokenizer.json", "--input", "{d}/text.txt", "--out", "{d}/existing.txt"], Refused, vec!["existing.txt", "not a directory"]),
        (vec!["data", "prepare", "--tokenizer", "datasets/tinystories/tokenizer.json", "--input", "{d}/empty.txt", "--out", "{d}/p5"], Refused, vec!["empty.txt"]),
        (vec!["data", "prepare", "--tokenizer", "datasets/tinystories/tokenizer.json", "--input", "{d}/pin/meta.json", "--out", "{d}/pin"], Refused, vec!["meta.json", "is an input"]),
        (vec!["data", "prepare", "--tokenizer", "datasets/tinystories/tokenizer.json", "--input", "{d}/text.txt", "--out", "{d}"], Refused, vec!["text.txt", "is an input", "output directory"]),
        (vec!["data", "prepare", "--tokenizer", "datasets/tinystories/tokenizer.json", "--input", "{d}/nomatch/*.parquet", "--out", "{d}/p6"], Refused, vec!["nomatch/*.parquet", "matches no files"]),
        (vec!["data", "prepare", "--tokenizer", "datasets/tinystories/tokenizer.json", "--input", "{d}/docs.parquet", "--out", "{d}/p7"], Refused, vec!["docs.parquet", "no column \"text\"", "--field"]),
        (vec!["data", "prepare", "--tokenizer", "datasets/tinystories/tokenizer.json", "--input", "{d}/half.parquet", "--out", "{d}/p8"], Refused, vec!["half.parquet"]),
        (vec!["data", "prepare", "--tokenizer", "datasets/tinystories/tokenizer.json", "--input", "{d}/bad.jsonl.zst", "--out", "{d}/p9"], Refused, vec!["bad.jsonl.zst", "decompression"]),
        (vec!["data", "prepare", "--tokenizer", "datasets/tinystories/tokenizer.json", "--input", "{d}/text.txt", "--out", "{d}/pbad"], Refused, vec!["pbad/progress.json", "start over"]),
        (vec!["data", "prepare", "--tokenizer", "datasets/tinystories/tokenizer.json", "--input", "{d}/text.txt", "--out", "{d}/p10", "--shard-tokens", "0"], Refused, vec!["--shard-tokens"]),
        // A shard is built in memory: a huge one was an allocation abort, not an error.
        (vec!["data", "prepare", "--tokenizer", "datasets/tinystories/tokenizer.json", "--input", "{d}/text.txt", "--out", "{d}/p11", "--shard-tokens", "4611686018427387904"], Refused, vec!["--shard-tokens", "2147483648"]),
        // ---- export
        (export("{d}/nope"), Refused, vec!["nope"]),
        (export("{d}/outdir"), Refused, vec!["outdir"]),
        (export("{d}/ck-trunc-model"), Refused, vec!["model.bpk"]),
        (export("{d}/ck-zero-model"), Refused, vec!["model.bpk"]),
        (export("{d}/ck-no-model"), Refused, vec!["model.bpk"]),
        (export("{d}/ck-no-state"), Refused, vec!["state.json"]),
        (export("{d}/ck-state-trunc"), Refused, vec!["state.json", "line"]),
        (export("{d}/ck-state-type"), Refused, vec!["state.json", "d_model"]),
        (export("{d}/ck-state-heads"), Refused, vec!["state.json", "n_heads"]),
        (export("{d}/ck-state-vocab"), Refused, vec!["state.json"]),
        (export("{d}/ck-state-huge"), Refused, vec!["state.json"]),
        // The absolute path state.json records, with the hash it records: the same tokenizer.
        (export("{d}/ck-no-tok"), Warned, vec![]),
        (export("{d}/ck-no-tok-rel"), Refused, vec!["ck-no-tok-rel", "relative path"]),
        (export("{d}/ck-tok-swapped"), Refused, vec!["tokenizer.json", "SHA-256"]),
        (export("{d}/ck-tok-garbage"), Refused, vec!["tokenizer.json"]),
        (vec!["export", "--checkpoint", "{d}/run", "--out", "{ck}/model.bpk"], Refused, vec!["model.bpk", "is an input"]),
        (vec!["export", "--checkpoint", "{d}/run", "--out", "{ck}/tokenizer.json"], Refused, vec!["tokenizer.json", "is an input"]),
        (vec!["export", "--checkpoint", "{d}/run", "--out", "{d}/outdir"], Refused, vec!["outdir"]),
        (vec!["export", "--checkpoint", "{d}/run", "--out", "{d}/nodir/x.gguf"], Refused, vec!["nodir"]),
        (vec!["export", "--checkpoint", "{d}/run", "--out", "/dev/null"], Refused, vec!["/dev/null"]),
        (vec!["export", "--checkpoint", "{d}/run", "--out", "{d}/x.gguf", "--type", "q4_0"], Refused, vec!["--type", "q4_0"]),
        (vec!["export", "--checkpoint", "{d}/run", "--out", "{d}/x.gguf", "--scale", "huge"], Refused, vec!["--scale"]),
        (vec!["export", "--checkpoint", "{d}/run", "--out", "{d}/x.gguf", "--embd", "q2"], Refused, vec!["--embd"]),
        (vec!["export", "--checkpoint", "{d}/run", "--out", "{d}/x.gguf", "--device", "tpu"], Refused, vec!["--device"]),
        (vec!["export", "--out", "{d}/x.gguf"], Refused, vec!["--checkpoint"]),
        (vec!["export", "--checkpoint", "{d}/run", "--lora", "{ad}", "--out", "{d}/x.gguf"], Refused, vec!["--lora"]),
        (vec!["export", "--lora", "{d}/nope.safetensors", "--out", "{d}/x.gguf"], Refused, vec!["nope.safetensors"]),
        (vec!["export", "--lora", "{d}/ad-trunc.safetensors", "--out", "{d}/x.gguf"], Refused, vec!["ad-trunc.safetensors"]),
        (vec!["export", "--lora", "{d}/ad-garbage.safetensors", "--out", "{d}/x.gguf"], Refused, vec!["ad-garbage.safetensors"]),
        (vec!["export", "--lora", "{ad}", "--base", "{d}/notgguf.gguf", "--out", "{d}/x.gguf"], Refused, vec!["notgguf.gguf"]),
        (vec!["export", "--lora", "{ad}", "--out", "{ad}"], Refused, vec!["adapter.safetensors", "is an input"]),
        // ---- import
        (vec!["import", "--from", "{d}/nope", "--out", "{out}"], Refused, vec!["nope"]),
        (vec!["import", "--from", "{d}/hf-noconfig", "--out", "{out}"], Refused, vec!["hf-noconfig/config.json"]),
        (vec!["import", "--from", "{d}/hf-llama", "--out", "{out}"], Refused, vec!["config.json", "LlamaForCausalLM"]),
        (vec!["import", "--from", "{d}/hf-gelu", "--out", "{out}"], Refused, vec!["config.json", "hidden_act"]),
        (vec!["import", "--from", "{d}/hf-float", "--out", "{out}"], Refused, vec!["config.json", "quantization_config"]),
        (vec!["import", "--from", "{d}/hf-shape", "--out", "{out}"], Refused, vec!["tensor model.layers.0.mlp.ffn_sub_norm.weight", "shape"]),
        (vec!["import", "--from", "{d}/hf-type", "--out", "{out}"], Refused, vec!["config.json", "hidden_size"]),
        (vec!["import", "--from", "{d}/hf-shards", "--out", "{out}"], Refused, vec!["model-00002-of-00002.safetensors"]),
        (vec!["import", "--from", "{d}/hf-trunc", "--out", "{out}"], Refused, vec!["hf-trunc/model.safetensors", "not a safetensors file"]),
        (vec!["import", "--from", "{d}/hf-header", "--out", "{out}"], Refused, vec!["hf-header/model.safetensors", "header"]),
        (vec!["import", "--from", "tests/hf/bitnet-bf16", "--out", "{d}/run"], Refused, vec!["run", "already holds checkpoints"]),
        (vec!["import", "--from", "{d}/notgguf.gguf", "--out", "{out}"], Refused, vec!["notgguf.gguf", "neither a directory nor a GGUF file"]),
        (vec!["import", "--from", "{d}/half.gguf", "--out", "{out}"], Refused, vec!["half.gguf"]),
        (vec!["import", "--from", "{d}/ft/adapter.gguf", "--out", "{out}"], Refused, vec!["adapter.gguf"]),
        (vec!["import", "--from", "{d}/m.gguf", "--out", "{d}/run"], Refused, vec!["already holds checkpoints"]),
        (vec!["export", "--checkpoint", "{d}/run", "--format", "onnx", "--out", "{d}/x"], Refused, vec!["--format", "onnx"]),
        (vec!["export", "--checkpoint", "{d}/run", "--format", "safetensors", "--out", "{d}/outdir"], Refused, vec!["outdir", "exists"]),
        (vec!["export", "--lora", "{d}/peft-rslora", "--base", "{d}/m.gguf", "--out", "{d}/x.gguf"], Refused, vec!["adapter_config.json", "use_rslora"]),
        (vec!["export", "--lora", "{d}/outdir", "--format", "safetensors", "--out", "{d}/peft-x"], Refused, vec!["outdir/adapter_config.json"]),
        // ---- eval
        (vec!["eval", "--model", "{d}/nope.gguf", "--text", "{d}/text.txt"], Refused, vec!["nope.gguf"]),
        (vec!["eval", "--model", "{d}/half.gguf", "--text", "{d}/text.txt"], Refused, vec!["half.gguf"]),
        (vec!["eval", "--model", "{d}/ck-tok-swapped", "--text", "{d}/text.txt"], Refused, vec!["tokenizer.json", "SHA-256"]),
        (vec!["eval", "--model", "{d}/ck-no-tok-rel", "--text", "{d}/text.txt"], Refused, vec!["tokenizer.json", "relative path"]),
        (vec!["eval", "--model", "{d}/ck-state-type", "--text", "{d}/text.txt"], Refused, vec!["state.json"]),
        (vec!["eval", "--model", "{d}/m.gguf"], Refused, vec!["--text", "--tasks"]),
        (evalg(&["--tasks", ""]), Refused, vec!["--tasks"]),
        (evalg(&["--tasks", "arc_easy,nope"]), Refused, vec!["nope"]),
        (evalg(&["--ctx", "0"]), Refused, vec!["--ctx"]),
        (evalg(&["--ctx", "1"]), Refused, vec!["--ctx"]),
        (evalg(&["--stride", "0"]), Refused, vec!["--stride"]),
        (evalg(&["--stride", "1000"]), Refused, vec!["--stride"]),
        (evalg(&["--ctx", "100000"]), Warned, vec!["--ctx 100000"]),
        (evalg(&["--limit", "0"]), Refused, vec!["--limit"]),
        (evalg(&["-t", "1000"]), Warned, vec!["-t 1000: using"]),
        (evalg(&["--out", "{d}/m.gguf"]), Refused, vec!["m.gguf", "is an input"]),
        (evalg(&["--out", "{d}/text.txt"]), Refused, vec!["text.txt", "is an input"]),
        (evalg(&["--out", "{d}/outdir"]), Refused, vec!["outdir"]),
        (evalc(&["--out", "{ck}/model.bpk"]), Refused, vec!["model.bpk", "is an input"]),
        (evalc(&["--device", "tpu"]), Refused, vec!["--device"]),
        (vec!["eval", "--model", "{d}/m.gguf", "--text", "{d}/nope.txt"], Refused, vec!["nope.txt"]),
        (vec!["eval", "--model", "{d}/m.gguf", "--text", "{d}/empty.txt"], Refused, vec!["empty.txt"]),
        (vec!["eval", "--model", "{d}/m.gguf", "--text", "{d}/outdir"], Refused, vec!["outdir"]),
        (vec!["eval", "--model", "{d}/m.gguf", "--tasks", "arc_easy", "--task-dir", "{d}/nope"], Refused, vec!["nope"]),
        (vec!["eval", "--model", "{d}/m.gguf", "--tasks", "arc_easy", "--task-dir", "{d}/tasks-bad"], Refused, vec!["arc_easy.jsonl:1:"]),
        // ---- finetune: configs
        ftc("{d}/nope.toml", "nope.toml"),
        ftc("{d}/f-syntax.toml", "line"),
        ftc("{d}/f-unknown.toml", "finetune.renk"),
        ftc("{d}/f-notable.toml", "finetune"),
        ftc("{d}/f-target-empty.toml", "target"),
        ftc("{d}/f-target-bogus.toml", "finetune.target"),
        ftc("{d}/f-target-dup.toml", "target names q twice"),
        ftc("{d}/f-rank0.toml", "rank"),
        ftc("{d}/f-alpha-neg.toml", "alpha"),
        ftc("{d}/f-alpha-nan.toml", "alpha"),
        ftc("{d}/f-dropout.toml", "dropout"),
        ftc("{d}/f-method.toml", "finetune.method"),
        ftc("{d}/f-steps0.toml", "steps"),
        ftc("{d}/f-batch0.toml", "batch_size"),
        ftc("{d}/f-seq0.toml", "seq_len"),
        ftc("{d}/f-seq-long.toml", "max_seq_len"),
        ftc("{d}/f-lr-neg.toml", "lr"),
        ftc("{d}/f-lr-inf.toml", "lr"),
        ftc("{d}/f-holdout0.toml", "holdout_every"),
        ftc("{d}/f-holdout1.toml", "holdout_every"),
        ftc("{d}/f-clip-neg.toml", "grad_clip"),
        ftc("{d}/f-wd-neg.toml", "weight_decay"),
        ftc("{d}/f-rank-str.toml", "finetune.rank"),
        ftc("{d}/f-keep0.toml", "keep_checkpoints"),
        // 0 is meaningful here: a checkpoint only at the end.
        (ft("{d}/f-ckpt0.toml", "{d}/d-good.jsonl", &[]), Warned, vec![]),
        ftc("{d}/f-log0.toml", "log_every"),
        // ---- finetune: data
        ftd("{d}/nope.jsonl", vec!["nope.jsonl"]),
        ftd("{d}/d-empty.jsonl", vec!["d-empty.jsonl"]),
        ftd("{d}/d-blank.jsonl", vec!["d-blank.jsonl"]),
        ftd("{d}/d-badline.jsonl", vec!["d-badline.jsonl:3:"]),
        ftd("{d}/d-schema.jsonl", vec!["d-schema.jsonl:3:"]),
        ftd("{d}/d-types.jsonl", vec!["d-types.jsonl:3:"]),
        ftd("{d}/d-nonutf8.jsonl", vec!["d-nonutf8.jsonl:3:"]),
        ftd("{d}/d-array-bad.json", vec!["d-array-bad.json"]),
        ftd("{d}/d-notjson.json", vec!["d-notjson.json"]),
        ftd("{d}/d-roles.jsonl", vec!["d-roles.jsonl", "wizard"]),
        ftd("{d}/d-noassistant.jsonl", vec!["d-noassistant.jsonl"]),
        ftd("{d}/d-null.jsonl", vec!["d-null.jsonl:1:"]),
        ftd("{d}/d-deep.json", vec!["d-deep.json"]),
        ftd("{d}/d-emptyout.jsonl", vec!["d-emptyout.jsonl"]),
        ftd("{d}/outdir", vec!["outdir"]),
        (ft("{d}/ft.toml", "{d}/d-badline.jsonl", &["--skip-invalid"]), Warned, vec!["1 skipped"]),
        (ft("{d}/ft.toml", "{d}/d-empty.jsonl", &["--skip-invalid"]), Refused, vec!["d-empty.jsonl"]),
        (ft("{d}/ft.toml", "{d}/d-nonutf8.jsonl", &["--skip-invalid"]), Warned, vec!["1 skipped"]),
        (ft("{d}/ft.toml", "{d}/d-good.jsonl", &["--eval-data", "{d}/nope.jsonl"]), Refused, vec!["nope.jsonl"]),
        (ft("{d}/ft.toml", "{d}/d-good.jsonl", &["--device", "tpu"]), Refused, vec!["--device"]),
        (vec!["finetune", "--config", "{d}/ft.toml", "--base", "{d}/nope", "--data", "{d}/d-good.jsonl", "--out", "{out}"], Refused, vec!["nope"]),
        (vec!["finetune", "--config", "{d}/ft.toml", "--base", "{d}/m.gguf", "--data", "{d}/d-good.jsonl", "--out", "{out}"], Refused, vec!["m.gguf"]),
        (vec!["finetune", "--config", "{d}/ft.toml", "--base", "{d}/ck-tok-swapped", "--data", "{d}/d-good.jsonl", "--out", "{out}"], Refused, vec!["tokenizer.json", "SHA-256"]),
        (vec!["finetune", "--config", "{d}/ft.toml", "--base", "{d}/ck-trunc-model", "--data", "{d}/d-good.jsonl", "--out", "{out}"], Refused, vec!["model.bpk"]),
        (vec!["finetune", "--config", "{d}/ft.toml", "--base", "{d}/run", "--data", "{d}/d-good.jsonl", "--out", "{d}/existing.txt"], Refused, vec!["existing.txt"]),
        (vec!["finetune", "--config", "{d}/ft.toml", "--base", "{d}/run", "--data", "{d}/d-good.jsonl", "--out", "{d}/ft"], Refused, vec!["--resume"]),
        (vec!["finetune", "--config", "{d}/ft.toml", "--base", "{d}/run", "--data", "{d}/d-good.jsonl", "--out", "{d}/run"], Refused, vec!["run"]),
        // An output directory holding the base or the data: its tokenizer and checkpoints would
        // be written among them.
        (vec!["finetune", "--config", "{d}/ft.toml", "--base", "{d}/run", "--data", "{d}/d-good.jsonl", "--out", "{d}"], Refused, vec!["input of this command"]),
        (vec!["finetune", "--resume", "{d}/nope"], Refused, vec!["nope"]),
        (vec!["finetune", "--resume", "{d}/run"], Refused, vec!["run", "not a fine-tuning run"]),
    ];

    // `{out}`: a run directory of the case's own, so that one case's leftovers cannot decide another.
    let cases: Vec<(Vec<String>, Want, Vec<String>, PathBuf)> = cases
        .into_iter()
        .enumerate()
        .map(|(i, (args, want, needles))| {
            let out = d.join(format!("out/{i}"));
            let f = |s: &str| {
                sub(s)
                    .replace("{ck}", &cks)
                    .replace("{ad}", &ft_ad)
                    .replace("{out}", &out.display().to_string())
            };
            let args = args.iter().map(|s| f(s)).collect();
            (args, want, needles.iter().map(|s| f(s)).collect(), out)
        })
        .collect();
    std::fs::create_dir_all(d.join("out")).unwrap();
    assert!(cases.len() >= 150, "{} cases", cases.len());

    let next = AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((args, want, needles, out)) = cases.get(i) else {
                        break;
                    };
                    let o = run(args, Duration::from_secs(120));
                    let good = !o.timed_out
                        && o.code.is_some()
                        && o.code != Some(101)
                        && !o.stderr.contains("panicked")
                        && (o.code == Some(0)) == (*want == Warned)
                        && needles.iter().all(|n| {
                            o.stderr.contains(n.as_str())
                                || (*want == Warned && o.stdout.contains(n.as_str()))
                        })
                        // A refused run leaves no checkpoint behind.
                        && (*want == Warned || !out.join("checkpoints").exists());
                    if !good {
                        failures.lock().unwrap().push(format!(
                            "{args:?}\n  want {want:?} with {needles:?}\n  got exit {:?}{}: {}",
                            o.code,
                            if o.timed_out { " (timed out)" } else { "" },
                            o.stderr.trim_end()
                        ));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Nothing the refusals touched was changed.
    assert_eq!(std::fs::read(d.join("m.gguf")).unwrap(), gguf);
    assert_eq!(
        std::fs::read_to_string(d.join("existing.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("text.txt")).unwrap(),
        "Once upon a time there was a dog. ".repeat(30)
    );
}
