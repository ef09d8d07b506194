//! `tritium import`: a published Hugging Face `BitNetForCausalLM` directory as a tritium checkpoint
//! that fine-tuning, evaluation, export and training take like one of our own.
//!
//! Two forms of the same architecture are read (see `../shared/notes/hf-bitnet-import.md`):
//! - master weights (bf16/f16/f32) with `quantization_mode = "online"`: transformers ternarizes
//!   them in every forward exactly as our BitLinear does (absmean, ties to even), so they are
//!   imported as latent weights unchanged;
//! - packed ternary weights: uint8 `[out/4, in]`, four rows per byte (row `i·out/4 + r` in bits
//!   `2i..2i+2` of byte row `r`, codes 0/1/2 for −1/0/+1), with a per-tensor `weight_scale` that
//!   `linear_class = "bitlinear"` divides by and `"autobitlinear"` multiplies by. A matrix `T·g`
//!   re-ternarized by absmean would come back as `T·g·p` (p: the fraction of non-zeros), so the
//!   latent weights written are `T·g/p`: absmean gives back `g` exactly and every trit stays put.
//!
//! Nothing is written until every tensor has been read and checked; the checkpoint itself is
//! written atomically by [`crate::save`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tritium_model::burn::module::Param;
use tritium_model::burn::prelude::*;
use tritium_model::{FfnAct, ModelConfig, Projection, Quant, Transformer};

use crate::hf;
use crate::{
    CHAT_TEMPLATE, CheckpointError, Contents, Origin, Provenance, State, save, sha256_hex,
};

/// What an import read and wrote.
#[derive(Debug)]
pub struct ImportReport {
    pub checkpoint: PathBuf,
    pub config: ModelConfig,
    /// "bf16 master weights (online quantization)", "packed ternary (bitlinear)", …
    pub form: String,
    pub tensors: usize,
    pub chat_template: bool,
}

/// The keys of a `BitNetForCausalLM` config.json that decide the computation. Others (ids of
/// special tokens, dtype, transformers' version) are informative and ignored.
#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    hidden_act: String,
    rms_norm_eps: f32,
    #[serde(default)]
    rope_theta: Option<f32>,
    /// transformers 5 writes `{"rope_type": "default", "rope_theta": …}` here instead.
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: usize,
    #[serde(default = "yes")]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    quantization_config: Option<HfQuant>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct HfQuant {
    quant_method: String,
    #[serde(default = "bitlinear")]
    linear_class: String,
    #[serde(default = "offline")]
    quantization_mode: String,
}

fn bitlinear() -> String {
    "bitlinear".into()
}

fn offline() -> String {
    "offline".into()
}

