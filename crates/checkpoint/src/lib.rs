//! Checkpoints: the one directory format that training writes, fine-tuning reads and writes,
//! export and evaluation read, and an importer writes.
//!
//! A run directory keeps its checkpoints under `checkpoints/step-N/`, with `checkpoints/latest`
//! naming the newest. A checkpoint directory holds:
//!
//! | file | what |
//! |---|---|
//! | `model.bpk` | the weights (Burn's burnpack), adapters included when `lora.json` is there |
//! | `optim.bin` | the optimizer's state (written by the training loop, opaque here) |
//! | `state.json` | [`State`]: step, tokens, the [`ModelConfig`], tokenizer hash, [`Provenance`] |
//! | `tokenizer.json` | the tokenizer the weights were trained with |
//! | `chat_template.jinja` | the chat template fine-tuning rendered examples with (optional) |
//! | `lora.json` | the [`LoraLayout`] of attached adapters (fine-tuning checkpoints only) |
//!
//! [`save`] writes the model a tensor at a time ([`pack`]; a LoRA run's packed base layers are
//! copied from the base file they came from) into a temporary directory and renames it into place before
//! `latest` is rewritten atomically, so a crash at any moment leaves the previous checkpoint whole.
//! [`Checkpoint::open`] reads one back. Adapters, as training holds them and as files carry them,
//! are [`adapter::Adapter`]s.

pub mod adapter;
pub mod bos;
pub mod fsutil;
pub mod hf;
pub mod import;
mod lock;
pub mod pack;
mod state;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tritium_model::burn::prelude::*;
use tritium_model::burn::store::ModuleRecord;
use tritium_model::{ModelConfig, Transformer};

pub use adapter::{Adapter, AdapterSet, LoraLayout};
pub use lock::{LOCK, RunLock};
pub use state::{FORMAT, Origin, Provenance, State};

use fsutil::{sync_dir, write_atomic};

/// A checkpoint's Jinja chat template (written by fine-tuning; export copies it into the GGUF's
/// `tokenizer.chat_template`).
pub const CHAT_TEMPLATE: &str = "chat_template.jinja";
pub const MODEL: &str = "model.bpk";
pub const OPTIM: &str = "optim.bin";
pub const TOKENIZER: &str = "tokenizer.json";
pub const LORA: &str = "lora.json";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Bad { path: PathBuf, msg: String },
    #[error("{dir}: no checkpoint to resume from (no `latest` pointer); start a fresh run instead")]
    None { dir: PathBuf },
    #[error(
        "{dir} already holds checkpoints; pass --resume {dir} to continue it, or choose another --out"
    )]
    Exists { dir: PathBuf },
    #[error(
        "{dir} is being written by another tritium process (it holds {dir}/.lock); wait for it to finish or choose another --out"
    )]
    Locked { dir: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Io { path, source }
}

/// SHA-256 of `bytes` as lowercase hex: the identity of a tokenizer file or a base model.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One checkpoint directory and its state.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: State,
}

impl Checkpoint {
    /// A run directory (its latest checkpoint) or a `step-N` directory itself.
    pub fn open(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let dir = resolve(path)?;
        let state = State::read(&dir)?;
        Ok(Checkpoint { dir, state })
    }

    pub fn model_config(&self) -> &ModelConfig {
        &self.state.model
    }

