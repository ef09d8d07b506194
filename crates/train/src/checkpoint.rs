//! Checkpoints: `runs/NAME/checkpoints/step-N/` holds the model (`model.bpk`, Burn's burnpack), the
//! optimizer moments (`optim.bin`) and `state.json` (step, tokens, config, tokenizer hash). A
//! checkpoint is written into a temporary directory and renamed into place, then `latest` is
//! rewritten atomically, so a crash at any moment leaves the previous checkpoint whole.
//!
//! The data position and RNG need no state of their own: training windows are a pure function of
//! (seed, step), so the step is the position.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tritium_model::Transformer;
use tritium_model::burn::prelude::*;
use tritium_model::burn::store::ModuleRecord;

use crate::config::RunConfig;
use crate::fsutil::write_atomic;
use crate::optim::{AdamW, AdamWConfig, param_sizes};

pub const FORMAT: u32 = 1;

/// A checkpoint's Jinja chat template (written by fine-tuning; export copies it into the GGUF's
/// `tokenizer.chat_template`).
pub const CHAT_TEMPLATE: &str = "chat_template.jinja";

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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub format: u32,
    /// Optimizer steps completed.
    pub step: usize,
    pub tokens: u64,
    pub best_val_loss: Option<f64>,
    pub tokenizer_hash: String,
    pub config: RunConfig,
}

/// `checkpoints/` of a run directory.
pub fn dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// Writes `step-N` atomically, points `latest` at it, and prunes all but the newest `keep`.
pub fn save(
    run: &Path,
    model: &Transformer,
    optim: &AdamW,
    state: &State,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    save_with(run, model, optim, state, keep, &[])
}

/// The adapter layout of a fine-tuning checkpoint (`lora.json`): [`load_model`] attaches these
/// adapters before loading the weights, so the checkpoint loads whole wherever it is used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoraLayout {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f64,
    pub target: Vec<String>,
}

