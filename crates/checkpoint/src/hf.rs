//! The Hugging Face `BitNetForCausalLM` layout, read by [`crate::import`] and written by
//! `tritium export --format safetensors`: its tensor names, and the latent weights that carry
//! exact trits and scales through a format that stores master weights.

use std::path::Path;

use tritium_model::Projection;

use crate::CheckpointError;
use crate::adapter::{Adapter, AdapterSet};

pub const EMBD: &str = "model.embed_tokens.weight";
pub const NORM: &str = "model.norm.weight";
/// Per layer, after `model.layers.N.`:
pub const ATTN_NORM: &str = "input_layernorm.weight";
pub const ATTN_SUB_NORM: &str = "self_attn.attn_sub_norm.weight";
pub const FFN_NORM: &str = "post_attention_layernorm.weight";
pub const FFN_SUB_NORM: &str = "mlp.ffn_sub_norm.weight";

/// The 1bitLLM reproductions' custom class (`model_type = "llama"`), and its names for the two
/// sub-norms; everything else is named as above.
pub const ONE_BIT_LLM: &str = "BitnetForCausalLM";
pub const ONE_BIT_ATTN_SUB_NORM: &str = "self_attn.inner_attn_ln.weight";
pub const ONE_BIT_FFN_SUB_NORM: &str = "mlp.ffn_layernorm.weight";

/// `model.layers.N.<part>`.
pub fn layer(i: usize, part: &str) -> String {
    format!("model.layers.{i}.{part}")
}

/// The module of a projection inside a layer (`self_attn.q_proj`).
pub fn module(p: Projection) -> &'static str {
    match p {
        Projection::Q => "self_attn.q_proj",
        Projection::K => "self_attn.k_proj",
        Projection::V => "self_attn.v_proj",
        Projection::O => "self_attn.o_proj",
        Projection::Gate => "mlp.gate_proj",
        Projection::Up => "mlp.up_proj",
        Projection::Down => "mlp.down_proj",
    }
}

/// The module's own name, as PEFT's `target_modules` lists it (`q_proj`).
pub fn leaf(p: Projection) -> &'static str {
    module(p).rsplit('.').next().unwrap_or_default()
}

/// A projection's weight inside a layer (`self_attn.q_proj.weight`).
pub fn weight(p: Projection) -> String {
    format!("{}.weight", module(p))
}

/// The values of a float safetensors tensor as f32 (bf16 and f16 widen exactly); a value that is
/// not finite is refused.
pub(crate) fn widen(dtype: safetensors::Dtype, bytes: &[u8]) -> Result<Vec<f32>, String> {
    use safetensors::Dtype;
    let v: Vec<f32> = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => return Err(format!("dtype {other:?}, expected F32, BF16 or F16")),
    };
    match v.iter().find(|x| !x.is_finite()) {
        Some(x) => Err(format!("holds {x}")),
        None => Ok(v),
    }
}

/// PEFT's name of a LoRA factor: `base_model.model.model.layers.N.<module>.lora_{A,B}.weight`.
pub fn peft_name(layer: usize, target: Projection, part: &str) -> String {
    format!(
        "base_model.model.{}.{part}.weight",
        self::layer(layer, module(target))
    )
}

/// The layer, projection and factor (`lora_A` or `lora_B`) a PEFT tensor name holds.
fn parse_peft_name(name: &str) -> Option<(usize, Projection, &str)> {
    let rest = name.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let rest = rest.strip_suffix(".weight")?;
    let (module_name, part) = rest.rsplit_once('.')?;
    let target = Projection::ALL
        .into_iter()
        .find(|p| module(*p) == module_name)?;
    Some((layer.parse().ok()?, target, part))
}

