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
            }),
            Err(TryLockError::WouldBlock) => Err(CheckpointError::Locked {
                dir: run.to_path_buf(),
            }),
            Err(TryLockError::Error(source)) => Err(CheckpointError::Io { path, source }),
        }
    }
}