/// As [`save`], with extra files (name, bytes) written inside the same atomic directory.
pub fn save_with(
    run: &Path,
    model: &Transformer,
    optim: &AdamW,
    state: &State,
    keep: usize,
    extra: &[(&str, Vec<u8>)],
) -> Result<PathBuf, CheckpointError> {
    let root = dir(run);
    let name = format!("step-{}", state.step);
    let final_dir = root.join(&name);
    let tmp = root.join(format!(".{name}.tmp"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io { path, source }
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let model_path = tmp.join("model.bpk");
    model
        .clone()
        .into_record()
        .save(&model_path)
        .map_err(|e| CheckpointError::Bad {
            path: model_path.clone(),
            msg: e.to_string(),
        })?;
    sync_file(&model_path).map_err(io(&model_path))?;
    let optim_path = tmp.join("optim.bin");
    optim.save(&optim_path).map_err(io(&optim_path))?;
    // The tokenizer travels with the weights, so export and evaluation need nothing else.
    let tok_src = &state.config.data.tokenizer;
    let tok_path = tmp.join("tokenizer.json");
    if let Ok(bytes) = std::fs::read(tok_src) {
        write_atomic(&tok_path, &bytes).map_err(io(&tok_path))?;
    }
    for (name, bytes) in extra {
        let p = tmp.join(name);
        write_atomic(&p, bytes).map_err(io(&p))?;
    }
    let state_path = tmp.join("state.json");
    write_atomic(
        &state_path,
        serde_json::to_string_pretty(state)
            .expect("state serializes")
            .as_bytes(),
    )
    .map_err(io(&state_path))?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    write_atomic(&root.join("latest"), name.as_bytes()).map_err(io(&root.join("latest")))?;
    prune(&root, keep);
    Ok(final_dir)
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
    Ok(root.join(name))
}

pub fn read_state(ckpt: &Path) -> Result<State, CheckpointError> {
    let path = ckpt.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|source| CheckpointError::Io {
        path: path.clone(),
        source,
    })?;
    let state: State = serde_json::from_str(&text).map_err(|e| CheckpointError::Bad {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    if state.format != FORMAT {
        return Err(CheckpointError::Bad {
            path,
            msg: format!(
                "checkpoint format {} is not {FORMAT}, which this build reads",
                state.format
            ),
        });
    }
    Ok(state)
}

/// The model of a checkpoint, built from the checkpoint's own config (for export and evaluation).
pub fn load_model(ckpt: &Path, device: &Device) -> Result<(Transformer, State), CheckpointError> {
    let state = read_state(ckpt)?;
    let model_path = ckpt.join("model.bpk");
    let mut model = Transformer::new(&state.config.model, device);
    if let Some(l) = lora_layout(ckpt)? {
        model.attach_lora(l.rank, l.alpha, l.dropout, &l.target, device);
    }
    let model = load_weights(model, &model_path)?;
    Ok((model, state))
}

/// The adapters a fine-tuning checkpoint holds, if any.
pub fn lora_layout(ckpt: &Path) -> Result<Option<LoraLayout>, CheckpointError> {
    let path = ckpt.join("lora.json");
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

/// Loads `model.bpk` into a model of the right structure (adapters already attached).
pub fn load_weights(model: Transformer, model_path: &Path) -> Result<Transformer, CheckpointError> {
    let bad = |msg: String| CheckpointError::Bad {
        path: model_path.to_path_buf(),
        msg,
    };
    let record = ModuleRecord::load(model_path).map_err(|e| bad(e.to_string()))?;
    model
        .try_load_record(record)
        .map_err(|e| bad(e.to_string()))
}

/// SHA-256 of a checkpoint's `model.bpk`: the identity of a base model. Export writes it into the
/// GGUF and fine-tuning into the adapter, so an adapter is refused on a base it was not trained on.
pub fn model_hash(ckpt: &Path) -> Result<String, CheckpointError> {
    let p = ckpt.join("model.bpk");
    let bytes = std::fs::read(&p).map_err(|source| CheckpointError::Io { path: p, source })?;
    Ok(crate::tokenizer::hash_bytes(&bytes))
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

/// Loads model and optimizer from `ckpt` for `cfg`, refusing a checkpoint of another model shape.
pub fn load(
    ckpt: &Path,
    cfg: &RunConfig,
    device: &Device,
) -> Result<(Transformer, AdamW, State), CheckpointError> {
    let state = read_state(ckpt)?;
    if state.config.model != cfg.model {
        return Err(CheckpointError::Bad {
            path: ckpt.to_path_buf(),
            msg: format!(
                "checkpoint is of another model ([model] there: {:?}; here: {:?}); resume with its own config",
                state.config.model, cfg.model
            ),
        });
    }
    let (model, state) = load_model(ckpt, device)?;
    let optim_path = ckpt.join("optim.bin");
    let adam = AdamWConfig {
        beta1: cfg.train.beta1,
        beta2: cfg.train.beta2,
        eps: cfg.train.eps,
    };
    let optim = AdamW::load(adam, &optim_path, &param_sizes(&model), device).map_err(|msg| {
        CheckpointError::Bad {
            path: optim_path,
            msg,
        }
    })?;
    Ok((model, optim, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tritium_model::Backend;

    fn cfg() -> RunConfig {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny.toml");
        let mut c = RunConfig::load(&p, &[]).unwrap();
        c.model.vocab_size = 64;
        c.model.d_model = 32;
        c.model.n_heads = 2;
        c.model.n_kv_heads = Some(2);
        c.model.d_ff = 64;
        c.model.n_layers = 1;
        c
    }

    fn state(step: usize, c: &RunConfig) -> State {
        State {
            format: FORMAT,
            step,
            tokens: 0,
            best_val_loss: None,
            tokenizer_hash: "h".into(),
            config: c.clone(),
        }
    }

    /// A fresh model and optimizer for `cfg()` on the CPU.
    fn fresh(c: &RunConfig) -> (Device, Transformer, AdamW) {
        let dev = Backend::Flex.device().unwrap();
        let model = Transformer::new(&c.model, &dev);
        (dev, model, AdamW::new(AdamWConfig::default()))
    }

    #[test]
    fn a_failed_save_keeps_the_last_good_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg();
        let (dev, model, optim) = fresh(&c);
        save(d.path(), &model, &optim, &state(5, &c), 3).unwrap();
        // Make the next save fail the way a full disk or a permission error would: here a file
        // sits where its temporary directory must go.
        std::fs::write(dir(d.path()).join(".step-10.tmp"), "in the way").unwrap();
        let e = save(d.path(), &model, &optim, &state(10, &c), 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains(".step-10.tmp"), "{e}");
        let latest_dir = latest(d.path()).unwrap();
        assert!(latest_dir.ends_with("step-5"));
        assert!(!dir(d.path()).join("step-10").exists());
        let (_, _, s) = load(&latest_dir, &c, &dev).unwrap();
        assert_eq!(s.step, 5);
    }

    #[test]
    fn pruning_keeps_the_newest() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg();
        let (_, model, optim) = fresh(&c);
        for step in [1, 2, 3, 4] {
            save(d.path(), &model, &optim, &state(step, &c), 2).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir(d.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["latest", "step-3", "step-4"]);
    }

    #[test]
    fn optimizer_state_round_trips_and_refuses_other_shapes() {
        use tritium_model::burn::optim::GradientsParams;
        let d = tempfile::tempdir().unwrap();
        let c = cfg();
        let dev = Backend::Flex.device().unwrap().autodiff();
        let adam = AdamWConfig::default();
        let model = Transformer::new(&c.model, &dev);
        let mut optim = AdamW::new(adam);
        let ids = Tensor::<1, Int>::from_ints([1, 2, 3, 4, 5, 6], &dev).reshape([1, 6]);
        let loss = tritium_model::cross_entropy(model.forward(ids.clone()), ids);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = optim.step(model, grads, 1e-3, 0.1, 1.0);
        save(d.path(), &model, &optim, &state(1, &c), 2).unwrap();
        let ckpt = latest(d.path()).unwrap();
        let (_, loaded, _) = load(&ckpt, &c, &dev).unwrap();
        // Byte-identical when written again: every moment survived the round trip.
        let again = d.path().join("again.bin");
        loaded.save(&again).unwrap();
        assert_eq!(
            std::fs::read(&again).unwrap(),
            std::fs::read(ckpt.join("optim.bin")).unwrap()
        );
        assert_eq!(loaded.t, 1);

        let mut other = c.clone();
        other.model.d_ff = 128;
        let e = load(&ckpt, &other, &dev).err().unwrap().to_string();
        assert!(e.contains("another model"), "{e}");
        let sizes = param_sizes(&Transformer::new(&other.model, &dev));
        let e = AdamW::load(adam, &ckpt.join("optim.bin"), &sizes, &dev)
            .err()
            .unwrap();
        assert!(e.contains("moments"), "{e}");
        let e = AdamW::load(adam, &ckpt.join("optim.bin"), &sizes[..3], &dev)
            .err()
            .unwrap();
        assert!(e.contains("parameters"), "{e}");
        let good = param_sizes(&model);
        std::fs::write(&again, b"garbage!").unwrap();
        assert!(
            AdamW::load(adam, &again, &good, &dev)
                .err()
                .unwrap()
                .contains("magic")
        );
        let bytes = std::fs::read(ckpt.join("optim.bin")).unwrap();
        std::fs::write(&again, &bytes[..bytes.len() - 4]).unwrap();
        assert!(
            AdamW::load(adam, &again, &good, &dev)
                .err()
                .unwrap()
                .contains("truncated")
        );
    }
}