/// Reads a PEFT LoRA adapter directory (`adapter_config.json`, `adapter_model.safetensors`) as an
/// [`AdapterSet`]. PEFT adds `(lora_alpha/r)·B·A·x` to a projection's output, as tritium does;
/// what would change that (rsLoRA, DoRA, per-module ranks, biases, transposed factors) is refused
/// by name.
pub fn read_peft(dir: &Path) -> Result<AdapterSet, CheckpointError> {
    let bad = |path: &Path, msg: String| CheckpointError::Bad {
        path: path.to_path_buf(),
        msg,
    };
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(crate::io(&cfg_path))?;
    let cfg: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&cfg_path, e.to_string()))?;
    if cfg["peft_type"] != "LORA" {
        return Err(bad(
            &cfg_path,
            format!(
                "peft_type = {}: only LORA adapters are read",
                cfg["peft_type"]
            ),
        ));
    }
    for (key, ok) in [
        ("use_rslora", cfg["use_rslora"].as_bool() != Some(true)),
        ("use_dora", cfg["use_dora"].as_bool() != Some(true)),
        (
            "fan_in_fan_out",
            cfg["fan_in_fan_out"].as_bool() != Some(true),
        ),
        ("bias", matches!(cfg["bias"].as_str(), None | Some("none"))),
        (
            "rank_pattern",
            cfg["rank_pattern"].as_object().is_none_or(|m| m.is_empty()),
        ),
        (
            "alpha_pattern",
            cfg["alpha_pattern"]
                .as_object()
                .is_none_or(|m| m.is_empty()),
        ),
        (
            "modules_to_save",
            cfg["modules_to_save"].is_null()
                || cfg["modules_to_save"]
                    .as_array()
                    .is_some_and(|a| a.is_empty()),
        ),
    ] {
        if !ok {
            return Err(bad(
                &cfg_path,
                format!(
                    "{key} = {}: not supported (tritium's LoRA is plain (alpha/r)·B·A on the seven projections)",
                    cfg[key]
                ),
            ));
        }
    }
    let rank = cfg["r"].as_u64().filter(|&r| r > 0).ok_or_else(|| {
        bad(
            &cfg_path,
            format!("r = {}: a positive rank expected", cfg["r"]),
        )
    })? as usize;
    let alpha = cfg["lora_alpha"]
        .as_f64()
        .filter(|a| a.is_finite())
        .ok_or_else(|| {
            bad(
                &cfg_path,
                format!("lora_alpha = {}: a number expected", cfg["lora_alpha"]),
            )
        })? as f32;

    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).map_err(crate::io(&path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(&path, format!("not a safetensors file ({e})")))?;
    let read = |name: &str, shape: [usize; 2]| -> Result<Vec<f32>, CheckpointError> {
        let t = st
            .tensor(name)
            .map_err(|_| bad(&path, format!("tensor {name} is missing")))?;
        if t.shape() != shape {
            return Err(bad(
                &path,
                format!("tensor {name}: shape {:?}, expected {shape:?}", t.shape()),
            ));
        }
        widen(t.dtype(), t.data()).map_err(|m| bad(&path, format!("tensor {name}: {m}")))
    };
    let mut names = st.names();
    names.sort();
    let mut adapters = Vec::new();
    for name in &names {
        let (layer, target, part) = parse_peft_name(name).ok_or_else(|| {
            bad(&path, format!("tensor {name} is not base_model.model.model.layers.N.<projection>.lora_A/B.weight"))
        })?;
        match part {
            "lora_A" => {}
            "lora_B" => continue,
            other => {
                return Err(bad(
                    &path,
                    format!("tensor {name}: {other} is neither lora_A nor lora_B"),
                ));
            }
        }
        let a_t = st.tensor(name).map_err(|e| bad(&path, e.to_string()))?;
        let d_in = a_t.shape().get(1).copied().unwrap_or(0);
        let b_name = peft_name(layer, target, "lora_B");
        let d_out = st
            .tensor(&b_name)
            .map_err(|_| bad(&path, format!("tensor {b_name} is missing")))?
            .shape()
            .first()
            .copied()
            .unwrap_or(0);
        adapters.push(Adapter {
            layer,
            target,
            rank,
            d_in,
            d_out,
            a: read(name, [rank, d_in])?,
            b: read(&b_name, [d_out, rank])?,
            alpha,
        });
    }
    if adapters.is_empty() {
        return Err(bad(&path, "holds no lora_A tensors".into()));
    }
    Ok(AdapterSet {
        adapters,
        base_hash: None,
    })
}

