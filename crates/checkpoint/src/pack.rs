//! `model.bpk` a tensor at a time, for LoRA on a packed base.
//!
//! Burn's own record reads and writes the whole model at once: loading a 2B base as f32 latent
//! weights takes about 10 GB before a single layer could be packed, and writing a checkpoint
//! copies the model again. Here the base is read one projection at a time and packed as it
//! arrives ([`load_packed`]), so the peak is the packed model plus one f32 matrix; and a model
//! whose projections are packed is written with their latent weights copied from the base file
//! they were packed from ([`write`]), so its checkpoint is the same `model.bpk` that an unpacked
//! run writes, which every reader already takes.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use burn_pack::{Bytes, Reader, Tensor as PackTensor, Writer};
use tritium_model::Transformer;
use tritium_model::burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use tritium_model::burn::prelude::*;
use tritium_model::burn::tensor::{AllocationProperty, DType, TensorData};

use crate::CheckpointError;

/// The file a packed model's latent weights come from, as it was when they were read: a
/// checkpoint written later copies them from it, and refuses if it has changed since.
#[derive(Debug, Clone)]
pub struct PackedFrom {
    pub path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

impl PackedFrom {
    pub(crate) fn of(path: &Path) -> Result<PackedFrom, CheckpointError> {
        let meta = std::fs::metadata(path).map_err(crate::io(path))?;
        Ok(PackedFrom {
            path: path.to_path_buf(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    fn check(&self) -> Result<(), CheckpointError> {
        let now = PackedFrom::of(&self.path)?;
        if now.len != self.len || now.modified != self.modified {
            return Err(bad(
                &self.path,
                "changed while a model packed from it was in use: its latent weights can no longer be copied into the checkpoint".into(),
            ));
        }
        Ok(())
    }
}

fn bad(path: &Path, msg: String) -> CheckpointError {
    CheckpointError::Bad {
        path: path.to_path_buf(),
        msg,
    }
}

/// The tensors of a burnpack file by name, their data still on disk.
fn tensors(path: &Path) -> Result<HashMap<String, PackTensor>, CheckpointError> {
    let reader = Reader::from_file_exact(path).map_err(|e| bad(path, e.to_string()))?;
    let list = reader
        .into_tensors()
        .map_err(|e| bad(path, e.to_string()))?;
    Ok(list.into_iter().map(|t| (t.name.clone(), t)).collect())
}

/// `t` as a tensor of `shape` on `device`, read from disk now.
fn read<const D: usize>(
    path: &Path,
    t: PackTensor,
    shape: [usize; D],
    device: &Device,
) -> Result<(ParamId, Tensor<D>), CheckpointError> {
    let name = t.name.clone();
    if t.dtype != DType::F32 || t.shape.to_vec() != shape {
        return Err(bad(
            path,
            format!(
                "tensor {name} is {:?} {:?}; the model expects F32 {shape:?}",
                t.dtype,
                t.shape.to_vec()
            ),
        ));
    }
    let id = t.param_id.map(ParamId::from).unwrap_or_default();
    let bytes = t
        .into_bytes()
        .map_err(|e| bad(path, format!("{name}: {e}")))?;
    let data = TensorData::from_bytes(bytes, shape.to_vec(), DType::F32);
    Ok((id, Tensor::from_data(data, device)))
}

/// `model` (freshly built, its parameters not yet initialised) with the weights of `path`, every
/// projection packed as it is read ([`tritium_model::BitLinear::pack_from`]); the rest
/// (embedding, norms, adapters if the file has them) loads as Burn would load it.
pub fn load_packed(
    mut model: Transformer,
    path: &Path,
    device: &Device,
) -> Result<(Transformer, PackedFrom), CheckpointError> {
    let from = PackedFrom::of(path)?;
    let mut all = tensors(path)?;
    let mut skip = HashSet::new();
    for (at, layer) in model.bitlinears_mut() {
        let name = format!("{at}.weight");
        let t = all
            .remove(&name)
            .ok_or_else(|| bad(path, format!("has no tensor {name}")))?;
        let shape = layer.weight.lazy_shape().dims::<2>();
        let (_, w) = read(path, t, shape, device)?;
        layer.pack_from(w);
        skip.insert(name);
    }
    let model = load_rest(model, path, all, skip)?;
    Ok((model, from))
}

/// Loads `path` into `model` whose projections are already packed (a run resumed): their latent
/// weights in the file are the base's and are passed over.
pub fn load_into_packed(model: Transformer, path: &Path) -> Result<Transformer, CheckpointError> {
    let mut model = model;
    let mut all = tensors(path)?;
    let mut skip = HashSet::new();
    for (at, layer) in model.bitlinears_mut() {
        if layer.packed.is_some() {
            let name = format!("{at}.weight");
            all.remove(&name);
            skip.insert(name);
        }
    }
    load_rest(model, path, all, skip)
}

fn load_rest(
    model: Transformer,
    path: &Path,
    tensors: HashMap<String, PackTensor>,
    skip: HashSet<String>,
) -> Result<Transformer, CheckpointError> {
    let fused = model.fused();
    let mut loader = Loader {
        file: path,
        at: Vec::new(),
        tensors,
        skip,
        errors: Vec::new(),
    };
    let model = model.map(&mut loader);
    if let Some(e) = loader.errors.into_iter().next() {
        return Err(e);
    }
    if !loader.tensors.is_empty() {
        let mut names: Vec<&String> = loader.tensors.keys().collect();
        names.sort();
        return Err(bad(
            path,
            format!("holds tensors the model has no place for: {names:?}"),
        ));
    }
    Ok(model.with_fused(fused))
}

struct Loader<'a> {
    file: &'a Path,
    at: Vec<String>,
    tensors: HashMap<String, PackTensor>,
    skip: HashSet<String>,
    errors: Vec<CheckpointError>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.at.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.at.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.at.join(".");
        if self.skip.contains(&name) {
            return param;
        }
        let Some(t) = self.tensors.remove(&name) else {
            self.errors
                .push(bad(self.file, format!("has no tensor {name}")));
            return param;
        };
        let shape = param.lazy_shape().dims::<D>();
        let device = param.lazy_device();
        match read(self.file, t, shape, &device) {
            Ok((id, tensor)) => param.transform_for_load(tensor, id),
            Err(e) => {
                self.errors.push(e);
                param
            }
        }
    }
}

/// Writes `model` to `path` (a new file: the caller's temporary directory makes it atomic), each
/// tensor produced only when the writer reaches it. The latent weights of packed projections
/// are copied from `from`.
pub fn write(
    model: &Transformer,
    path: &Path,
    from: Option<&PackedFrom>,
) -> Result<(), CheckpointError> {
    let mut model = model.clone();
    let mut packed = HashSet::new();
    for (at, layer) in model.bitlinears_mut() {
        if layer.packed.is_some() {
            packed.insert(format!("{at}.weight"));
        }
    }
    let mut list = Vec::new();
    if !packed.is_empty() {
        let from = from.ok_or_else(|| {
            bad(
                path,
                "a packed model needs the file its latent weights came from".into(),
            )
        })?;
        from.check()?;
        let base = tensors(&from.path)?;
        for name in &packed {
            let t = base
                .get(name)
                .ok_or_else(|| bad(&from.path, format!("has no tensor {name}")))?;
            // Read when the writer reaches it: a file-backed tensor keeps its bytes once read,
            // so handing the writer the base's own tensors would hold every one of them until
            // the end (the whole f32 base).
            let (file, key) = (from.path.clone(), name.clone());
            list.push(PackTensor::deferred(
                name.clone(),
                t.dtype,
                t.shape.clone(),
                t.param_id,
                t.byte_len(),
                move || {
                    let reader = Reader::from_file_exact(&file)?;
                    Ok(Bytes::from_bytes_vec(reader.tensor_data(&key)?))
                },
            ));
        }
    }
    let mut collect = Collect {
        at: Vec::new(),
        skip: packed,
        tensors: Vec::new(),
    };
    model.visit(&mut collect);
    list.extend(collect.tensors);
    Writer::new(list)
        .auto_extension(false)
        .write_to_file(path)
        .map_err(|e| bad(path, e.to_string()))
}

struct Collect {
    at: Vec<String>,
    skip: HashSet<String>,
    tensors: Vec<PackTensor>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.at.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.at.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let name = self.at.join(".");
        if self.skip.contains(&name) {
            return;
        }
        let t = param.val();
        let shape = t.dims().to_vec();
        let len = shape.iter().product::<usize>() * 4;
        // Read when the writer reaches it.
        let tensor = PackTensor::deferred(
            name,
            DType::F32,
            shape,
            Some(param.id.val()),
            len,
            // The tensor's own buffer, shared rather than copied: a copy of a 2B model's f32
            // embedding raised a LoRA run's peak memory by 1.2 GiB while it saved.
            move || {
                let values = tritium_model::fused::f32_values(t.clone());
                Ok(Bytes::from_shared(
                    bytes::Bytes::from_owner(values),
                    AllocationProperty::Native,
                ))
            },
        );
        self.tensors.push(tensor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tritium_model::{Backend, ModelConfig, Projection};

    fn cfg() -> ModelConfig {
        ModelConfig::from_toml_str(
            "[model]\nvocab_size = 64\nd_model = 32\nn_layers = 2\nn_heads = 2\nd_ff = 64\nmax_seq_len = 16\n",
        )
        .unwrap()
    }

    fn bits<const D: usize>(t: Tensor<D>) -> Vec<u32> {
        t.into_data().iter::<f32>().map(f32::to_bits).collect()
    }

    fn load(path: &Path, dev: &Device) -> Transformer {
        crate::load_weights(Transformer::new(&cfg(), dev), path).unwrap()
    }

    #[test]
    fn a_packed_load_and_a_packed_save_keep_every_weight_to_the_bit() {
        let d = tempfile::tempdir().unwrap();
        let dev = Backend::Flex.device().unwrap();
        let base = Transformer::new(&cfg(), &dev);
        let base_path = d.path().join("base.bpk");
        write(&base, &base_path, None).unwrap();
        // The streamed writer writes what Burn's record reader takes back, bit for bit.
        let back = load(&base_path, &dev);
        assert_eq!(
            bits(back.tok_embd.weight.val()),
            bits(base.tok_embd.weight.val())
        );

        // Loaded packed: the codes are those of packing the loaded latent weights.
        let (mut packed, from) =
            load_packed(Transformer::new(&cfg(), &dev), &base_path, &dev).unwrap();
        assert!(packed.is_packed());
        let mut latent = back.clone();
        for ((_, p), (_, l)) in packed
            .bitlinears_mut()
            .into_iter()
            .zip(latent.bitlinears_mut())
        {
            l.pack();
            let codes = |b: &tritium_model::BitLinear| b.packed.as_ref().unwrap().dequantize();
            assert_eq!(codes(p), codes(l));
        }
        let norm = |m: &Transformer| bits(m.blocks[1].ffn.sub_norm.gamma.val());
        assert_eq!(norm(&packed), norm(&base));

        // With adapters, saved: the file holds the base's latent weights and the adapters.
        packed.attach_lora(2, 4.0, 0.0, &[Projection::Q, Projection::Down], &dev);
        let ck = d.path().join("ck.bpk");
        write(&packed, &ck, Some(&from)).unwrap();
        let mut with = Transformer::new(&cfg(), &dev);
        with.attach_lora(2, 4.0, 0.0, &[Projection::Q, Projection::Down], &dev);
        let with = crate::load_weights(with, &ck).unwrap();
        for (a, b) in with.blocks.iter().zip(&base.blocks) {
            for (x, y) in a.projections().into_iter().zip(b.projections()) {
                assert_eq!(bits(x.weight.val()), bits(y.weight.val()));
            }
        }
        let a = |m: &Transformer| bits(m.blocks[0].attn.wq.lora.as_ref().unwrap().a.val());
        assert_eq!(a(&with), a(&packed));
        // A resumed run reads the same file back into its packed model.
        let mut resumed = load_packed(Transformer::new(&cfg(), &dev), &base_path, &dev)
            .unwrap()
            .0;
        resumed.attach_lora(2, 4.0, 0.0, &[Projection::Q, Projection::Down], &dev);
        let resumed = load_into_packed(resumed, &ck).unwrap();
        assert_eq!(a(&resumed), a(&packed));

        // The base replaced since it was read: its weights are no longer the ones packed.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let other = Transformer::new(&cfg(), &dev);
        write(&other, &base_path, None).unwrap();
        let e = write(&packed, &d.path().join("ck2.bpk"), Some(&from)).unwrap_err();
        assert!(
            e.to_string().contains("base.bpk") && e.to_string().contains("changed"),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_base_names_the_file_and_the_tensor() {
        let d = tempfile::tempdir().unwrap();
        let dev = Backend::Flex.device().unwrap();
        // A model of another width: the first projection has the wrong shape.
        let mut narrow = cfg();
        narrow.d_ff = 32;
        let p = d.path().join("narrow.bpk");
        write(&Transformer::new(&narrow, &dev), &p, None).unwrap();
        let e = load_packed(Transformer::new(&cfg(), &dev), &p, &dev)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("narrow.bpk") && e.contains("ffn.gate.weight"),
            "{e}"
        );
        // Not a burnpack file at all.
        std::fs::write(&p, b"not a model").unwrap();
        let e = load_packed(Transformer::new(&cfg(), &dev), &p, &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("narrow.bpk"), "{e}");
    }
}
