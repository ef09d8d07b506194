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
use tritium_model::burn::prelude::*;
use tritium_model::{FfnAct, ModelConfig, Projection, Quant, Transformer};

use crate::hf;
use crate::{
    CHAT_TEMPLATE, CheckpointError, Contents, Origin, Provenance, State, TOKENIZER, save,
    sha256_hex,
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
#[derive(Deserialize, Clone)]
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

#[derive(Deserialize, Clone)]
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

/// Where a tensor lies in its safetensors file; its bytes are read when the tensor is used, so a
/// 2B model's shards are never held in memory beside the model being built.
#[derive(Clone)]
struct Desc {
    file: PathBuf,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    start: u64,
    len: usize,
}

impl Desc {
    fn read(self) -> Result<Raw, CheckpointError> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&self.file).map_err(crate::io(&self.file))?;
        let mut data = vec![0u8; self.len];
        f.seek(SeekFrom::Start(self.start))
            .and_then(|_| f.read_exact(&mut data))
            .map_err(crate::io(&self.file))?;
        Ok(Raw {
            file: self.file,
            dtype: self.dtype,
            shape: self.shape,
            data,
        })
    }
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
    fresh(out)?;
    let cfg_path = from.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(crate::io(&cfg_path))?;
    let hf: HfConfig =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&text))
            .map_err(|e| bad(&cfg_path, format!("{}: {}", e.path(), e.inner())))?;
    let (cfg, packed_rule) = model_config(&hf).map_err(|m| bad(&cfg_path, m))?;
    let one_bit = hf.architectures.iter().any(|a| a == hf::ONE_BIT_LLM);
    cfg.validate().map_err(|e| bad(&cfg_path, e.to_string()))?;

    let mut raw = read_tensors(from)?;
    // A stored head must be the embedding (which a tied head is): config.json may leave
    // tie_word_embeddings out, and a head that differs is a model tritium cannot hold.
    if let Some(head) = raw.remove("lm_head.weight") {
        let embd = raw
            .get(hf::EMBD)
            .cloned()
            .ok_or_else(|| bad(from, format!("tensor {} is missing", hf::EMBD)))?;
        let (head, embd) = (head.read()?, embd.read()?);
        if head.dtype != embd.dtype || head.shape != embd.shape || head.data != embd.data {
            return Err(bad(
                &head.file,
                format!(
                    "lm_head.weight differs from {}: an untied output head; tritium's models \
                     share the embedding with it",
                    hf::EMBD
                ),
            ));
        }
    }
    let mut model = Transformer::new(&cfg, device);
    let (d, f, v) = (cfg.d_model, cfg.d_ff, cfg.vocab_size);
    let mut take = |name: &str| {
        raw.remove(name)
            .ok_or_else(|| bad(from, format!("tensor {name} is missing")))?
            .read()
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

    let t2 = |v: Vec<f32>, r: usize, c: usize| crate::matrix(v, r, c, device);
    let t1 = |v: Vec<f32>| crate::vector(v, device);
    model.tok_embd.weight = t2(float(hf::EMBD, &[v, d], &mut take)?, v, d);
    model.output_norm.gamma = t1(float(hf::NORM, &[d], &mut take)?);
    for (i, b) in model.blocks.iter_mut().enumerate() {
        let n = |part: &str| hf::layer(i, part);
        b.attn_norm.gamma = t1(float(&n(hf::ATTN_NORM), &[d], &mut take)?);
        b.ffn_norm.gamma = t1(float(&n(hf::FFN_NORM), &[d], &mut take)?);
        let (attn_sub, ffn_sub) = if one_bit {
            (hf::ONE_BIT_ATTN_SUB_NORM, hf::ONE_BIT_FFN_SUB_NORM)
        } else {
            (hf::ATTN_SUB_NORM, hf::FFN_SUB_NORM)
        };
        b.attn.sub_norm.gamma = t1(float(&n(attn_sub), &[d], &mut take)?);
        b.ffn.sub_norm.gamma = t1(float(&n(ffn_sub), &[f], &mut take)?);
        for (target, l) in Projection::ALL.into_iter().zip(b.projections_mut()) {
            // From the config, not `l.weight.dims()`: asking a lazily initialised parameter its
            // shape initialises it, and a 2B model would first be filled with random numbers.
            let (in_f, out_f) = target.dims(d, cfg.kv_heads() * (d / cfg.n_heads), f);
            let name = n(&hf::weight(target));
            l.weight = t2(linear(&name, out_f, in_f, &mut take)?, out_f, in_f);
        }
    }
    // Anything left over is a tensor this architecture does not have.
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
    write_import(out, &model, &cfg, from, form, tensors, tok_bytes, template)
}

