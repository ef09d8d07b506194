//! `tritium import` of a Hugging Face `BitNetForCausalLM` written by PyPI transformers
//! (`tests/hf/make_bitnet_fixture.py`): the imported checkpoint, and the GGUF exported from it,
//! compute the logits transformers computed, within 1e-4 relative to the largest logit.

use super::*;
use tritium_checkpoint::import::import_hf;

fn reference(key: &str) -> (Vec<u32>, Vec<f32>) {
    let text = std::fs::read_to_string(root().join("tests/hf/reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let logits = v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    (ids, logits)
}

/// max |got − want| / max |want|.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn imported_bitnet_computes_what_transformers_computes() {
    let _rng = rng_lock();
    let dev = Backend::Flex.device().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (form, key) in [
        ("bitnet-bf16", "logits_bf16"),
        ("bitnet-packed", "logits_packed"),
    ] {
        let (ids, want) = reference(key);
        let out = tmp.path().join(form);
        let r = import_hf(&root().join("tests/hf").join(form), &out, &dev).unwrap();
        assert!(r.chat_template, "{form}: the chat template comes along");
        let model = load_model(&r.checkpoint, &dev);
        let burn = rel_err(&burn_logits(&model, &dev, &ids), &want);
        let mut errs = vec![("burn", burn)];
        for (name, weights) in [("tq2_0", WeightType::Tq2_0), ("i2_s", WeightType::I2S)] {
            let path = tmp.path().join(format!("{form}-{name}.gguf"));
            let opts = ExportOptions {
                weights,
                scale: ScaleMode::Exact,
                embd: EmbdType::F32,
                device: Backend::Flex,
            };
            export(&r.checkpoint, &opts, &path).unwrap();
            let m = load_gguf(&path);
            let mut s = Session::new(&m, ids.len()).unwrap();
            let got = s.forward(&ids, Logits::All).unwrap().to_vec();
            errs.push((name, rel_err(&got, &want)));
        }
        eprintln!("{form}: relative error vs transformers {errs:?}");
        for (what, e) in errs {
            assert!(e <= 1e-4, "{form} through {what}: {e:.2e} relative");
        }
    }
}
