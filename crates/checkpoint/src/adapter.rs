//! LoRA adapters as one typed value: [`Adapter`] is one adapted projection, [`AdapterSet`] the
//! adapters of a model with the base they belong to. The same values are read from a model
//! ([`AdapterSet::from_model`]), written to and read from `adapter.safetensors` (PyTorch
//! orientation: `A` `[r, in]`, `B` `[out, r]`), and handed to export for the GGUF form.
//! [`LoraLayout`] (`lora.json`) is what a fine-tuning checkpoint needs to rebuild its adapters
//! before loading weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tritium_gguf::names::{self, LoraPart, Projection};
use tritium_model::Transformer;
use tritium_model::burn::prelude::*;

use crate::fsutil::write_atomic;
use crate::{CheckpointError, LORA};

/// The adapter layout of a fine-tuning checkpoint (`lora.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoraLayout {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f64,
    pub target: Vec<Projection>,
}

impl LoraLayout {
    /// `dir/lora.json`, if there is one.
    pub fn read(dir: &Path) -> Result<Option<LoraLayout>, CheckpointError> {
        let path = dir.join(LORA);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| CheckpointError::Bad {
                    path,
                    msg: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CheckpointError::Io { path, source }),
        }
    }

    /// The `lora.json` bytes, for [`crate::Contents::extra`].
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("layout serializes")
    }
}

/// One adapted projection: `y += (alpha / rank)·B·(A·x)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    pub layer: usize,
    pub target: Projection,
    pub rank: usize,
    pub d_in: usize,
    pub d_out: usize,
    /// `[rank, d_in]` row-major.
    pub a: Vec<f32>,
    /// `[d_out, rank]` row-major.
    pub b: Vec<f32>,
    pub alpha: f32,
}

impl Adapter {
    /// The base tensor's GGUF name, `blk.N.<stem>.weight`.
    pub fn base_name(&self) -> String {
        self.target.weight(self.layer)
    }
}

/// The adapters of one model, and the base checkpoint's hash when known.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSet {
    pub adapters: Vec<Adapter>,
    pub base_hash: Option<String>,
}

/// `adapter.json` beside `adapter.safetensors`: the layout and the base, for people and tools.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterInfo {
    pub rank: usize,
    pub alpha: f32,
    pub target: Vec<Projection>,
    pub dropout: f64,
    /// The base checkpoint the adapter applies to.
    pub base: PathBuf,
    pub base_hash: Option<String>,
    pub tensors: usize,
}

fn values(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().iter::<f32>().collect()
}

impl AdapterSet {
    /// The adapters attached to `model`'s BitLinears, block by block in projection order.
    pub fn from_model(model: &Transformer, base_hash: Option<String>) -> AdapterSet {
        let mut adapters = Vec::new();
        for (layer, b) in model.blocks.iter().enumerate() {
            for (target, l) in Projection::ALL.into_iter().zip(b.projections()) {
                if let Some(lo) = &l.lora {
                    let [d_out, d_in] = l.dims();
                    adapters.push(Adapter {
                        layer,
                        target,
                        rank: lo.rank(),
                        d_in,
                        d_out,
                        a: values(lo.a.val()),
                        b: values(lo.b.val()),
                        alpha: lo.alpha,
                    });
                }
            }
        }
        AdapterSet {
            adapters,
            base_hash,
        }
    }

    /// Attaches these adapters to `model` (replacing any it has), each checked against the shape
    /// of the projection it adapts.
    pub fn attach(&self, model: &mut Transformer, device: &Device) -> Result<(), CheckpointError> {
        let bad = |msg: String| CheckpointError::Bad {
            path: std::path::PathBuf::from("adapter"),
            msg,
        };
        let n_layers = model.blocks.len();
        for ad in &self.adapters {
            let block = model.blocks.get_mut(ad.layer).ok_or_else(|| {
                bad(format!(
                    "layer {} of {:?}: the model has {n_layers} layers",
                    ad.layer, ad.target
                ))
            })?;
            let i = Projection::ALL
                .iter()
                .position(|p| *p == ad.target)
                .unwrap_or(0);
            let layer = block
                .projections_mut()
                .into_iter()
                .nth(i)
                .expect("seven projections");
            let [d_out, d_in] = layer.dims();
            if (d_out, d_in) != (ad.d_out, ad.d_in) {
                return Err(bad(format!(
                    "layer {} {:?}: adapter is [{}, {}], the projection [{d_out}, {d_in}]",
                    ad.layer, ad.target, ad.d_out, ad.d_in
                )));
            }
            let mut lora =
                tritium_model::bitlinear::Lora::new(d_in, d_out, ad.rank, ad.alpha, 0.0, device);
            lora.a = crate::matrix(ad.a.clone(), ad.rank, d_in, device);
            lora.b = crate::matrix(ad.b.clone(), d_out, ad.rank, device);
            layer.lora = Some(lora);
        }
        Ok(())
    }