/// A tensor as the safetensors file holds it.
struct Raw {
    /// The safetensors file it came from, for messages.
    file: PathBuf,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Imports the Hugging Face model directory `from` as step 0 of the run directory `out`.
pub fn import_hf(
    from: &Path,
    out: &Path,
    device: &Device,
) -> Result<ImportReport, CheckpointError> {
    let bad = |path: &Path, msg: String| CheckpointError::Bad {
        path: path.to_path_buf(),
        msg,
    };
    if crate::dir(out).exists() {
        return Err(bad(
            out,
            "already holds checkpoints; import into a new directory".into(),
        ));
    }
    let cfg_path = from.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(crate::io(&cfg_path))?;
    let hf: HfConfig =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&text))
            .map_err(|e| bad(&cfg_path, format!("{}: {}", e.path(), e.inner())))?;
    let (cfg, packed_rule) = model_config(&hf).map_err(|m| bad(&cfg_path, m))?;
    cfg.validate().map_err(|e| bad(&cfg_path, e.to_string()))?;

    let mut raw = read_tensors(from)?;
    let mut model = Transformer::new(&cfg, device);
    let (d, f, v) = (cfg.d_model, cfg.d_ff, cfg.vocab_size);
    let mut take = |name: &str| {
        raw.remove(name)
            .ok_or_else(|| bad(from, format!("tensor {name} is missing")))
    };

    let float = |name: &str,
                 shape: &[usize],
                 take: &mut dyn FnMut(&str) -> Result<Raw, CheckpointError>| {
        let t = take(name)?;
        to_f32(&t, shape).map_err(|m| bad(&t.file, format!("tensor {name}: {m}")))
    };
    let mut form = String::new();
    let mut linear = |name: &str,
                      out_f: usize,
                      in_f: usize,
                      take: &mut dyn FnMut(&str) -> Result<Raw, CheckpointError>|
     -> Result<Vec<f32>, CheckpointError> {
        let t = take(name)?;
        if t.dtype == safetensors::Dtype::U8 {
            let Some(divide) = packed_rule else {
                return Err(bad(
                    &t.file,
                    format!(
                        "tensor {name} is packed (U8) but config.json's quantization_config is not the offline bitnet form"
                    ),
                ));
            };
            let scale_name = name.replace(".weight", ".weight_scale");
            let s = take(&scale_name)?;
            let s = to_f32(&s, &[1])
                .or_else(|_| to_f32(&s, &[]))
                .map_err(|m| bad(&s.file, format!("tensor {scale_name}: {m}")))?[0];
            if !(s.is_finite() && s > 0.0) {
                return Err(bad(
                    &t.file,
                    format!("tensor {scale_name} = {s}: a scale must be a positive number"),
                ));
            }
            let g = if divide { 1.0 / s } else { s };
            let trits =
                unpack(&t, out_f, in_f).map_err(|m| bad(&t.file, format!("tensor {name}: {m}")))?;
            form = format!(
                "packed ternary weights ({})",
                if divide {
                    "bitlinear: divided by weight_scale"
                } else {
                    "autobitlinear: multiplied by weight_scale"
                }
            );
            Ok(hf::exact_latent(&trits, g))
        } else {
            if packed_rule.is_some() {
                return Err(bad(
                    &t.file,
                    format!(
                        "tensor {name} is {:?}, but config.json says the weights are packed (quantization_mode offline)",
                        t.dtype
                    ),
                ));
            }
            form = format!("{:?} master weights (online quantization)", t.dtype).to_lowercase();
            to_f32(&t, &[out_f, in_f]).map_err(|m| bad(&t.file, format!("tensor {name}: {m}")))
        }
    };

    let t2 = |v: Vec<f32>, r: usize, c: usize| {
        Param::from_tensor(Tensor::<2>::from_data(TensorData::new(v, [r, c]), device))
    };
    let t1 = |v: Vec<f32>| {
        let n = v.len();
        Param::from_tensor(Tensor::<1>::from_data(TensorData::new(v, [n]), device))
    };
    model.tok_embd.weight = t2(float(hf::EMBD, &[v, d], &mut take)?, v, d);
    model.output_norm.gamma = t1(float(hf::NORM, &[d], &mut take)?);
    for (i, b) in model.blocks.iter_mut().enumerate() {
        let n = |part: &str| hf::layer(i, part);
        b.attn_norm.gamma = t1(float(&n(hf::ATTN_NORM), &[d], &mut take)?);
        b.ffn_norm.gamma = t1(float(&n(hf::FFN_NORM), &[d], &mut take)?);
        b.attn.sub_norm.gamma = t1(float(&n(hf::ATTN_SUB_NORM), &[d], &mut take)?);
        b.ffn.sub_norm.gamma = t1(float(&n(hf::FFN_SUB_NORM), &[f], &mut take)?);
        for (target, l) in Projection::ALL.into_iter().zip(b.projections_mut()) {
            let [out_f, in_f] = l.weight.dims();
            let name = n(&hf::weight(target));
            l.weight = t2(linear(&name, out_f, in_f, &mut take)?, out_f, in_f);
        }
    }
    // A tied head may still be stored; it must be the embedding, which it is by definition when
    // tied. Anything else left over is a tensor this architecture does not have.
    raw.remove("lm_head.weight");
    raw.retain(|k, _| !k.ends_with("rotary_emb.inv_freq"));
    if let Some(extra) = raw.keys().next() {
        return Err(bad(
            from,
            format!(
                "tensor {extra} is not part of BitNetForCausalLM as tritium reads it ({} unread)",
                raw.len()
            ),
        ));
    }
    let tensors = 2 + 11 * cfg.n_layers;

    let tok = from.join("tokenizer.json");
    let tok_bytes = std::fs::read(&tok).map_err(crate::io(&tok))?;
    let template = chat_template(from)?;
    let mut extra = Vec::new();
    if let Some(t) = &template {
        extra.push((CHAT_TEMPLATE, t.clone().into_bytes()));
    }
    let provenance = Provenance {
        run: serde_json::json!({ "import": from.display().to_string(), "form": form }),
        ..Provenance::new(Origin::Import, Some(tok.clone()))
    };
    let state = State::new(cfg.clone(), sha256_hex(&tok_bytes), provenance);
    let checkpoint = save(
        out,
        &Contents {
            model: &model,
            state: &state,
            optim: None,
            tokenizer: Some(&tok),
            extra: &extra,
        },
        1,
    )?;
    Ok(ImportReport {
        checkpoint,
        config: cfg,
        form,
        tensors,
        chat_template: template.is_some(),
    })
}

