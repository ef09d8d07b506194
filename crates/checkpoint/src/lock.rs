//! An advisory lock on a run directory, held for as long as a run writes it, so that a second
//! `train` or `finetune` given the same `--out` refuses instead of interleaving checkpoints and
//! metrics with the first. The operating system releases it when the process ends, however it
//! ends (`kill -9` included), so a crashed run never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::CheckpointError;

/// The lock file inside a run directory.
pub const LOCK: &str = ".lock";

#[derive(Debug)]
pub struct RunLock {
    _file: File,
    pub dir: PathBuf,
    /// Temporary files and directories a killed writer left behind, removed on taking the lock.
    pub cleaned: Vec<PathBuf>,
}

impl RunLock {
    /// Creates `run` if needed and takes its lock, or says who holds it.
    pub fn acquire(run: &Path) -> Result<RunLock, CheckpointError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CheckpointError::Io { path, source }
        };
        if run.exists() && !run.is_dir() {
            return Err(CheckpointError::Bad {
                path: run.to_path_buf(),
                msg: "exists and is not a directory; --out names a run directory".into(),
            });
        }
        std::fs::create_dir_all(run).map_err(io(run))?;
        let path = run.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock {
                _file: file,
                dir: run.to_path_buf(),
                // Safe now: no other writer holds the directory.
                cleaned: remove_stale_temps(run),
            }),
            Err(TryLockError::WouldBlock) => Err(CheckpointError::Locked {
                dir: run.to_path_buf(),
            }),
            Err(TryLockError::Error(source)) => Err(CheckpointError::Io { path, source }),
        }
    }
}

/// The files a run writes atomically in its directory; their `.NAME.tmp` forms are what a kill
/// can leave behind. Only these are removed: `--out` may name a directory shared with others.
const RUN_FILES: &[&str] = &[
    "metrics.jsonl",
    "config.toml",
    "loss.svg",
    "tokenizer.json",
    "finetune.json",
    "summary.json",
    "adapter.safetensors",
    "adapter.json",
    "adapter.gguf",
];

/// Whether `name` in `checkpoints/` is a checkpoint's or `latest`'s temporary form.
fn checkpoint_temp(name: &str) -> bool {
    crate::fsutil::is_tmp_for(name, "latest")
        || name
            .strip_prefix(".step-")
            .and_then(|n| n.strip_suffix(".tmp"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes the temporary files and directories that tritium's atomic writes in `run` and its
/// `checkpoints/` leave when killed before their rename, and returns what it removed.
fn remove_stale_temps(run: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let ours_in_run = |name: &str| RUN_FILES.iter().any(|f| crate::fsutil::is_tmp_for(name, f));
    for (dir, ours) in [
        (run.to_path_buf(), &ours_in_run as &dyn Fn(&str) -> bool),
        (crate::dir(run), &checkpoint_temp),
    ] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !ours(&name) {
                continue;
            }
            let p = entry.path();
            let gone = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if gone.is_ok() {
                removed.push(p);
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a `kill -9` in the middle of a checkpoint or metrics write leaves is cleared by the
    /// next writer; finished files stay.
    #[test]
    fn the_next_writer_clears_a_killed_writers_temporaries() {
        let tmp = tempfile::TempDir::new().expect("a temporary directory");
        let run = tmp.path();
        std::fs::create_dir_all(run.join("checkpoints/.step-7.tmp")).unwrap();
        std::fs::write(run.join("checkpoints/.step-7.tmp/model.bpk"), b"half").unwrap();
        std::fs::write(run.join(".metrics.jsonl.tmp"), b"half").unwrap();
        std::fs::write(run.join(".summary.json.4242-7.tmp"), b"half").unwrap();
        std::fs::write(run.join("checkpoints/.latest.4242-8.tmp"), b"step-").unwrap();
        std::fs::write(run.join("metrics.jsonl"), b"kept").unwrap();
        std::fs::write(run.join(".someone-elses.tmp"), b"not ours").unwrap();
        std::fs::write(run.join(".summary.json.x-1.tmp"), b"not ours").unwrap();
        let lock = RunLock::acquire(run).unwrap();
        assert_eq!(lock.cleaned.len(), 4, "{:?}", lock.cleaned);
        assert!(!run.join("checkpoints/.step-7.tmp").exists());
        assert!(!run.join(".metrics.jsonl.tmp").exists());
        assert!(!run.join(".summary.json.4242-7.tmp").exists());
        assert!(run.join(".summary.json.x-1.tmp").exists());
        assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), b"kept");
        assert!(
            run.join(".someone-elses.tmp").exists(),
            "only tritium's own temporaries go"
        );
    }
}
