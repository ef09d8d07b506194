//! Exported GGUF files against independent readers: tritium's own reader (every tensor, every
//! format), and the PyPI `gguf` package (`tests/interop/gguf_oracle.py`), which must dequantize
//! our TQ tensors to the checkpoint's trits × scale and re-quantize them to the same bytes.
//! These tests need `python3 -m pip install gguf==0.19.0` (or PYTHON=/path/to/python).

use std::path::{Path, PathBuf};
use std::process::Command;

use tritium_checkpoint::{Origin, save_initial};
use tritium_export::{EmbdType, ExportOptions, ScaleMode, WeightType, export, ternarize};
use tritium_gguf::names::{self, BlockNorm, Projection, arch};
use tritium_gguf::{GgmlType, Gguf};
use tritium_model::{Backend, ModelConfig, Transformer};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn oracle(args: &[&str]) -> String {
    let script = root().join("tests/interop/gguf_oracle.py");
    let probe = Command::new(python())
        .args(["-c", "import gguf, numpy"])
        .output();
    if !probe.map(|o| o.status.success()).unwrap_or(false) {
        panic!(
            "these tests read our files with the PyPI gguf package: run `python3 -m pip install gguf==0.19.0` (or set PYTHON)"
        );
    }
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gguf oracle failed:\n{text}");
    text
}

/// A one-block model with GGUF-friendly shapes (multiples of 256), saved as a checkpoint with
/// the bundled tokenizer. `overrides` set `[model]` keys (`d_model=128`).
fn checkpoint(dir: &Path, overrides: &[&str]) -> (PathBuf, Transformer) {
    let mut cfg = ModelConfig::from_toml_file(&root().join("configs/tiny.toml")).unwrap();
    (cfg.n_layers, cfg.d_ff, cfg.n_kv_heads) = (1, 512, Some(2));
    for o in overrides {
        let (k, v) = o.split_once('=').unwrap();
        let v: usize = v.parse().unwrap();
        match k {
            "d_model" => cfg.d_model = v,
            "n_heads" => cfg.n_heads = v,
            "n_kv_heads" => cfg.n_kv_heads = Some(v),
            _ => panic!("no override for {k}"),
        }
    }
    cfg.validate().unwrap();
    let dev = Backend::Flex.device().unwrap();
    dev.seed(3);
    let model = Transformer::new(&cfg, &dev);
    let tokenizer = root().join("datasets/tinystories/tokenizer.json");
    let path = save_initial(dir, &model, &cfg, &tokenizer, Origin::Train).unwrap();
    (path, model)
}