/// The model config, and for packed weights whether `weight_scale` divides (`bitlinear`) or
/// multiplies (`autobitlinear`). Every key that would change the computation and that tritium
/// does not implement is refused by name.
fn model_config(hf: &HfConfig) -> Result<(ModelConfig, Option<bool>), String> {
    // `architectures` names the class transformers builds; model_type alone only when it is absent.
    let arch_ok = if hf.architectures.is_empty() {
        hf.model_type.as_deref() == Some("bitnet")
    } else {
        hf.architectures.iter().any(|a| a == "BitNetForCausalLM")
    };
    if !arch_ok {
        return Err(format!(
            "architectures = {:?}, model_type = {:?}: only BitNetForCausalLM (model_type \"bitnet\") is imported",
            hf.architectures, hf.model_type
        ));
    }
    let ffn_act = match hf.hidden_act.as_str() {
        "relu2" => FfnAct::Relu2,
        "silu" | "swish" => FfnAct::Silu,
        other => {
            return Err(format!(
                "hidden_act = {other:?}: tritium implements relu2 and silu"
            ));
        }
    };
    if !hf.tie_word_embeddings {
        return Err("tie_word_embeddings = false: tritium's models share the embedding with the output head".into());
    }
    if hf.attention_bias {
        return Err("attention_bias = true: tritium's projections have no bias".into());
    }
    if hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        return Err("rope_scaling is set: tritium implements plain RoPE".into());
    }
    let from_params = hf.rope_parameters.as_ref().and_then(|p| {
        if let Some(t) = p.get("rope_type").and_then(|t| t.as_str())
            && t != "default"
        {
            return Some(Err(format!(
                "rope_parameters.rope_type = {t:?}: tritium implements plain RoPE"
            )));
        }
        p.get("rope_theta")
            .and_then(|t| t.as_f64())
            .map(|t| Ok(t as f32))
    });
    let rope_theta = match (from_params, hf.rope_theta) {
        (Some(r), _) => r?,
        (None, Some(t)) => t,
        (None, None) => 10000.0,
    };
    if hf.num_attention_heads == 0 || !hf.hidden_size.is_multiple_of(hf.num_attention_heads) {
        return Err(format!(
            "hidden_size = {} is not a multiple of num_attention_heads = {}",
            hf.hidden_size, hf.num_attention_heads
        ));
    }
    if let Some(h) = hf.head_dim
        && h != hf.hidden_size / hf.num_attention_heads
    {
        return Err(format!(
            "head_dim = {h}: tritium needs hidden_size / num_attention_heads = {}",
            hf.hidden_size / hf.num_attention_heads
        ));
    }
    let packed = match &hf.quantization_config {
        None => {
            return Err("no quantization_config: transformers runs this model in full precision, which tritium's ternary BitLinear would not reproduce (BitNet configs carry quant_method \"bitnet\")".into());
        }
        Some(q) if q.quant_method != "bitnet" => {
            return Err(format!(
                "quantization_config.quant_method = {:?}: only \"bitnet\" is imported",
                q.quant_method
            ));
        }
        Some(q) => match (q.quantization_mode.as_str(), q.linear_class.as_str()) {
            ("online", _) => None,
            ("offline", "bitlinear") => Some(true),
            ("offline", "autobitlinear") => Some(false),
            ("offline", other) => {
                return Err(format!(
                    "quantization_config.linear_class = {other:?}: expected bitlinear or autobitlinear"
                ));
            }
            (other, _) => {
                return Err(format!(
                    "quantization_config.quantization_mode = {other:?}: expected online or offline"
                ));
            }
        },
    };
    Ok((
        ModelConfig {
            vocab_size: hf.vocab_size,
            d_model: hf.hidden_size,
            n_layers: hf.num_hidden_layers,
            n_heads: hf.num_attention_heads,
            n_kv_heads: hf.num_key_value_heads,
            d_ff: hf.intermediate_size,
            ffn_act,
            rope_theta,
            norm_eps: hf.rms_norm_eps,
            max_seq_len: hf.max_position_embeddings,
            quant: Quant::Ternary,
            quant_warmup_steps: 0,
        },
        packed,
    ))
}