    /// The tokenizer the weights were trained with: the copy inside the checkpoint, or for a
    /// checkpoint written without one, the file its producing run named.
    ///
    /// Either way the file must be the one the weights were trained with: its SHA-256 is checked
    /// against `state.json`'s `tokenizer_hash` (a tokenizer with two ids swapped would otherwise
    /// export and evaluate without a word).
    pub fn tokenizer_path(&self) -> Result<PathBuf, CheckpointError> {
        let inside = self.dir.join(TOKENIZER);
        let path = if inside.exists() {
            inside
        } else {
            // The recorded path is used only when it names one file wherever tritium runs: a
            // relative one would be resolved against today's working directory, not the run's.
            match &self.state.provenance.tokenizer {
                Some(p) if p.is_absolute() => p.clone(),
                recorded => {
                    return Err(CheckpointError::Bad {
                        path: self.dir.clone(),
                        msg: match recorded {
                            Some(p) => format!(
                                "no {TOKENIZER}, and the tokenizer state.json records ({}) is a relative path; copy the tokenizer into the checkpoint as {TOKENIZER}",
                                p.display()
                            ),
                            None => {
                                format!("no {TOKENIZER} and no tokenizer recorded in state.json")
                            }
                        },
                    });
                }
            }
        };
        let want = &self.state.tokenizer_hash;
        // Written before hashes were recorded: nothing to check against.
        if !want.is_empty() {
            let have = sha256_hex(&std::fs::read(&path).map_err(io(&path))?);
            if &have != want {
                return Err(CheckpointError::Bad {
                    path,
                    msg: format!(
                        "SHA-256 {}… differs from the {}… that {} records: not the tokenizer these weights were trained with",
                        &have[..12],
                        want.get(..12).unwrap_or(want),
                        self.dir.join("state.json").display()
                    ),
                });
            }
        }
        Ok(path)
    }

    /// The chat template fine-tuning stored, if any.
    pub fn chat_template(&self) -> Result<Option<String>, CheckpointError> {
        let path = self.dir.join(CHAT_TEMPLATE);
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CheckpointError::Io { path, source }),
        }
    }

    /// The adapters a fine-tuning checkpoint holds, if any.
    pub fn lora_layout(&self) -> Result<Option<LoraLayout>, CheckpointError> {
        let layout = LoraLayout::read(&self.dir)?;
        // Checked before any adapter is allocated: a damaged rank would otherwise ask for
        // rank × width floats per projection and abort instead of naming the file.
        if let Some(l) = &layout {
            let widest = self.state.model.d_model.max(self.state.model.d_ff);
            if l.rank == 0
                || l.rank > widest
                || !l.alpha.is_finite()
                || !(0.0..1.0).contains(&l.dropout)
            {
                return Err(CheckpointError::Bad {
                    path: self.dir.join(LORA),
                    msg: format!(
                        "rank {}, alpha {}, dropout {}: need 1 ≤ rank ≤ {widest} (the model's \
                         widest projection), a finite alpha and 0 ≤ dropout < 1",
                        l.rank, l.alpha, l.dropout
                    ),
                });
            }
        }
        Ok(layout)
    }

    /// The model, built from the checkpoint's own config with its adapters attached. A
    /// `state.json` describing more parameters than `model.bpk` can hold (four bytes each) is
    /// refused before the model is allocated.
    pub fn load_model(&self, device: &Device) -> Result<Transformer, CheckpointError> {
        let weights = self.dir.join(MODEL);
        let have = std::fs::metadata(&weights).map_err(io(&weights))?.len();
        let params = self.state.model.param_count().total() as u64;
        if have / 4 < params {
            return Err(CheckpointError::Bad {
                path: self.dir.join("state.json"),
                msg: format!(
                    "describes a model of {params} parameters, but {} holds {have} bytes, room for {} f32 values",
                    weights.display(),
                    have / 4
                ),
            });
        }
        let mut model = Transformer::new(&self.state.model, device);
        if let Some(l) = self.lora_layout()? {
            model.attach_lora(l.rank, l.alpha, l.dropout, &l.target, device);
        }
        load_weights(model, &self.dir.join(MODEL))
    }

    /// The model as a frozen base for LoRA: every projection packed as it is read (2 bits a
    /// weight; see [`pack`]), with the file they came from for the checkpoints that follow.
    pub fn load_packed(
        &self,
        device: &Device,
    ) -> Result<(Transformer, pack::PackedFrom), CheckpointError> {
        let path = self.dir.join(MODEL);
        if self.state.model.quant != tritium_model::Quant::Ternary {
            // A float model has nothing ternary to pack: its latent weights are its weights.
            return Ok((self.load_model(device)?, pack::PackedFrom::of(&path)?));
        }
        let mut model = Transformer::new(&self.state.model, device);
        if let Some(l) = self.lora_layout()? {
            model.attach_lora(l.rank, l.alpha, l.dropout, &l.target, device);
        }
        pack::load_packed(model, &path, device)
    }

    /// SHA-256 of `model.bpk`: the identity of a base model. Export writes it into the GGUF and
    /// fine-tuning into the adapter, so an adapter is refused on a base it was not trained on.
    pub fn model_hash(&self) -> Result<String, CheckpointError> {
        // Streamed: a 2B model's file is 10 GB, more than the LoRA run around it holds.
        let p = self.dir.join(MODEL);
        let mut file = std::fs::File::open(&p).map_err(io(&p))?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(io(&p))?;
        Ok(format!("{:x}", hasher.finalize()))
    }
}

