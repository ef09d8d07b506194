//! Checkpoint → Hugging Face `BitNetForCausalLM` directory, and adapter → PEFT LoRA directory: the
//! way a model or an adapter trained here goes back to transformers.
//!
//! The model directory holds bf16 master weights with `quantization_mode = "online"`, the form of
//! Microsoft's `-bf16` repository, so transformers ternarizes them in every forward as we do. A
//! projection's latent weights are not written as they are (bf16 rounding could move a weight
//! across a rounding boundary, and would shift the absmean): they are replaced by
//! [`exact_latent_bf16`] weights of the trits and scale our quantizer computes, which
//! transformers' quantizer maps back to the same trits and the same scale (the bf16 values are
//! nudged until their mean is `g`). The
//! embedding and norms are rounded to bf16.
//!
//! Both directories are written beside their destination and renamed into place.

use std::path::{Path, PathBuf};

use tritium_checkpoint::adapter::AdapterSet;
use tritium_checkpoint::fsutil::{check_output, write_dir_atomic};
use tritium_checkpoint::hf::{self, exact_latent_bf16, peft_name};
use tritium_checkpoint::{Checkpoint, TOKENIZER};
use tritium_gguf::names::END_OF_TURN;
use tritium_model::burn::prelude::*;
use tritium_model::{Backend, FfnAct, Projection};

use crate::{ExportError, ternarize};

