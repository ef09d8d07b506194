//! `tritium import` of a Hugging Face `BitNetForCausalLM` written by PyPI transformers (bf16
//! master and packed forms, and the 1bitLLM reproductions' layout; see
//! `tests/hf/make_bitnet_fixture.py`): the imported checkpoint, and the GGUF exported from it,
//! compute the logits transformers computed, within 1e-4 relative to the largest logit. Also
//! PEFT adapters, the way back to safetensors, and GGUF imports.

use super::*;
use tritium_checkpoint::import::import_hf;
use tritium_export::{BaseScales, export_lora};

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

/// The fixture form `form` of `tests/hf`, imported into `dir`.
fn import_fixture(
    form: &str,
    dir: &Path,
    dev: &Device,
) -> tritium_checkpoint::import::ImportReport {
    import_hf(&root().join("tests/hf").join(form), dir, dev).unwrap()
}

/// The checkpoint exported to `path` as `weights` (exact scales, f32 embedding unless `f16`).
fn export_as(ckpt: &Path, weights: WeightType, f16: bool, path: &Path) {
    let opts = ExportOptions {
        weights,
        scale: ScaleMode::Exact,
        embd: if f16 { EmbdType::F16 } else { EmbdType::F32 },
        device: Backend::Flex,
    };
    export(ckpt, &opts, path).unwrap();
}

/// The engine's logits for `ids` on the GGUF at `path`.
fn engine_logits(path: &Path, ids: &[u32]) -> Vec<f32> {
    let m = load_gguf(path);
    let mut s = Session::new(&m, ids.len()).unwrap();
    s.forward(ids, Logits::All).unwrap().to_vec()
}

#[test]
fn imported_bitnet_computes_what_transformers_computes() {
    let _rng = rng_lock();
    let dev = Backend::Flex.device().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (form, key) in [
        ("bitnet-bf16", "logits_bf16"),
        ("bitnet-packed", "logits_packed"),
        ("bitnet-1bitllm", "logits_1bitllm"),
    ] {
        let (ids, want) = reference(key);
        let out = tmp.path().join(form);
        let r = import_fixture(form, &out, &dev);
        // The 1bitLLM layout's directory has no tokenizer_config.json.
        assert_eq!(
            r.chat_template,
            form != "bitnet-1bitllm",
            "{form}: the chat template"
        );
        let model = load_model(&r.checkpoint, &dev);
        let burn = rel_err(&burn_logits(&model, &dev, &ids), &want);
        let mut errs = vec![("burn", burn)];
        for (name, weights) in [("tq2_0", WeightType::Tq2_0), ("i2_s", WeightType::I2S)] {
            let path = tmp.path().join(format!("{form}-{name}.gguf"));
            export_as(&r.checkpoint, weights, false, &path);
            errs.push((name, rel_err(&engine_logits(&path, &ids), &want)));
        }
        eprintln!("{form}: relative error vs transformers {errs:?}");
        for (what, e) in errs {
            assert!(e <= 1e-4, "{form} through {what}: {e:.2e} relative");
        }
    }
}