/// Loads `model.bpk` into a model of the right structure (adapters already attached).
pub fn load_weights(model: Transformer, model_path: &Path) -> Result<Transformer, CheckpointError> {
    let bad = |msg: String| CheckpointError::Bad {
        path: model_path.to_path_buf(),
        msg,
    };
    let fused = model.fused();
    let record = ModuleRecord::load(model_path).map_err(|e| bad(e.to_string()))?;
    model
        .try_load_record(record)
        .map(|m| m.with_fused(fused))
        .map_err(|e| bad(e.to_string()))
}

/// A parameter holding the row-major `[rows, cols]` matrix `v`.
pub(crate) fn matrix(
    v: Vec<f32>,
    rows: usize,
    cols: usize,
    device: &Device,
) -> tritium_model::burn::module::Param<Tensor<2>> {
    tritium_model::burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(v, [rows, cols]),
        device,
    ))
}

/// A parameter holding the vector `v`.
pub(crate) fn vector(
    v: Vec<f32>,
    device: &Device,
) -> tritium_model::burn::module::Param<Tensor<1>> {
    let n = v.len();
    tritium_model::burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(v, [n]),
        device,
    ))
}

/// Writes one file at the path it is given.
pub type WriteFile<'a> = dyn Fn(&Path) -> std::io::Result<()> + 'a;

/// What [`save`] writes.
pub struct Contents<'a> {
    pub model: &'a Transformer,
    pub state: &'a State,
    /// Writes the optimizer's state file at the path it is given (None: a checkpoint without
    /// one, a starting point that no run has trained yet).
    pub optim: Option<&'a WriteFile<'a>>,
    /// The tokenizer file to copy in beside the weights (skipped if unreadable, as for a run
    /// whose tokenizer was moved).
    pub tokenizer: Option<&'a Path>,
    /// Further files (name, bytes) written inside the same atomic directory.
    pub extra: &'a [(&'a str, Vec<u8>)],
    /// The base file a packed model's projections came from ([`pack::load_packed`]): their
    /// latent weights are copied from it, so the checkpoint holds the whole model.
    pub packed_from: Option<&'a pack::PackedFrom>,
}

/// Writes `model` (of shape `cfg`) as step 0 of `run` with the tokenizer it reads and no
/// optimizer state: a starting point that was not trained here (an import, a test's fixture).
pub fn save_initial(
    run: &Path,
    model: &Transformer,
    cfg: &ModelConfig,
    tokenizer: &Path,
    origin: Origin,
) -> Result<PathBuf, CheckpointError> {
    let bytes = std::fs::read(tokenizer).map_err(io(tokenizer))?;
    let provenance = Provenance::new(origin, Some(tokenizer.to_path_buf()));
    let state = State::new(cfg.clone(), sha256_hex(&bytes), provenance);
    let contents = Contents {
        model,
        state: &state,
        optim: None,
        tokenizer: Some(tokenizer),
        extra: &[],
        packed_from: None,
    };
    save(run, &contents, 1)
}

/// The files a checkpoint directory holds (whether or not each is there): what no command may
/// write over while reading the checkpoint.
pub fn parts(dir: &Path) -> Vec<PathBuf> {
    [
        MODEL,
        OPTIM,
        "state.json",
        TOKENIZER,
        CHAT_TEMPLATE,
        LORA,
        LOCK,
    ]
    .iter()
    .map(|n| dir.join(n))
    .collect()
}