/// Every tensor of `model.safetensors`, or of the shards `model.safetensors.index.json` lists.
fn read_tensors(from: &Path) -> Result<BTreeMap<String, Raw>, CheckpointError> {
    let index = from.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(crate::io(&index))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CheckpointError::Bad {
                path: index.clone(),
                msg: e.to_string(),
            })?;
        let map = v["weight_map"]
            .as_object()
            .ok_or_else(|| CheckpointError::Bad {
                path: index.clone(),
                msg: "no weight_map object".into(),
            })?;
        let mut shards: Vec<PathBuf> = map
            .values()
            .filter_map(|f| f.as_str())
            .map(|f| from.join(f))
            .collect();
        shards.sort();
        shards.dedup();
        shards
    } else {
        vec![from.join("model.safetensors")]
    };
    let mut out = BTreeMap::new();
    for file in files {
        let bytes = std::fs::read(&file).map_err(crate::io(&file))?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Bad {
                path: file.clone(),
                msg: format!("not a safetensors file ({e})"),
            })?;
        for (name, t) in st.tensors() {
            out.insert(
                name,
                Raw {
                    file: file.clone(),
                    dtype: t.dtype(),
                    shape: t.shape().to_vec(),
                    data: t.data().to_vec(),
                },
            );
        }
    }
    Ok(out)
}

/// A float tensor of `shape` as f32 values (bf16 and f16 widen exactly).
fn to_f32(t: &Raw, shape: &[usize]) -> Result<Vec<f32>, String> {
    if t.shape != shape {
        return Err(format!("shape {:?}, expected {shape:?}", t.shape));
    }
    use safetensors::Dtype;
    let v: Vec<f32> = match t.dtype {
        Dtype::F32 => t
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => t
            .data
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        Dtype::F16 => t
            .data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => return Err(format!("dtype {other:?}, expected F32, BF16 or F16")),
    };
    if let Some(x) = v.iter().find(|x| !x.is_finite()) {
        return Err(format!("holds {x}"));
    }
    Ok(v)
}

/// Trits of a packed `[out/4, in]` uint8 tensor, row-major `[out, in]`.
fn unpack(t: &Raw, out_f: usize, in_f: usize) -> Result<Vec<i8>, String> {
    if !out_f.is_multiple_of(4) || t.shape != [out_f / 4, in_f] {
        return Err(format!(
            "packed shape {:?}, expected [{}, {in_f}] for a [{out_f}, {in_f}] matrix",
            t.shape,
            out_f / 4
        ));
    }
    let rows = out_f / 4;
    let mut w = vec![0i8; out_f * in_f];
    for r in 0..rows {
        for c in 0..in_f {
            let byte = t.data[r * in_f + c];
            for i in 0..4 {
                let code = (byte >> (2 * i)) & 3;
                if code == 3 {
                    return Err(format!("byte row {r}, column {c}: code 3 is not a trit"));
                }
                w[(i * rows + r) * in_f + c] = code as i8 - 1;
            }
        }
    }
    Ok(w)
}

/// The chat template beside a Hugging Face tokenizer: `chat_template.jinja` (transformers 5) or
/// `tokenizer_config.json`'s `chat_template` (a string, or a list of named templates, of which
/// the one named "default").
fn chat_template(from: &Path) -> Result<Option<String>, CheckpointError> {
    let jinja = from.join("chat_template.jinja");
    if jinja.exists() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(crate::io(&jinja));
    }
    let cfg = from.join("tokenizer_config.json");
    let Ok(text) = std::fs::read_to_string(&cfg) else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| CheckpointError::Bad {
        path: cfg.clone(),
        msg: e.to_string(),
    })?;
    Ok(match &v["chat_template"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(String::from),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' own example (`unpack_weights` docstring): two bytes per row, rows 0 and 1
    /// of an 8-row matrix.
    #[test]
    fn unpacks_rows_in_blocks_as_transformers_does() {
        let t = Raw {
            dtype: safetensors::Dtype::U8,
            shape: vec![2, 2],
            data: vec![0b10100001, 0b00011000, 0b10010000, 0b00001010],
            file: PathBuf::new(),
        };
        let w = unpack(&t, 8, 2).unwrap();
        let want: [[i8; 2]; 8] = [
            [0, -1],
            [-1, 1],
            [-1, 1],
            [-1, 1],
            [1, 0],
            [0, -1],
            [1, -1],
            [1, -1],
        ];
        assert_eq!(w, want.concat());
    }
}