/// A PEFT LoRA adapter written by PyPI peft on the bf16 model: read into tritium, the Burn model
/// with it and the engine with its llama.cpp adapter GGUF compute peft's logits; written back as
/// PEFT, it holds the same tensors.
#[test]
fn peft_adapter_computes_what_peft_computes_and_goes_back() {
    use tritium_checkpoint::hf::read_peft;
    use tritium_export::hf::export_peft;
    let _rng = rng_lock();
    let dev = Backend::Flex.device().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (ids, want) = reference("logits_bf16_lora");
    let r = import_fixture("bitnet-bf16", &tmp.path().join("base"), &dev);
    let set = read_peft(&root().join("tests/hf/peft-lora")).unwrap();
    assert_eq!(set.adapters.len(), 14, "7 projections × 2 layers");
    let mut model = load_model(&r.checkpoint, &dev);
    let scales = BaseScales::exact(&model);
    set.attach(&mut model, &dev).unwrap();
    let burn = rel_err(&burn_logits(&model, &dev, &ids), &want);

    let base = tmp.path().join("base.gguf");
    export_as(&r.checkpoint, WeightType::Tq2_0, false, &base);
    let adapter = tmp.path().join("adapter.gguf");
    export_lora(&set, &scales, &adapter).unwrap();
    let m = load_gguf(&base);
    let lora = tritium_engine::Lora::load(&adapter, &m).unwrap();
    let mut s = Session::new(&m, ids.len()).unwrap();
    s.lora = Some(&lora);
    let engine = rel_err(s.forward(&ids, Logits::All).unwrap(), &want);
    eprintln!("PEFT adapter: relative error vs peft: burn {burn:.2e}, engine {engine:.2e}");
    assert!(burn <= 1e-4, "burn: {burn:.2e}");
    assert!(engine <= 1e-3, "engine: {engine:.2e}");

    let out = tmp.path().join("peft-out");
    export_peft(&set, "tests/hf/bitnet-bf16", &out).unwrap();
    let back = read_peft(&out).unwrap();
    assert_eq!(back, set, "PEFT → tritium → PEFT keeps every factor");
}

/// Import (packed form) → export as a Hugging Face directory (bf16 master weights) → import
/// again: still transformers' logits. The exported directory holds bf16 masters that
/// transformers' own quantizer maps to the same trits (checked by hand with scripts/hf-check.py).
#[test]
fn hf_export_round_trips_through_import() {
    let _rng = rng_lock();
    let dev = Backend::Flex.device().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (ids, want) = reference("logits_packed");
    let first = import_fixture("bitnet-packed", &tmp.path().join("a"), &dev);
    let hf_dir = tmp.path().join("hf");
    let report = tritium_export::hf::export_hf(&first.checkpoint, &hf_dir, Backend::Flex).unwrap();
    assert_eq!(report.tensors, 24);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["quantization_config"]["quantization_mode"], "online");
    assert_eq!(config["num_key_value_heads"], 2);
    // The special tokens are the vocabulary's, not BitNetConfig's Llama-3 defaults.
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(hf_dir.join(f)).unwrap()).unwrap()
    };
    let tok = read("tokenizer.json");
    let eos_text = read("tokenizer_config.json")["eos_token"].clone();
    let eos_id = tok["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["content"] == eos_text)
        .map(|t| t["id"].clone())
        .unwrap();
    assert_eq!(config["eos_token_id"], eos_id);
    assert_eq!(read("generation_config.json")["eos_token_id"][0], eos_id);
    let second = import_hf(&hf_dir, &tmp.path().join("b"), &dev).unwrap();
    assert!(second.form.starts_with("bf16"), "{}", second.form);
    let model = load_model(&second.checkpoint, &dev);
    let e = rel_err(&burn_logits(&model, &dev, &ids), &want);
    eprintln!("packed → import → HF bf16 → import: {e:.2e} relative vs transformers");
    assert!(e <= 1e-4, "{e:.2e}");
}

/// A stored `lm_head.weight` is accepted when it is the embedding (a tied head written out) and
/// refused, naming it, when it is not: tritium's models have no separate head.
#[test]
fn a_stored_head_must_be_the_embedding() {
    let _rng = rng_lock();
    let dev = Backend::Flex.device().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = root().join("tests/hf/bitnet-bf16");
    // The fixture with lm_head.weight appended: a copy of the embedding, changed by `edit`.
    let with_head = |name: &str, edit: &dyn Fn(&mut [u8])| -> PathBuf {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
        let file = dir.join("model.safetensors");
        let b = std::fs::read(&file).unwrap();
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
        let data = &b[8 + n..];
        let embd = header["model.embed_tokens.weight"].clone();
        let [start, end] = [0, 1].map(|i| embd["data_offsets"][i].as_u64().unwrap() as usize);
        let mut head = data[start..end].to_vec();
        edit(&mut head);
        let mut entry = embd.clone();
        entry["data_offsets"] = serde_json::json!([data.len(), data.len() + head.len()]);
        header["lm_head.weight"] = entry;
        let h = serde_json::to_vec(&header).unwrap();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.extend_from_slice(&head);
        std::fs::write(&file, out).unwrap();
        dir
    };
    let same = with_head("same", &|_| {});
    import_hf(&same, &tmp.path().join("a"), &dev).unwrap();
    let other = with_head("other", &|h| h[0] ^= 0x40);
    let e = import_hf(&other, &tmp.path().join("b"), &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("lm_head.weight") && e.contains("untied"), "{e}");
}