fn f32_file(path: &Path, v: &[f32]) {
    std::fs::write(
        path,
        v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
}

/// What the oracle should find: trits and scales of each projection, raw values of the rest.
fn dump_expectations(model: &Transformer, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut scales = serde_json::Map::new();
    for (n, b) in model.blocks.iter().enumerate() {
        for (p, layer) in Projection::ALL.into_iter().zip(b.projections()) {
            let (q, s) = ternarize(layer);
            let name = p.weight(n);
            std::fs::write(
                dir.join(format!("{name}.trits")),
                q.iter().map(|&v| v as u8).collect::<Vec<u8>>(),
            )
            .unwrap();
            scales.insert(name, serde_json::json!(s));
        }
        for (which, g) in BlockNorm::ALL.into_iter().zip(b.norms()) {
            f32_file(
                &dir.join(format!("{}.f32", which.weight(n))),
                &g.gamma.val().into_data().iter::<f32>().collect::<Vec<_>>(),
            );
        }
    }
    f32_file(
        &dir.join("output_norm.weight.f32"),
        &model
            .output_norm
            .gamma
            .val()
            .into_data()
            .iter::<f32>()
            .collect::<Vec<_>>(),
    );
    f32_file(
        &dir.join("token_embd.weight.f32"),
        &model
            .tok_embd
            .weight
            .val()
            .into_data()
            .iter::<f32>()
            .collect::<Vec<_>>(),
    );
    std::fs::write(
        dir.join("scales.json"),
        serde_json::Value::Object(scales).to_string(),
    )
    .unwrap();
}

#[test]
fn exports_pass_our_reader_and_the_gguf_package() {
    let d = tempfile::tempdir().unwrap();
    let (ckpt, model) = checkpoint(d.path(), &[]);
    let expect = d.path().join("expect");
    dump_expectations(&model, &expect);
    for (ty, scale) in [
        (WeightType::Tq2_0, ScaleMode::Exact),
        (WeightType::Tq1_0, ScaleMode::Exact),
        (WeightType::Tq2_0, ScaleMode::Folded),
        (WeightType::Tq1_0, ScaleMode::Folded),
        (WeightType::I2S, ScaleMode::Exact),
    ] {
        let out = d.path().join(format!("{ty:?}-{scale:?}.gguf"));
        let r = export(
            &ckpt,
            &ExportOptions {
                weights: ty,
                scale,
                embd: EmbdType::F16,
                device: Backend::Flex,
            },
            &out,
        )
        .unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(r.file_bytes, bytes.len());
        let g = Gguf::parse(&bytes).unwrap();
        // Our reader: exactly the tensors llama.cpp's bitnet arch loads (plus .scale in exact TQ mode).
        let scales = if ty != WeightType::I2S && scale == ScaleMode::Exact {
            7
        } else {
            0
        };
        assert_eq!(g.tensors.len(), 2 + 4 + 7 + scales, "{ty:?} {scale:?}");
        assert_eq!(
            g.get(names::general::ARCHITECTURE).unwrap().as_str(),
            Some(names::ARCH)
        );
        assert_eq!(g.get(arch::HEAD_COUNT_KV).unwrap().as_u32(), Some(2));
        assert_eq!(g.get(arch::RMS_EPS).unwrap().as_f32(), Some(1e-5));
        let b = &model.blocks[0];
        for (p, layer) in Projection::ALL.into_iter().zip(b.projections()) {
            let (q, s) = ternarize(layer);
            let t = g.tensor(&p.weight(0)).unwrap();
            assert_eq!(t.ty, ty.ggml());
            let [rows, cols] = layer.weight.dims();
            assert_eq!(t.dims, vec![cols as u64, rows as u64]);
            let v = g.dequantize(t);
            match (ty, scale) {
                (WeightType::I2S, _) => assert!(v.iter().zip(&q).all(|(a, &b)| *a == b as f32 * s)),
                (_, ScaleMode::Exact) => {
                    assert!(v.iter().zip(&q).all(|(a, &b)| *a == b as f32));
                    assert_eq!(g.dequantize(g.tensor(&p.scale(0)).unwrap()), vec![s]);
                }
                (_, ScaleMode::Folded) => assert!(
                    v.iter()
                        .zip(&q)
                        .all(|(a, &b)| (a - b as f32 * s).abs() <= 4.9e-4 * s)
                ),
            }
        }
        let embd = g.tensor(names::TOKEN_EMBD).unwrap();
        assert_eq!(
            (embd.ty, embd.dims.clone()),
            (GgmlType::F16, vec![256, 4096])
        );
        // The oracle reads TQ files (gguf-py has no I2_S, a bitnet.cpp-only type).
        if ty != WeightType::I2S {
            let mut args = vec!["check", out.to_str().unwrap(), expect.to_str().unwrap()];
            if scale == ScaleMode::Folded {
                args.push("--folded");
            }
            let said = oracle(&args);
            assert!(said.contains(" 0 failed"), "{said}");
        }
    }
}

#[test]
fn tokenizer_metadata_matches_tokenizer_json() {
    let d = tempfile::tempdir().unwrap();
    let (ckpt, _) = checkpoint(d.path(), &[]);
    let out = d.path().join("m.gguf");
    export(
        &ckpt,
        &ExportOptions {
            weights: WeightType::Tq2_0,
            scale: ScaleMode::Exact,
            embd: EmbdType::F16,
            device: Backend::Flex,
        },
        &out,
    )
    .unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let tok = tokenizers_json();
    let tokens = match g.get(names::tokenizer::TOKENS).unwrap() {
        tritium_gguf::Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        _ => panic!("tokens"),
    };
    assert_eq!(tokens.len(), 4096);
    for (t, id) in tok["model"]["vocab"].as_object().unwrap() {
        assert_eq!(&tokens[id.as_u64().unwrap() as usize], t);
    }
    assert_eq!(tokens[0], "<|endoftext|>");
    assert_eq!(g.get(names::tokenizer::EOS_ID).unwrap().as_u32(), Some(0));
    assert_eq!(
        g.get(names::tokenizer::MODEL).unwrap().as_str(),
        Some("gpt2")
    );
    let merges = match g.get(names::tokenizer::MERGES).unwrap() {
        tritium_gguf::Value::Array(a) => a.len(),
        _ => panic!("merges"),
    };
    assert_eq!(merges, tok["model"]["merges"].as_array().unwrap().len());
}

fn tokenizers_json() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(root().join("datasets/tinystories/tokenizer.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn reads_files_written_by_the_gguf_package() {
    let d = tempfile::tempdir().unwrap();
    oracle(&["write", d.path().to_str().unwrap()]);
    let bytes = std::fs::read(d.path().join("py.gguf")).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.get("test.count").unwrap().as_u32(), Some(7));
    assert_eq!(g.get("test.eps").unwrap().as_f32(), Some(1e-6));
    assert_eq!(
        g.get("test.name").unwrap().as_str(),
        Some("written by gguf-py")
    );
    for (name, ty) in [
        ("f32", GgmlType::F32),
        ("f16", GgmlType::F16),
        ("q8", GgmlType::Q8_0),
        ("tq2", GgmlType::Tq2_0),
        ("tq1", GgmlType::Tq1_0),
    ] {
        let t = g.tensor(name).unwrap();
        assert_eq!(t.ty, ty, "{name}");
        let want: Vec<f32> = std::fs::read(d.path().join(format!("{name}.f32")))
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(g.dequantize(t), want, "{name}");
    }
}

#[test]
fn bad_requests_are_refused_clearly() {
    let d = tempfile::tempdir().unwrap();
    let (ckpt, _) = checkpoint(d.path(), &["d_model=128", "n_heads=2", "n_kv_heads=2"]);
    let opts = ExportOptions {
        weights: WeightType::Tq2_0,
        scale: ScaleMode::Exact,
        embd: EmbdType::F16,
        device: Backend::Flex,
    };
    let e = export(&ckpt, &opts, &d.path().join("x.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("i2_s"),
        "{e}"
    );
    assert!(!d.path().join("x.gguf").exists());
    // I2_S takes any multiple of 128.
    let i2s = ExportOptions {
        weights: WeightType::I2S,
        ..opts
    };
    export(&ckpt, &i2s, &d.path().join("x.gguf")).unwrap();
    let e = export(&ckpt, &i2s, &d.path().join("missing/dir/x.gguf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing/dir/x.gguf"), "{e}");
    let e = export(
        &d.path().join("nothing-here"),
        &i2s,
        &d.path().join("y.gguf"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("nothing-here"), "{e}");
}