/// Writes an imported model as step 0 of `out`, with its tokenizer and chat template, in one
/// atomic checkpoint directory.
#[allow(clippy::too_many_arguments)]
fn write_import(
    out: &Path,
    model: &Transformer,
    cfg: &ModelConfig,
    from: &Path,
    form: String,
    tensors: usize,
    tokenizer: Vec<u8>,
    template: Option<String>,
) -> Result<ImportReport, CheckpointError> {
    let chat_template = template.is_some();
    let mut extra = vec![(TOKENIZER, tokenizer.clone())];
    if let Some(t) = template {
        extra.push((CHAT_TEMPLATE, t.into_bytes()));
    }
    let provenance = Provenance {
        run: serde_json::json!({ "import": from.display().to_string(), "form": form }),
        ..Provenance::new(Origin::Import, None)
    };
    let state = State::new(cfg.clone(), sha256_hex(&tokenizer), provenance);
    let checkpoint = save(
        out,
        &Contents {
            model,
            state: &state,
            optim: None,
            tokenizer: None,
            extra: &extra,
            packed_from: None,
        },
        1,
    )?;
    Ok(ImportReport {
        checkpoint,
        config: cfg.clone(),
        form,
        tensors,
        chat_template,
    })
}

/// Refuses a run directory that already holds checkpoints: an import starts a run.
fn fresh(out: &Path) -> Result<(), CheckpointError> {
    if crate::dir(out).exists() {
        return Err(CheckpointError::Bad {
            path: out.to_path_buf(),
            msg: "already holds checkpoints; import into a new directory".into(),
        });
    }
    Ok(())
}