/// Every GGUF form `tritium export` writes (llama.cpp's `bitnet` architecture: TQ2_0, TQ1_0 and
/// I2_S, exact and folded scales, f16 and f32 embeddings), imported: the checkpoint computes what
/// the engine computes on the file, and its rebuilt tokenizer.json encodes as the original does.
#[test]
fn gguf_imports_compute_what_the_engine_computes() {
    use tritium_checkpoint::import::import_gguf;
    let _rng = rng_lock();
    let f = fixture();
    let dev = Backend::Flex.device().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let original = tritium_train::tokenizer::Tokenizer::load(
        &Checkpoint::open(&f.ckpt).unwrap().tokenizer_path().unwrap(),
    )
    .unwrap();
    let text = "Once upon a time, Lily's cat found 3 red balls. \"Wow!\" she said.\n\nThe end.";
    let ids = original.encode(text).unwrap();
    for (name, path) in &f.files {
        let out = tmp.path().join(name);
        let r = import_gguf(path, &out, &dev).unwrap();
        let tok = tritium_train::tokenizer::Tokenizer::load(
            &Checkpoint::open(&r.checkpoint)
                .unwrap()
                .tokenizer_path()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            tok.encode(text).unwrap(),
            ids,
            "{name}: the rebuilt tokenizer"
        );
        let model = load_model(&r.checkpoint, &dev);
        let want = engine_logits(path, &ids);
        let e = rel_err(&burn_logits(&model, &dev, &ids), &want);
        eprintln!("{name}: imported checkpoint vs engine on the file {e:.2e}");
        assert!(e <= 1e-4, "{name}: {e:.2e}");
    }
}

/// bitnet.cpp's layout for 2B4T (architecture `bitnet-b1.58`, keys under that name, I2_S
/// projections, ReLU² built in, no activation key), written here from our I2_S export of the
/// transformers fixture: the engine runs it and the importer reads it, both giving
/// transformers' logits.
#[test]
fn bitnet_cpp_layout_runs_and_imports() {
    use tritium_checkpoint::import::import_gguf;
    use tritium_gguf::names::{arch, general};
    use tritium_gguf::{Gguf, Value, Writer};
    let _rng = rng_lock();
    let dev = Backend::Flex.device().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (ids, want) = reference("logits_bf16");
    let r = import_fixture("bitnet-bf16", &tmp.path().join("a"), &dev);
    let ours = tmp.path().join("i2_s.gguf");
    export_as(&r.checkpoint, WeightType::I2S, true, &ours);
    let bytes = std::fs::read(&ours).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let mut w = Writer::new();
    for (k, v) in &g.metadata {
        if k == arch::FFN_ACT || k == "general.alignment" {
            continue;
        }
        if k == general::ARCHITECTURE {
            w.kv(k, Value::String("bitnet-b1.58".into()));
        } else {
            w.kv(&arch::under("bitnet-b1.58", k), v.clone());
        }
    }
    for t in &g.tensors {
        assert!(!t.name.ends_with(".scale"), "I2_S carries its scale inside");
        w.tensor(&t.name, &t.dims, t.ty, g.data(t).to_vec());
    }
    let theirs = tmp.path().join("bitnet-b1.58.gguf");
    std::fs::write(&theirs, w.to_bytes()).unwrap();

    let engine = rel_err(&engine_logits(&theirs, &ids), &want);
    let imported = import_gguf(&theirs, &tmp.path().join("b"), &dev).unwrap();
    let model = load_model(&imported.checkpoint, &dev);
    let burn = rel_err(&burn_logits(&model, &dev, &ids), &want);
    eprintln!("bitnet.cpp layout: engine {engine:.2e}, imported {burn:.2e} vs transformers");
    // The embedding is f16 here, as bitnet.cpp writes it: the bf16 fixture's values survive it.
    assert!(
        engine <= 1e-4 && burn <= 1e-4,
        "engine {engine:.2e}, burn {burn:.2e}"
    );
}