    /// Writes `dir/adapter.safetensors` (tensors `<base>.lora_a` / `.lora_b`, F32, with `alpha`
    /// and `base_hash` in the metadata) and `dir/adapter.json` from `info`.
    pub fn save(&self, dir: &Path, info: &AdapterInfo) -> Result<PathBuf, CheckpointError> {
        let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        for ad in &self.adapters {
            let base = ad.base_name();
            bufs.push((names::lora_a(&base), vec![ad.rank, ad.d_in], le(&ad.a)));
            bufs.push((names::lora_b(&base), vec![ad.d_out, ad.rank], le(&ad.b)));
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
            .iter()
            .map(|(n, s, b)| {
                let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .expect("shape matches data");
                (n.clone(), v)
            })
            .collect();
        let mut meta = HashMap::new();
        meta.insert("alpha".to_string(), info.alpha.to_string());
        if let Some(h) = &self.base_hash {
            meta.insert("base_hash".to_string(), h.clone());
        }
        let st = dir.join("adapter.safetensors");
        let bad = |msg: String| CheckpointError::Bad {
            path: st.clone(),
            msg,
        };
        let data = safetensors::serialize(views, Some(meta)).map_err(|e| bad(e.to_string()))?;
        write_atomic(&st, &data).map_err(|source| CheckpointError::Io {
            path: st.clone(),
            source,
        })?;
        let json = dir.join("adapter.json");
        let text = serde_json::to_string_pretty(info).expect("adapter info serializes");
        write_atomic(&json, text.as_bytes())
            .map_err(|source| CheckpointError::Io { path: json, source })?;
        Ok(st)
    }

    /// Reads an adapter written by [`Self::save`] (or any safetensors file with
    /// `blk.N.<projection>.weight.lora_a` `[r, in]` / `.lora_b` `[out, r]` F32 pairs and an `alpha`
    /// in its metadata, or `adapter.json` beside it).
    pub fn read(path: &Path) -> Result<AdapterSet, CheckpointError> {
        let bad = |msg: String| CheckpointError::Bad {
            path: path.to_path_buf(),
            msg,
        };
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let info = meta.metadata().clone().unwrap_or_default();
        // adapter.json beside the file fills in what the metadata lacks.
        let side: serde_json::Value = path
            .parent()
            .map(|d| d.join("adapter.json"))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let alpha: f32 = match info.get("alpha") {
            Some(a) => a
                .parse()
                .map_err(|_| bad(format!("metadata alpha = {a:?} is not a number")))?,
            None => side["alpha"]
                .as_f64()
                .ok_or_else(|| bad("no alpha in the metadata or in adapter.json".into()))?
                as f32,
        };
        let base_hash = info
            .get("base_hash")
            .cloned()
            .or_else(|| side["base_hash"].as_str().map(String::from));
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>), CheckpointError> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("tensor {name} is missing")))?;
            if t.shape().len() != 2 {
                return Err(bad(format!(
                    "tensor {name}: shape {:?}, expected a 2-D matrix",
                    t.shape()
                )));
            }
            let v = crate::hf::widen(t.dtype(), t.data())
                .map_err(|m| bad(format!("tensor {name}: {m}")))?;
            Ok((t.shape().to_vec(), v))
        };
        let mut tensor_names: Vec<String> = st.names().into_iter().map(String::from).collect();
        tensor_names.sort();
        let mut adapters = Vec::new();
        for n in &tensor_names {
            let base = match names::parse_lora(n) {
                Some((base, LoraPart::A)) => base,
                Some((_, LoraPart::B)) => continue,
                None => {
                    return Err(bad(format!(
                        "tensor {n} is neither <base>.lora_a nor <base>.lora_b"
                    )));
                }
            };
            let (ad, a) = read(n)?;
            let (bd, b) = read(&names::lora_b(base))?;
            if ad[0] == 0 || !alpha.is_finite() {
                return Err(bad(format!(
                    "{base}: rank {} and alpha {alpha}: need rank ≥ 1 and a finite alpha",
                    ad[0]
                )));
            }
            if ad[0] != bd[1] {
                return Err(bad(format!(
                    "{base}: lora_a is {ad:?} and lora_b {bd:?}; their ranks differ"
                )));
            }
            let (layer, target) = names::parse_projection(base).ok_or_else(|| {
                bad(format!(
                    "tensor {n}: {base} is not a ternary projection (blk.N.<projection>.weight)"
                ))
            })?;
            adapters.push(Adapter {
                layer,
                target,
                rank: ad[0],
                d_in: ad[1],
                d_out: bd[0],
                a,
                b,
                alpha,
            });
        }
        if adapters.is_empty() {
            return Err(bad("holds no <base>.lora_a tensors".into()));
        }
        if let Some(orphan) = tensor_names.iter().find(|n| {
            matches!(names::parse_lora(n), Some((b, LoraPart::B)) if !tensor_names.contains(&names::lora_a(b)))
        }) {
            return Err(bad(format!("tensor {orphan} has no matching .lora_a")));
        }
        Ok(AdapterSet {
            adapters,
            base_hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a safetensors file of zero-filled F32 tensors with optional `alpha` metadata.
    fn write(
        dir: &Path,
        name: &str,
        tensors: Vec<(&str, Vec<usize>)>,
        alpha: Option<&str>,
    ) -> PathBuf {
        let bufs: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(n, shape)| {
                let len = shape.iter().product::<usize>() * 4;
                (n.to_string(), shape, vec![0u8; len])
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
            .iter()
            .map(|(n, sh, b)| {
                let v =
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, sh.clone(), b)
                        .unwrap();
                (n.clone(), v)
            })
            .collect();
        let meta = alpha.map(|a| HashMap::from([("alpha".to_string(), a.to_string())]));
        let p = dir.join(name);
        std::fs::write(&p, safetensors::serialize(views, meta).unwrap()).unwrap();
        p
    }

    #[test]
    fn malformed_adapters_are_errors_that_name_the_file_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"not a safetensors file at all").unwrap();
        let e = AdapterSet::read(&junk).unwrap_err().to_string();
        assert!(
            e.contains("junk.safetensors") && e.contains("not a safetensors"),
            "{e}"
        );
        let (qa, qb) = ("blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b");
        let (na, nb) = (
            "blk.0.attn_norm.weight.lora_a",
            "blk.0.attn_norm.weight.lora_b",
        );
        // (file, tensors, alpha in the metadata, what the error must say)
        type Case<'a> = (
            &'a str,
            Vec<(&'a str, Vec<usize>)>,
            Option<&'a str>,
            &'a str,
        );
        let cases: [Case; 4] = [
            ("no-alpha", vec![(qa, vec![2, 4])], None, "no alpha"),
            (
                "orphan",
                vec![(qa, vec![2, 4])],
                Some("4"),
                "blk.0.attn_q.weight.lora_b is missing",
            ),
            (
                "ranks",
                vec![(qa, vec![2, 4]), (qb, vec![4, 3])],
                Some("4"),
                "ranks differ",
            ),
            (
                "name",
                vec![(na, vec![2, 4]), (nb, vec![4, 2])],
                Some("4"),
                "not a ternary projection",
            ),
        ];
        for (file, tensors, alpha, want) in cases {
            let p = write(dir.path(), &format!("{file}.safetensors"), tensors, alpha);
            let e = AdapterSet::read(&p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(file), "{e}");
        }
    }

    #[test]
    fn adapters_round_trip_through_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let set = AdapterSet {
            adapters: vec![Adapter {
                layer: 1,
                target: Projection::Down,
                rank: 2,
                d_in: 3,
                d_out: 4,
                a: (0..6).map(|i| i as f32 * 0.5).collect(),
                b: (0..8).map(|i| -(i as f32)).collect(),
                alpha: 8.0,
            }],
            base_hash: Some("cafe".into()),
        };
        let info = AdapterInfo {
            rank: 2,
            alpha: 8.0,
            target: vec![Projection::Down],
            dropout: 0.0,
            base: "base".into(),
            base_hash: set.base_hash.clone(),
            tensors: 2,
        };
        let p = set.save(dir.path(), &info).unwrap();
        assert_eq!(AdapterSet::read(&p).unwrap(), set);
    }
}
