//! LoRA adapters applied beside the ternary projections, with llama.cpp's runtime semantics:
//! `y = BitLinear(x) + (alpha / r)·B(A·x)`, where `x` is the projection's full-precision input
//! (before activation quantization) — except that where the base GGUF carries a `.scale` tensor
//! for `ffn_gate` or `ffn_up`, llama.cpp multiplies the branch by it too, and so does the engine
//! ([`Projection::lora_branch_scaled`]): one adapter file means the same in both. The file is a llama.cpp LoRA-adapter GGUF:
//! `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (f32), and tensors
//! `<base tensor>.lora_a` (ggml `[in, r]`, i.e. `A` as `[r, in]`) and `<base>.lora_b` (`[r, out]`,
//! i.e. `B` as `[out, r]`), F32, F16 or Q8_0.

use std::path::Path;

use tritium_gguf::names::{self, BASE_HASH, LoraPart, Projection, adapter, general};
use tritium_gguf::{GgmlType, Gguf, Value};

use crate::Error;
use crate::kernels::{self, Isa};
use crate::model::Model;

#[derive(Debug, Clone)]
pub struct Pair {
    pub rank: usize,
    pub a: Vec<f32>, // [r, in]
    pub b: Vec<f32>, // [out, r]
    /// What llama.cpp multiplies this branch by besides `alpha/r`: the base's `.scale` for the
    /// projections it scales after the adapter is added ([`Projection::lora_branch_scaled`]),
    /// else 1.
    pub branch: f32,
}

#[derive(Debug, Clone)]
pub struct Lora {
    pub alpha: f32,
    /// `scale · alpha / r` per pair, computed at use.
    pub user_scale: f32,
    /// `[layer][projection]`
    pub pairs: Vec<[Option<Pair>; 7]>,
    pub tensors: usize,
}

/// The first 12 characters of a hash, for messages (by characters: a malformed file's string
/// may hold any UTF-8).
fn short(h: &str) -> String {
    h.chars().take(12).collect()
}