/// Digits and their merges ("1 2", "12 3", "123 4"), then Llama-3's end of text: a vocabulary on
/// which GPT-2's and Llama-3's pre-tokenizers give different tokens.
const DIGITS: [&str; 9] = [
    "1",
    "2",
    "3",
    "4",
    "5",
    "12",
    "123",
    "1234",
    "<|end_of_text|>",
];

/// The tokenizer.json rebuilt from a GGUF splits as its pre-tokenizer says: Llama-3's
/// (`llama-bpe`) cuts digits into groups of three before merging, GPT-2's does not, so the same
/// merges give different tokens for "12345".
#[test]
fn rebuilt_tokenizers_split_as_their_pre_tokenizer_says() {
    use tritium_checkpoint::import::gguf_tokenizer_json;
    use tritium_gguf::names::{token_type, tokenizer as keys};
    use tritium_gguf::{Gguf, Value, Writer};
    let strings =
        |v: &[&str]| Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect());
    let tokens = DIGITS;
    let split = |pre: Option<&str>, tokens: &[&str]| {
        let mut w = Writer::new();
        w.kv(keys::MODEL, Value::String("gpt2".into()));
        if let Some(p) = pre {
            w.kv(keys::PRE, Value::String(p.into()));
        }
        let types: Vec<Value> = tokens
            .iter()
            .map(|t| {
                Value::I32(if t.starts_with("<|") {
                    token_type::CONTROL
                } else {
                    token_type::NORMAL
                })
            })
            .collect();
        w.kv(keys::TOKENS, strings(tokens))
            .kv(keys::TOKEN_TYPE, Value::Array(types))
            .kv(keys::MERGES, strings(&["1 2", "12 3", "123 4"]));
        let bytes = w.to_bytes();
        let g = Gguf::parse(&bytes).unwrap();
        let json = gguf_tokenizer_json(&g).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json).unwrap();
        let tok = tritium_train::tokenizer::Tokenizer::load(&path).unwrap();
        assert_eq!(tok.eot_id, 8, "Llama-3's <|end_of_text|> ends documents");
        let ids = tok.encode("12345").unwrap();
        // The engine, reading the same GGUF, splits the same way.
        let engine = tritium_engine::tokenizer::Tokenizer::from_gguf(&g, tokens.len()).unwrap();
        assert_eq!(engine.encode("12345").unwrap(), ids, "engine, pre {pre:?}");
        // And exporting that tokenizer.json names the pre-tokenizer llama.cpp must use.
        let vocab = tritium_export::tokenizer::read(&path, tokens.len()).unwrap();
        let named = vocab.metadata().into_iter().find(|(k, _)| *k == keys::PRE);
        (ids, named.map(|(_, v)| v))
    };
    let s = |t: &str| Some(Value::String(t.into()));
    assert_eq!(
        split(Some("gpt2"), &tokens),
        (vec![7, 4], s("gpt-2")),
        "GPT-2: one pre-token, 1234 + 5"
    );
    assert_eq!(
        split(Some("llama-bpe"), &tokens),
        (vec![6, 3, 4], s("llama-bpe")),
        "Llama-3: 123 | 45"
    );
    // bitnet.cpp's 2B4T files name no pre-tokenizer; Llama-3's vocabulary says which it is.
    let mut llama3 = tokens.to_vec();
    llama3.push("<|begin_of_text|>");
    assert_eq!(split(None, &llama3).0, vec![6, 3, 4]);
    assert_eq!(split(None, &tokens).0, vec![7, 4]);
}