/// Latent weights that our absmean quantizer maps back to exactly `trits · g`: the non-zeros
/// have mean magnitude `g/p` (p: the fraction of non-zeros), so mean|W| = g, and every |W|/g is
/// at least 0.7/p ≥ 0.7, which rounds and clamps to 1.
///
/// The magnitudes are spread ±30% around `g/p` in pairs that cancel, not all equal: a float sum
/// of millions of equal values drifts systematically (by 5e-4 relative at 65k values in flex's
/// mean, enough to move the scale visibly), while spread values round at random and the mean
/// comes out at `g` to float precision.
pub fn exact_latent(trits: &[i8], g: f32) -> Vec<f32> {
    let nonzero = trits.iter().filter(|&&t| t != 0).count();
    if nonzero == 0 {
        return vec![0.0; trits.len()];
    }
    let m = g as f64 * trits.len() as f64 / nonzero as f64;
    let mut pending: Option<f64> = None;
    let mut k = 0u64;
    let mut out: Vec<f32> = trits
        .iter()
        .map(|&t| {
            if t == 0 {
                return 0.0;
            }
            let u = match pending.take() {
                Some(u) => -u,
                None => {
                    k += 1;
                    let u = 0.3 * (2.0 * unit(k) - 1.0);
                    pending = Some(u);
                    u
                }
            };
            (t as f64 * m * (1.0 + u)) as f32
        })
        .collect();
    // An odd count leaves one value without its partner: it takes the plain magnitude.
    if pending.is_some()
        && let Some(last) = out.iter_mut().rev().find(|x| **x != 0.0)
    {
        *last = last.signum() * m as f32;
    }
    out
}

/// [`exact_latent`] in bf16, as a master-weight file stores it: rounding each value to bf16 would
/// move the mean by about 1e-5 relative, enough to flip int8 activations downstream, so values
/// are then nudged by one bf16 step at a time (magnitudes only, far from the trit boundary) until
/// the sum is within half a step of `n·g`.
pub fn exact_latent_bf16(trits: &[i8], g: f32) -> Vec<half::bf16> {
    use half::bf16;
    let mut w: Vec<bf16> = exact_latent(trits, g)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let target = g as f64 * trits.len() as f64;
    let sum = |w: &[bf16]| w.iter().map(|x| x.to_f64().abs()).sum::<f64>();
    let mut diff = target - sum(&w);
    let nonzero: Vec<usize> = (0..w.len()).filter(|&i| trits[i] != 0).collect();
    // Each nudge moves the sum by one step; a bounded number of passes over the non-zeros.
    for k in 0..4 * nonzero.len() {
        let i = nonzero[k % nonzero.len()];
        let x = w[i];
        let mag = bf16::from_f64(x.to_f64().abs());
        let bigger = bf16::from_bits(mag.to_bits() + 1);
        let smaller = bf16::from_bits(mag.to_bits() - 1);
        let step = (bigger.to_f64() - mag.to_f64()).min(mag.to_f64() - smaller.to_f64());
        if diff.abs() <= step / 2.0 {
            break;
        }
        let new = if diff > 0.0 { bigger } else { smaller };
        diff -= new.to_f64() - mag.to_f64();
        w[i] = if x.to_f64() < 0.0 { -new } else { new };
    }
    w
}

/// A deterministic number in [0, 1) for index `k` (splitmix64).
fn unit(k: u64) -> f64 {
    let mut z = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / 2f64.powi(64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The latent weights of `T·g` quantize back to `T·g`, not to the shrunk `T·g·p`.
    #[test]
    fn latent_weights_keep_trits_and_scale() {
        let trits = [1i8, 0, -1, 0, 0, 1, 0, 0];
        let w = exact_latent(&trits, 0.25);
        let mean = w.iter().map(|x| x.abs()).sum::<f32>() / w.len() as f32;
        assert!((mean - 0.25).abs() < 1e-7, "{mean}");
        for (x, t) in w.iter().zip(trits) {
            assert_eq!((x / mean).round().clamp(-1.0, 1.0), t as f32);
        }
    }
}