impl Lora {
    pub fn load(path: &Path, model: &Model) -> Result<Lora, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let g = Gguf::parse(&bytes).map_err(|e| Error::gguf(path, e))?;
        let bad = Error::invalid(path);
        if g.get(general::TYPE).and_then(Value::as_str) != Some("adapter")
            || g.get(adapter::TYPE).and_then(Value::as_str) != Some("lora")
        {
            return Err(bad(format!(
                "not a LoRA adapter ({} = \"adapter\" and {} = \"lora\" expected)",
                general::TYPE,
                adapter::TYPE
            )));
        }
        if let Some(arch) = g.get(general::ARCHITECTURE).and_then(Value::as_str)
            && arch != names::ARCH
        {
            return Err(bad(format!(
                "adapter for architecture {arch:?}, the model is {:?}",
                names::ARCH
            )));
        }
        // tritium writes the base checkpoint's hash into both files; where both carry one they
        // must agree, whatever the shapes say (same-shaped bases are the common mistake).
        let hash = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        if let (Some(want), Some(have)) = (hash(g.get(BASE_HASH)), hash(model.get(BASE_HASH)))
            && want != have
        {
            return Err(bad(format!(
                "adapter was trained on base {}…, but {} is base {}… ({BASE_HASH} differs): wrong base model",
                short(&want),
                model.path.display(),
                short(&have)
            )));
        }
        // An adapter written for a base with `.scale` tensors holds B/s on the branches llama.cpp
        // scales; on a folded base (or the other way round) it would be silently off by s.
        if let Some(kind) = g.get(names::LORA_BASE_SCALES).and_then(Value::as_str) {
            let has = model
                .layers
                .iter()
                .any(|l| l.scales.iter().any(Option::is_some));
            let base = if has { "exact" } else { "folded" };
            if kind != base {
                return Err(bad(format!(
                    "adapter was written for a base with {kind} scales, but {} has {base} ones; \
                     export the adapter again for this base (`tritium export --lora ADAPTER \
                     --base {}`)",
                    model.path.display(),
                    model.path.display()
                )));
            }
        }
        let alpha = g
            .get(adapter::LORA_ALPHA)
            .and_then(Value::as_f32)
            .ok_or_else(|| bad(format!("{} (f32) is missing", adapter::LORA_ALPHA)))?;
        let c = &model.cfg;
        let mut pairs: Vec<[Option<Pair>; 7]> =
            (0..c.n_layers).map(|_| Default::default()).collect();
        let mut tensors = 0;
        for t in &g.tensors {
            let base = match names::parse_lora(&t.name) {
                Some((base, LoraPart::A)) => base,
                Some((_, LoraPart::B)) => continue,
                None => {
                    return Err(bad(format!(
                        "tensor {} is neither <base>.lora_a nor <base>.lora_b",
                        t.name
                    )));
                }
            };
            let target = parse_base(base, c.n_layers).ok_or_else(|| {
                bad(format!(
                    "tensor {}: {base} is not a ternary projection of this {}-layer model",
                    t.name, c.n_layers
                ))
            })?;
            let b_name = names::lora_b(base);
            let tb = g
                .tensor(&b_name)
                .ok_or_else(|| bad(format!("{} has no matching {b_name}", t.name)))?;
            let (cols, rows) = c.projection_shape(target.1);
            let ok_ty = |ty: GgmlType| matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Q8_0);
            if !ok_ty(t.ty) || !ok_ty(tb.ty) {
                return Err(bad(format!(
                    "{base}: LoRA tensors must be F32, F16 or Q8_0"
                )));
            }
            if t.dims.len() != 2
                || tb.dims.len() != 2
                || t.dims[0] != cols as u64
                || tb.dims[1] != rows as u64
                || t.dims[1] != tb.dims[0]
                || t.dims[1] == 0
            {
                return Err(bad(format!(
                    "{base}: lora_a {:?} and lora_b {:?} do not fit the base [{cols}, {rows}] (wrong base model?)",
                    t.dims, tb.dims
                )));
            }
            let rank = t.dims[1] as usize;
            let base_scale = model.layers[target.0].scales[target.1.index()];
            pairs[target.0][target.1.index()] = Some(Pair {
                rank,
                branch: match base_scale {
                    Some(s) if target.1.lora_branch_scaled() => s,
                    _ => 1.0,
                },
                a: g.dequantize(t),
                b: g.dequantize(tb),
            });
            tensors += 2;
        }
        if tensors == 0 {
            return Err(bad("the adapter has no lora_a/lora_b tensors".into()));
        }
        Ok(Lora {
            alpha,
            user_scale: 1.0,
            pairs,
            tensors,
        })
    }

    /// `out[t·stride + offset + o] += (alpha/r)·(B·(A·x_t))[o]` for projection `p` of `layer`.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &self,
        isa: Isa,
        layer: usize,
        p: usize,
        x: &[f32],
        d_in: usize,
        out: &mut [f32],
        stride: usize,
        offset: usize,
    ) {
        let Some(pair) = &self.pairs[layer][p] else {
            return;
        };
        let scale = pair.branch
            * self.user_scale
            * if self.alpha != 0.0 {
                self.alpha / pair.rank as f32
            } else {
                1.0
            };
        let mut ax = vec![0f32; pair.rank];
        for (t, xt) in x.chunks_exact(d_in).enumerate() {
            for (k, v) in ax.iter_mut().enumerate() {
                *v = kernels::dot(isa, &pair.a[k * d_in..(k + 1) * d_in], xt);
            }
            let row = &mut out[t * stride + offset..];
            for (o, y) in row.iter_mut().take(pair.b.len() / pair.rank).enumerate() {
                *y += scale * kernels::dot(isa, &pair.b[o * pair.rank..(o + 1) * pair.rank], &ax);
            }
        }
    }
}

/// `blk.N.<projection>.weight` of a model with `layers` blocks → (N, projection).
fn parse_base(base: &str, layers: usize) -> Option<(usize, Projection)> {
    names::parse_projection(base).filter(|&(n, _)| n < layers)
}