/// A GGUF that adds a BOS to every prompt (bitnet.cpp's 2B4T) was pretrained with it at every
/// document's start. Imported, its tokenizer.json says so as Llama-3's does (a template
/// post-processor); training, fine-tuning and evaluation then start documents with it, and the
/// GGUF export asks llama.cpp to add it, so the engine starts where the checkpoint does. A file
/// that adds none starts documents with end-of-text on both sides.
#[test]
fn a_bos_the_gguf_adds_starts_documents_everywhere() {
    use tritium_checkpoint::import::gguf_tokenizer_json;
    use tritium_gguf::names::{token_type, tokenizer as keys};
    use tritium_gguf::{Gguf, Value, Writer};
    let mut tokens = DIGITS.to_vec();
    tokens.push("<|begin_of_text|>");
    let strings =
        |v: &[&str]| Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect());
    let types = |v: &[&str]| {
        Value::Array(
            v.iter()
                .map(|t| match t.starts_with("<|") {
                    true => Value::I32(token_type::CONTROL),
                    false => Value::I32(token_type::NORMAL),
                })
                .collect(),
        )
    };
    // Without the key, llama.cpp adds a BOS for a llama-bpe vocabulary (many Llama-3 GGUFs leave
    // it out): so does tritium.
    for key in [Some(true), Some(false), None] {
        let mut w = Writer::new();
        w.kv(keys::MODEL, Value::String("gpt2".into()))
            .kv(keys::PRE, Value::String("llama-bpe".into()))
            .kv(keys::TOKENS, strings(&tokens))
            .kv(keys::TOKEN_TYPE, types(&tokens))
            .kv(keys::MERGES, strings(&["1 2", "12 3", "123 4"]))
            .kv(keys::BOS_ID, Value::U32(9))
            .kv(keys::EOS_ID, Value::U32(8));
        if let Some(k) = key {
            w.kv(keys::ADD_BOS, Value::Bool(k));
        }
        let bytes = w.to_bytes();
        let g = Gguf::parse(&bytes).unwrap();
        let add_bos = key.unwrap_or(true);
        let start = if add_bos { 9 } else { 8 };

        let engine = tritium_engine::tokenizer::Tokenizer::from_gguf(&g, tokens.len()).unwrap();
        assert_eq!(engine.doc_start(), Some(start), "add_bos {add_bos}");
        assert_eq!(engine.encode_text("12345").unwrap(), vec![6, 3, 4]);
        let prompt = engine.encode("12345").unwrap();
        assert_eq!(prompt.len(), 3 + usize::from(add_bos), "{prompt:?}");

        // Imported: Hugging Face's tokenizers library adds the BOS itself, and training reads it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, gguf_tokenizer_json(&g).unwrap()).unwrap();
        let tok = tritium_train::tokenizer::Tokenizer::load(&path).unwrap();
        assert_eq!(tok.doc_start(), start);
        assert_eq!(tok.bos_id.is_some(), add_bos);
        let hf = tok.inner.encode("12345", true).unwrap();
        assert_eq!(hf.get_ids(), prompt.as_slice(), "tokenizers' own encoding");
        assert_eq!(tok.encode("12345").unwrap(), vec![6, 3, 4]);

        // Exported again: the GGUF's metadata gives the engine the checkpoint's start.
        let vocab = tritium_export::tokenizer::read(&path, tokens.len()).unwrap();
        let mut w = Writer::new();
        for (k, v) in vocab.metadata() {
            w.kv(k, v);
        }
        let bytes = w.to_bytes();
        let again = Gguf::parse(&bytes).unwrap();
        let engine = tritium_engine::tokenizer::Tokenizer::from_gguf(&again, tokens.len()).unwrap();
        assert_eq!(
            engine.doc_start(),
            Some(start),
            "exported, add_bos {add_bos}"
        );
        assert_eq!(engine.encode("12345").unwrap(), prompt);
    }
}