/// What [`export_hf`] wrote.
#[derive(Debug)]
pub struct HfReport {
    pub dir: PathBuf,
    pub tensors: usize,
    pub bytes: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError {
    let path = path.to_path_buf();
    move |source| ExportError::Io { path, source }
}

/// A tensor to write: name, shape, little-endian bytes, dtype.
type Entry = (String, Vec<usize>, Vec<u8>, safetensors::Dtype);

fn bf16(name: String, shape: Vec<usize>, v: &[f32]) -> Entry {
    let bytes = v
        .iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
        .collect();
    (name, shape, bytes, safetensors::Dtype::BF16)
}

fn f32s(name: String, shape: Vec<usize>, v: &[f32]) -> Entry {
    let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    (name, shape, bytes, safetensors::Dtype::F32)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().iter::<f32>().collect()
}

/// Writes `entries` as one safetensors file (with `{"format": "pt"}`, as transformers writes).
fn safetensors_bytes(entries: &[Entry]) -> Result<Vec<u8>, ExportError> {
    let views = entries
        .iter()
        .map(|(n, s, b, dt)| {
            safetensors::tensor::TensorView::new(*dt, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ExportError::Output(format!("tensor {n}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| ExportError::Output(e.to_string()))
}

/// Writes `files` as the new directory `out`, atomically.
fn write_dir(out: &Path, files: &[(&str, Vec<u8>)]) -> Result<usize, ExportError> {
    write_dir_atomic(out, files).map_err(io(out))
}

/// Writes the checkpoint `ckpt_or_run` as a Hugging Face `BitNetForCausalLM` directory `out`.
pub fn export_hf(ckpt_or_run: &Path, out: &Path, device: Backend) -> Result<HfReport, ExportError> {
    let ckpt = Checkpoint::open(ckpt_or_run)?;
    let mut inputs = tritium_checkpoint::parts(&ckpt.dir);
    inputs.extend(ckpt.state.provenance.tokenizer.clone());
    check_output(out, &inputs).map_err(ExportError::Output)?;
    if ckpt.lora_layout()?.is_some() {
        return Err(ExportError::Lora(
            "this fine-tuning checkpoint carries LoRA adapters: export the base and the adapter (--lora ADAPTER --format safetensors) apart, or fine-tune with --merge".into(),
        ));
    }
    let model = ckpt.load_model(&device.device()?)?;
    let cfg = ckpt.model_config().clone();
    let (d, f, v) = (cfg.d_model, cfg.d_ff, cfg.vocab_size);

    let mut entries = vec![
        bf16(
            hf::EMBD.into(),
            vec![v, d],
            &values(model.tok_embd.weight.val()),
        ),
        bf16(
            hf::NORM.into(),
            vec![d],
            &values(model.output_norm.gamma.val()),
        ),
    ];
    for (i, b) in model.blocks.iter().enumerate() {
        let n = |part: &str| hf::layer(i, part);
        for (part, norm, width) in [
            (hf::ATTN_NORM, &b.attn_norm, d),
            (hf::ATTN_SUB_NORM, &b.attn.sub_norm, d),
            (hf::FFN_NORM, &b.ffn_norm, d),
            (hf::FFN_SUB_NORM, &b.ffn.sub_norm, f),
        ] {
            entries.push(bf16(n(part), vec![width], &values(norm.gamma.val())));
        }
        for (target, l) in Projection::ALL.into_iter().zip(b.projections()) {
            let [rows, cols] = l.weight.dims();
            let (trits, g) = ternarize(l);
            let bytes = exact_latent_bf16(&trits, g)
                .into_iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            entries.push((
                n(&hf::weight(target)),
                vec![rows, cols],
                bytes,
                safetensors::Dtype::BF16,
            ));
        }
    }
    let tensors = entries.len();
    let config = serde_json::json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "vocab_size": v,
        "hidden_size": d,
        "intermediate_size": f,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads(),
        "head_dim": d / cfg.n_heads,
        "hidden_act": match cfg.ffn_act { FfnAct::Relu2 => "relu2", FfnAct::Silu => "silu" },
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_seq_len,
        "tie_word_embeddings": true,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "torch_dtype": "bfloat16",
        "quantization_config": {
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": "online",
        },
    });
    let mut config = config;
    let tok_path = ckpt.tokenizer_path()?;
    let tok = std::fs::read(&tok_path).map_err(io(&tok_path))?;
    let mut tok_config = serde_json::json!({ "tokenizer_class": "PreTrainedTokenizerFast" });
    if let Some(t) = ckpt.chat_template()? {
        tok_config["chat_template"] = t.into();
    }
    // The special tokens, which transformers would otherwise take from BitNetConfig's defaults
    // (Llama-3's ids, wrong for any other vocabulary): documents end with the vocabulary's
    // end-of-text token (and start with Llama-3's <|begin_of_text|> where it has one); generation
    // also stops at the end-of-turn tokens the vocabulary holds.
    let mut generation = serde_json::json!({ "do_sample": false });
    // (A tokenizer.json the GGUF export could not name a pre-tokenizer for leaves them out.)
    if let Ok(vocab) = crate::tokenizer::read(&tok_path, v)
        && let Some(eot) = vocab.eot
    {
        let id_of = |t: &str| vocab.tokens.iter().position(|x| x == t).map(|i| i as u32);
        let bos = vocab.bos.unwrap_or(eot);
        let stops: Vec<u32> = std::iter::once(eot)
            .chain(END_OF_TURN.iter().filter_map(|t| id_of(t)))
            .collect();
        config["bos_token_id"] = bos.into();
        config["eos_token_id"] = eot.into();
        generation["bos_token_id"] = bos.into();
        generation["eos_token_id"] = stops.into();
        tok_config["bos_token"] = vocab.tokens[bos as usize].clone().into();
        tok_config["eos_token"] = vocab.tokens[eot as usize].clone().into();
    }
    let files = [
        ("model.safetensors", safetensors_bytes(&entries)?),
        ("config.json", pretty(&config)),
        ("generation_config.json", pretty(&generation)),
        (TOKENIZER, tok),
        ("tokenizer_config.json", pretty(&tok_config)),
    ];
    let bytes = write_dir(out, &files)?;
    Ok(HfReport {
        dir: out.to_path_buf(),
        tensors,
        bytes,
    })
}

fn pretty(v: &serde_json::Value) -> Vec<u8> {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s.into_bytes()
}

/// Writes `set` as a PEFT LoRA adapter directory `out` (`adapter_model.safetensors` with f32
/// `lora_A` `[r, in]` / `lora_B` `[out, r]`, and `adapter_config.json`), for
/// `PeftModel.from_pretrained(BitNetForCausalLM, out)`. PEFT adds `(lora_alpha/r)·B·A·x` to the
/// projection's output, as tritium does.
pub fn export_peft(set: &AdapterSet, base: &str, out: &Path) -> Result<usize, ExportError> {
    let first = set
        .adapters
        .first()
        .ok_or_else(|| ExportError::Lora("the adapter set is empty".into()))?;
    if let Some(a) = set
        .adapters
        .iter()
        .find(|a| a.rank != first.rank || a.alpha != first.alpha)
    {
        return Err(ExportError::Lora(format!(
            "layer {} {:?} has rank {} and alpha {}, the first rank {} and alpha {}: PEFT's config holds one",
            a.layer, a.target, a.rank, a.alpha, first.rank, first.alpha
        )));
    }
    let mut entries = Vec::new();
    let mut targets: Vec<&str> = Vec::new();
    for a in &set.adapters {
        entries.push(f32s(
            peft_name(a.layer, a.target, "lora_A"),
            vec![a.rank, a.d_in],
            &a.a,
        ));
        entries.push(f32s(
            peft_name(a.layer, a.target, "lora_B"),
            vec![a.d_out, a.rank],
            &a.b,
        ));
        if !targets.contains(&hf::leaf(a.target)) {
            targets.push(hf::leaf(a.target));
        }
    }
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": first.rank,
        "lora_alpha": first.alpha,
        "lora_dropout": 0.0,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
    });
    let files = [
        ("adapter_model.safetensors", safetensors_bytes(&entries)?),
        ("adapter_config.json", pretty(&config)),
    ];
    write_dir(out, &files)?;
    Ok(set.adapters.len())
}