/// `checkpoints/` of a run directory.
pub fn dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// Writes `step-N` of `run` atomically, points `latest` at it, and prunes all but the newest
/// `keep`.
pub fn save(run: &Path, c: &Contents, keep: usize) -> Result<PathBuf, CheckpointError> {
    let root = dir(run);
    let name = format!("step-{}", c.state.step);
    let final_dir = root.join(&name);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let model_path = tmp.join(MODEL);
    pack::write(c.model, &model_path, c.packed_from)?;
    sync_file(&model_path).map_err(io(&model_path))?;
    if let Some(write) = c.optim {
        let optim_path = tmp.join(OPTIM);
        write(&optim_path).map_err(io(&optim_path))?;
    }
    // The tokenizer travels with the weights, so export and evaluation need nothing else.
    let tok_path = tmp.join(TOKENIZER);
    if let Some(bytes) = c.tokenizer.and_then(|p| std::fs::read(p).ok()) {
        write_atomic(&tok_path, &bytes).map_err(io(&tok_path))?;
    }
    for (name, bytes) in c.extra {
        let p = tmp.join(name);
        write_atomic(&p, bytes).map_err(io(&p))?;
    }
    let state_path = tmp.join("state.json");
    write_atomic(&state_path, c.state.to_json().as_bytes()).map_err(io(&state_path))?;
    if final_dir.exists() {
        // The same step again: the old directory goes aside, not away, until the new one is in
        // place, so a removal that fails or is cut short never leaves `latest` naming nothing
        // (and a kill between the two renames leaves the aside copy, which `latest` falls back to).
        let old = aside(&root, &name);
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(&final_dir, &old).map_err(io(&final_dir))?;
        std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    } else {
        std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    }
    // The rename itself must be on disk before `latest` names it and pruning deletes older steps.
    sync_dir(&root).map_err(io(&root))?;
    write_atomic(&root.join("latest"), name.as_bytes()).map_err(io(&root.join("latest")))?;
    // The step's previous copy, set aside above or by a save killed midway, is no longer needed.
    let _ = std::fs::remove_dir_all(aside(&root, &name));
    prune(&root, keep);
    Ok(final_dir)
}

/// Where [`save`] keeps a step's previous directory while it puts the new one in place.
fn aside(root: &Path, name: &str) -> PathBuf {
    root.join(format!(".{name}.old"))
}