/// The model config, and for packed weights whether `weight_scale` divides (`bitlinear`) or
/// multiplies (`autobitlinear`). Every key that would change the computation and that tritium
/// does not implement is refused by name.
fn model_config(hf: &HfConfig) -> Result<(ModelConfig, Option<bool>), String> {
    // `architectures` names the class transformers builds; model_type alone only when it is absent.
    let arch_ok = if hf.architectures.is_empty() {
        hf.model_type.as_deref() == Some("bitnet")
    } else {
        hf.architectures
            .iter()
            .any(|a| a == "BitNetForCausalLM" || a == hf::ONE_BIT_LLM)
    };
    // The 1bitLLM reproductions' custom code always quantizes online and has no
    // quantization_config.
    if hf.architectures.iter().any(|a| a == hf::ONE_BIT_LLM) && hf.quantization_config.is_none() {
        return model_config(&HfConfig {
            architectures: vec!["BitNetForCausalLM".into()],
            quantization_config: Some(HfQuant {
                quant_method: "bitnet".into(),
                linear_class: "autobitlinear".into(),
                quantization_mode: "online".into(),
            }),
            ..hf.clone()
        });
    }
    if !arch_ok {
        return Err(format!(
            "architectures = {:?}, model_type = {:?}: only BitNetForCausalLM (model_type \"bitnet\") and the 1bitLLM reproductions' BitnetForCausalLM are imported",
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
        // transformers' defaults: BitNetConfig's 500000, Llama's (1bitLLM's) 10000.
        (None, None) if hf.model_type.as_deref() == Some("bitnet") => 500000.0,
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
fn read_tensors(from: &Path) -> Result<BTreeMap<String, Desc>, CheckpointError> {
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
        out.extend(read_header(&file)?);
    }
    Ok(out)
}

/// The tensor table of a safetensors file: an 8-byte little-endian header length, then a JSON
/// object `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`, offsets
/// counted from the end of the header. Every offset is checked against the file's size and every
/// size against the shape and dtype.
fn read_header(file: &Path) -> Result<BTreeMap<String, Desc>, CheckpointError> {
    use std::io::Read;
    let bad = |msg: String| CheckpointError::Bad {
        path: file.to_path_buf(),
        msg: format!("not a safetensors file ({msg})"),
    };
    let mut f = std::fs::File::open(file).map_err(crate::io(file))?;
    let size = f.metadata().map_err(crate::io(file))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|e| bad(e.to_string()))?;
    let n = u64::from_le_bytes(n);
    if n > 100 << 20 || 8 + n > size {
        return Err(bad(format!("header of {n} bytes in a file of {size}")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let table: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    let data_start = 8 + n;
    let mut out = BTreeMap::new();
    for (name, info) in table {
        if name == "__metadata__" {
            continue;
        }
        let dtype: safetensors::Dtype = serde_json::from_value(info["dtype"].clone())
            .map_err(|e| bad(format!("tensor {name}: dtype: {e}")))?;
        let shape: Vec<usize> = serde_json::from_value(info["shape"].clone())
            .map_err(|e| bad(format!("tensor {name}: shape: {e}")))?;
        let offsets: [u64; 2] = serde_json::from_value(info["data_offsets"].clone())
            .map_err(|e| bad(format!("tensor {name}: data_offsets: {e}")))?;
        let [begin, end] = offsets;
        let want = shape
            .iter()
            .try_fold(dtype.bitsize() as u64, |a, &d| a.checked_mul(d as u64))
            .map(|bits| bits.div_ceil(8));
        if begin > end || data_start + end > size || want != Some(end - begin) {
            return Err(bad(format!(
                "tensor {name}: bytes {begin}..{end} for {dtype:?} {shape:?} in a file of {size}"
            )));
        }
        out.insert(
            name,
            Desc {
                file: file.to_path_buf(),
                dtype,
                shape,
                start: data_start + begin,
                len: (end - begin) as usize,
            },
        );
    }
    Ok(out)
}

/// A float tensor of `shape` as f32 values (bf16 and f16 widen exactly).
fn to_f32(t: &Raw, shape: &[usize]) -> Result<Vec<f32>, String> {
    if t.shape != shape {
        return Err(format!("shape {:?}, expected {shape:?}", t.shape));
    }
    hf::widen(t.dtype, &t.data)
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

/// Imports a GGUF of llama.cpp's `bitnet` architecture (TQ2_0, TQ1_0 or I2_S projections, with or
/// without `.scale` tensors; F32, F16 or Q8_0 embedding) as step 0 of the run directory `out`.
/// The tokenizer.json is rebuilt from the file's `tokenizer.ggml.*` (byte-level BPE).
pub fn import_gguf(
    from: &Path,
    out: &Path,
    device: &Device,
) -> Result<ImportReport, CheckpointError> {
    use tritium_gguf::names::{self as gnames, BlockNorm};
    use tritium_gguf::{GgmlType, Gguf};
    let bad = |msg: String| CheckpointError::Bad {
        path: from.to_path_buf(),
        msg,
    };
    fresh(out)?;
    let bytes = std::fs::read(from).map_err(crate::io(from))?;
    let g = Gguf::parse(&bytes).map_err(|e| bad(e.to_string()))?;
    let h = tritium_gguf::hparams::read(&g).map_err(bad)?;
    if g.tensor(gnames::OUTPUT).is_some() {
        return Err(bad(format!(
            "tensor {}: an untied output head; tritium's models share the embedding with it",
            gnames::OUTPUT
        )));
    }
    let cfg = ModelConfig {
        vocab_size: h.vocab,
        d_model: h.d_model,
        n_layers: h.n_layers,
        n_heads: h.n_heads,
        n_kv_heads: Some(h.n_kv_heads),
        d_ff: h.d_ff,
        ffn_act: match h.act {
            tritium_gguf::hparams::Act::Silu => FfnAct::Silu,
            tritium_gguf::hparams::Act::Relu2 => FfnAct::Relu2,
        },
        rope_theta: h.rope_theta,
        norm_eps: h.eps,
        max_seq_len: h.ctx,
        quant: Quant::Ternary,
        quant_warmup_steps: 0,
    };
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    // A tensor of the given ggml dims and one of `types`, as f32 values (ggml order: the first
    // dim fastest, so a `[in, out]` tensor is row-major `[out, in]`).
    let floats =
        |name: &str, dims: &[usize], types: &[GgmlType]| -> Result<Vec<f32>, CheckpointError> {
            let v = g.dequantize(g.expect(name, dims, types).map_err(bad)?);
            match v.iter().find(|x| !x.is_finite()) {
                Some(x) => Err(bad(format!("tensor {name} holds {x}"))),
                None => Ok(v),
            }
        };
    let float_types = [GgmlType::F32, GgmlType::F16];
    let (d, f, v) = (cfg.d_model, cfg.d_ff, cfg.vocab_size);
    let mut model = Transformer::new(&cfg, device);
    let t2 = |v: Vec<f32>, r: usize, c: usize| crate::matrix(v, r, c, device);
    let t1 = |v: Vec<f32>| crate::vector(v, device);
    model.tok_embd.weight = t2(
        floats(
            gnames::TOKEN_EMBD,
            &[d, v],
            &[GgmlType::F32, GgmlType::F16, GgmlType::Q8_0],
        )?,
        v,
        d,
    );
    model.output_norm.gamma = t1(floats(gnames::OUTPUT_NORM, &[d], &float_types)?);
    let mut form = String::new();
    for (i, b) in model.blocks.iter_mut().enumerate() {
        for (norm, width) in BlockNorm::ALL.into_iter().zip([d, d, d, f]) {
            let gamma = t1(floats(&norm.weight(i), &[width], &float_types)?);
            match norm {
                BlockNorm::Attn => b.attn_norm.gamma = gamma,
                BlockNorm::AttnSub => b.attn.sub_norm.gamma = gamma,
                BlockNorm::Ffn => b.ffn_norm.gamma = gamma,
                BlockNorm::FfnSub => b.ffn.sub_norm.gamma = gamma,
            }
        }
        for (p, l) in Projection::ALL.into_iter().zip(b.projections_mut()) {
            // From the config (see import_hf): the lazy parameter stays uninitialised.
            let (cols, rows) = p.dims(d, cfg.kv_heads() * (d / cfg.n_heads), f);
            let name = p.weight(i);
            let ty = g.tensor(&name).map(|t| t.ty.name()).unwrap_or("?");
            form = format!("GGUF, {ty} projections");
            let mut w = floats(
                &name,
                &[cols, rows],
                &[GgmlType::Tq2_0, GgmlType::Tq1_0, GgmlType::I2S],
            )?;
            if g.tensor(&p.scale(i)).is_some() {
                let s = floats(&p.scale(i), &[1], &[GgmlType::F32])?[0];
                w.iter_mut().for_each(|x| *x *= s);
                form.push_str(" with exact scales");
            }
            let (trits, scale) =
                trits_and_scale(&w).map_err(|m| bad(format!("tensor {name}: {m}")))?;
            l.weight = t2(hf::exact_latent(&trits, scale), rows, cols);
        }
    }
    let tok_json = gguf_tokenizer_json(&g).map_err(bad)?;
    let template = g
        .get(gnames::tokenizer::CHAT_TEMPLATE)
        .and_then(|v| v.as_str())
        .map(String::from);
    let tensors = g.tensors.len();
    write_import(
        out,
        &model,
        &cfg,
        from,
        form,
        tensors,
        tok_json.into_bytes(),
        template,
    )
}

/// Trits and the one scale of a dequantized ternary tensor: every non-zero must have the same
/// magnitude (tritium's BitLinear has one scale per tensor; a file with per-block scales that
/// differ is a model it cannot hold exactly).
fn trits_and_scale(w: &[f32]) -> Result<(Vec<i8>, f32), String> {
    let scale = w.iter().find(|x| **x != 0.0).map_or(0.0, |x| x.abs());
    if let Some(x) = w
        .iter()
        .find(|x| **x != 0.0 && (x.abs() - scale).abs() > 1e-6 * scale)
    {
        return Err(format!(
            "non-zero weights of magnitude {scale} and {}: per-block scales that differ, which one scale per tensor cannot hold",
            x.abs()
        ));
    }
    let trits = w
        .iter()
        .map(|x| (x.signum() * (*x != 0.0) as i32 as f32) as i8)
        .collect();
    Ok((trits, scale))
}

/// A Hugging Face tokenizer.json for a GGUF's byte-level BPE (`tokenizer.ggml.model = "gpt2"`):
/// vocabulary, merges, and control tokens as special added tokens. Llama-3's pre-tokenizer
/// (`tokenizer.ggml.pre = "llama-bpe"`) splits with its own regex before the byte-level step.
pub fn gguf_tokenizer_json(g: &tritium_gguf::Gguf) -> Result<String, String> {
    use tritium_gguf::Value;
    use tritium_gguf::names::{token_type, tokenizer as keys};
    let model = g.get(keys::MODEL).and_then(Value::as_str);
    if model != Some("gpt2") {
        return Err(format!(
            "{} = {model:?}: only byte-level BPE (\"gpt2\") tokenizers are rebuilt",
            keys::MODEL
        ));
    }
    let strings = |key: &str| -> Result<Vec<String>, String> {
        match g.get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(String::from)
                        .ok_or_else(|| format!("{key} holds a non-string"))
                })
                .collect(),
            _ => Err(format!("{key} is missing")),
        }
    };
    let tokens = strings(keys::TOKENS)?;
    let merges = strings(keys::MERGES).unwrap_or_default();
    let types: Vec<i32> = match g.get(keys::TOKEN_TYPE) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::I32(x) => *x,
                Value::U32(x) => *x as i32,
                _ => token_type::NORMAL,
            })
            .collect(),
        _ => vec![token_type::NORMAL; tokens.len()],
    };
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        let ty = types.get(id).copied().unwrap_or(token_type::NORMAL);
        if ty == token_type::UNUSED {
            continue; // padding rows (`[PAD…]`) that no text encodes to
        }
        vocab.insert(tok.clone(), id.into());
        if ty == token_type::CONTROL || ty == token_type::USER_DEFINED {
            added.push(serde_json::json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == token_type::CONTROL,
            }));
        }
    }
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true,
    });
    let pre = keys::Pre::of(g.get(keys::PRE).and_then(Value::as_str), &tokens)?;
    let pre_tokenizer = match pre {
        keys::Pre::Llama3 => serde_json::json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": keys::LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            ],
        }),
        keys::Pre::Gpt2 => byte_level.clone(),
    };
    // A file that asks for a BOS before every prompt (bitnet.cpp's 2B4T) was pretrained with it
    // at every document's start: the tokenizer says so as Llama-3's tokenizer.json does.
    let bos = g
        .get(keys::BOS_ID)
        .and_then(Value::as_u32)
        .filter(|_| pre.add_bos(g.get(keys::ADD_BOS).and_then(Value::as_bool)))
        .and_then(|id| Some((tokens.get(id as usize)?, id)));
    let post_processor = match bos {
        Some((name, id)) => crate::bos::post_processor(name, id),
        None => byte_level.clone(),
    };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": pre.ignore_merges(), "vocab": vocab, "merges": merges,
        },
    });
    serde_json::to_string(&json).map_err(|e| e.to_string())
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