fn sync_file(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// Keeps the newest `keep` `step-N` directories (never the one `latest` names).
fn prune(root: &Path, keep: usize) {
    let latest = std::fs::read_to_string(root.join("latest")).unwrap_or_default();
    let mut steps: Vec<(usize, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("step-")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    steps.sort();
    let excess = steps.len().saturating_sub(keep.max(1));
    for (_, p) in steps.into_iter().take(excess) {
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy() == latest.trim())
        {
            continue;
        }
        let _ = std::fs::remove_dir_all(p);
    }
}

/// Refuses to start a fresh run in a directory that holds one already (its checkpoints would be
/// overwritten step by step).
pub fn ensure_fresh(run: &Path) -> Result<(), CheckpointError> {
    match latest(run) {
        Ok(_) => Err(CheckpointError::Exists {
            dir: run.to_path_buf(),
        }),
        Err(_) => Ok(()),
    }
}

/// The directory `latest` points at.
pub fn latest(run: &Path) -> Result<PathBuf, CheckpointError> {
    let root = dir(run);
    let pointer = root.join("latest");
    let name = match std::fs::read_to_string(&pointer) {
        Ok(s) => s.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckpointError::None {
                dir: run.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(CheckpointError::Io {
                path: pointer,
                source,
            });
        }
    };
    if !name.starts_with("step-") || name.contains('/') {
        return Err(CheckpointError::Bad {
            path: pointer,
            msg: format!("names {name:?}, not a step-N directory"),
        });
    }
    let (named, old) = (root.join(&name), aside(&root, &name));
    if !named.exists() && old.join("state.json").exists() {
        return Ok(old); // killed between `save`'s two renames
    }
    Ok(named)
}

/// A run directory (its latest checkpoint) or a `step-N` directory itself.
pub fn resolve(path: &Path) -> Result<PathBuf, CheckpointError> {
    if path.join("state.json").exists() {
        Ok(path.to_path_buf())
    } else if dir(path).exists() {
        latest(path)
    } else {
        Err(CheckpointError::Bad {
            path: path.to_path_buf(),
            msg: "neither a checkpoint (no state.json) nor a run directory (no checkpoints/)"
                .into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tritium_model::Backend;

    fn cfg() -> ModelConfig {
        ModelConfig::from_toml_str(
            "[model]\nvocab_size = 64\nd_model = 32\nn_layers = 1\nn_heads = 2\nd_ff = 64\nmax_seq_len = 16\n",
        )
        .unwrap()
    }

    fn state(step: usize) -> State {
        State {
            step,
            ..State::new(cfg(), "h".into(), Provenance::new(Origin::Train, None))
        }
    }

    fn save_at(
        run: &Path,
        model: &Transformer,
        step: usize,
        keep: usize,
    ) -> Result<PathBuf, CheckpointError> {
        let s = state(step);
        let c = Contents {
            model,
            state: &s,
            optim: Some(&|p| std::fs::write(p, b"moments")),
            tokenizer: None,
            extra: &[],
            packed_from: None,
        };
        save(run, &c, keep)
    }

    #[test]
    fn a_failed_save_keeps_the_last_good_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let dev = Backend::Flex.device().unwrap();
        let model = Transformer::new(&cfg(), &dev);
        save_at(d.path(), &model, 5, 3).unwrap();
        // Make the next save fail the way a full disk or a permission error would: here a file
        // sits where its temporary directory must go.
        std::fs::write(dir(d.path()).join(".step-10.tmp"), "in the way").unwrap();
        let e = save_at(d.path(), &model, 10, 3).unwrap_err().to_string();
        assert!(e.contains(".step-10.tmp"), "{e}");
        let latest_dir = latest(d.path()).unwrap();
        assert!(latest_dir.ends_with("step-5"));
        assert!(!dir(d.path()).join("step-10").exists());
        let ck = Checkpoint::open(d.path()).unwrap();
        assert_eq!(ck.state.step, 5);
        ck.load_model(&dev).unwrap();
        // The streamed hash is the hash of the file's bytes.
        let bytes = std::fs::read(ck.dir.join(MODEL)).unwrap();
        assert_eq!(ck.model_hash().unwrap(), sha256_hex(&bytes));
    }

    /// Saving a step that exists already replaces it without ever leaving `latest` naming a
    /// missing directory; a kill between the two renames leaves the old copy, which is found.
    #[test]
    fn saving_a_step_again_never_leaves_latest_naming_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dev = Backend::Flex.device().unwrap();
        let model = Transformer::new(&cfg(), &dev);
        save_at(d.path(), &model, 5, 1).unwrap();
        save_at(d.path(), &model, 5, 1).unwrap();
        let root = dir(d.path());
        assert!(!root.join(".step-5.old").exists());
        assert_eq!(Checkpoint::open(d.path()).unwrap().state.step, 5);
        // Killed after the first rename (old aside) and before the second.
        std::fs::rename(root.join("step-5"), root.join(".step-5.old")).unwrap();
        let ck = Checkpoint::open(d.path()).unwrap();
        assert_eq!(ck.state.step, 5);
        ck.load_model(&dev).unwrap();
        // The next save of that step puts it back in place.
        save_at(d.path(), &model, 5, 1).unwrap();
        assert!(latest(d.path()).unwrap().ends_with("step-5"));
        assert!(!root.join(".step-5.old").exists());
    }

    /// A damaged `lora.json` is refused, naming it, before any adapter is allocated.
    #[test]
    fn an_absurd_adapter_rank_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let dev = Backend::Flex.device().unwrap();
        let model = Transformer::new(&cfg(), &dev);
        let at = save_at(d.path(), &model, 1, 1).unwrap();
        let layout = |rank: usize| {
            serde_json::json!({"rank": rank, "alpha": 16.0, "dropout": 0.0, "target": []})
                .to_string()
        };
        std::fs::write(at.join(LORA), layout(4_000_000_000)).unwrap();
        let e = Checkpoint::open(d.path())
            .unwrap()
            .load_model(&dev)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lora.json") && e.contains("rank 4000000000"),
            "{e}"
        );
        std::fs::write(at.join(LORA), layout(4)).unwrap();
        let ck = Checkpoint::open(d.path()).unwrap();
        assert_eq!(ck.lora_layout().unwrap().unwrap().rank, 4);
    }

    #[test]
    fn pruning_keeps_the_newest() {
        let d = tempfile::tempdir().unwrap();
        let dev = Backend::Flex.device().unwrap();
        let model = Transformer::new(&cfg(), &dev);
        for step in [1, 2, 3, 4] {
            save_at(d.path(), &model, step, 2).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir(d.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["latest", "step-3", "step-4"]);
    }

    /// A checkpoint's tokenizer must be the one its weights were trained with.
    #[test]
    fn a_tokenizer_with_another_hash_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let dev = Backend::Flex.device().unwrap();
        let tok = d.path().join("tok.json");
        std::fs::write(&tok, r#"{"model": {"vocab": {"a": 0, "b": 1}}}"#).unwrap();
        let model = Transformer::new(&cfg(), &dev);
        let run = d.path().join("run");
        save_initial(&run, &model, &cfg(), &tok, Origin::Import).unwrap();
        let ck = Checkpoint::open(&run).unwrap();
        assert_eq!(ck.tokenizer_path().unwrap(), ck.dir.join(TOKENIZER));
        // Two ids swapped in the copy beside the weights.
        std::fs::write(
            ck.dir.join(TOKENIZER),
            r#"{"model": {"vocab": {"a": 1, "b": 0}}}"#,
        )
        .unwrap();
        let e = ck.tokenizer_path().unwrap_err().to_string();
        assert!(
            e.contains("tokenizer.json") && e.contains("not the tokenizer"),
            "{e}"
        );
    }

    /// A format-1 `state.json` (the whole pretraining config inside) still opens, with its model
    /// shape and tokenizer path taken from that config.
    #[test]
    fn format_1_states_are_read() {
        let d = tempfile::tempdir().unwrap();
        let model = serde_json::to_value(cfg()).unwrap();
        let tok = d.path().join("tok.json");
        std::fs::write(&tok, "{}").unwrap();
        let v1 = serde_json::json!({
            "format": 1, "step": 7, "tokens": 896, "best_val_loss": 2.5,
            "tokenizer_hash": sha256_hex(b"{}"),
            "config": { "model": model, "data": { "tokenizer": tok }, "train": {} }
        });
        std::fs::write(d.path().join("state.json"), v1.to_string()).unwrap();
        let ck = Checkpoint::open(d.path()).unwrap();
        assert_eq!(ck.state.step, 7);
        assert_eq!(ck.state.model, cfg());
        assert_eq!(ck.tokenizer_path().unwrap(), tok);
        std::fs::write(d.path().join("tokenizer.json"), "{}").unwrap();
        assert_eq!(
            ck.tokenizer_path().unwrap(),
            d.path().join("tokenizer.json")
        );

        // A shape no model has (zero heads would divide by zero when sized) is refused on open.
        let mut doctored = serde_json::to_value(&ck.state).unwrap();
        doctored["model"]["n_heads"] = 0.into();
        std::fs::write(d.path().join("state.json"), doctored.to_string()).unwrap();
        let e = Checkpoint::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("n_heads"), "{e}");

        std::fs::write(d.path().join("state.json"), r#"{"format": 9}"#).unwrap();
        let e = Checkpoint::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("format 9") && e.contains("state.json"), "{e}");
    }
}
