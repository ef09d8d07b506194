//! Writing files so that a crash or a full disk never leaves a half-written file under the final name.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`.
/// Only a regular file is ever replaced: a directory, device or pipe at `path` is an error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Ok(meta) = std::fs::metadata(path)
        && !meta.is_file()
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists and is not a regular file; refusing to replace it",
        ));
    }
    let tmp = unique_tmp_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `files` (name, bytes) as the new directory `out`: into `.out.tmp` beside it, each file
/// synced, then renamed into place, so `out` is either absent or whole. An existing `out` is an
/// error rather than a merge. Returns the bytes written.
pub fn write_dir_atomic(out: &Path, files: &[(&str, Vec<u8>)]) -> std::io::Result<usize> {
    if out.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists; a new directory is written here, never merged into one",
        ));
    }
    let tmp = tmp_path(out);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let mut bytes = 0;
    for (name, b) in files {
        let mut f = std::fs::File::create(tmp.join(name))?;
        f.write_all(b)?;
        f.sync_all()?;
        bytes += b.len();
    }
    sync_dir(&tmp)?;
    std::fs::rename(&tmp, out)?;
    sync_dir(
        out.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )?;
    Ok(bytes)
}

/// Makes a directory's entries (files created or renamed into it) durable: without it a power
/// cut after a rename may leave the old name on disk even though the file's data were synced.
/// Where directories cannot be opened for syncing (not on Unix), this is a no-op.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// `dir/.name.PID-N.tmp` for `dir/name`: a name no other writer uses, so two processes (or
/// threads) writing one file at once each rename a whole file of their own into place instead of
/// one renaming the other's temporary away.
fn unique_tmp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}-{n}.tmp", std::process::id()))
}

/// Whether `file` is a temporary that [`write_atomic`] (`.name.PID-N.tmp`) or an older tritium
/// (`.name.tmp`) writes for `name`.
pub fn is_tmp_for(file: &str, name: &str) -> bool {
    let Some(rest) = file
        .strip_prefix('.')
        .and_then(|f| f.strip_suffix(".tmp"))
        .and_then(|f| f.strip_prefix(name))
    else {
        return false;
    };
    rest.is_empty()
        || rest.strip_prefix('.').is_some_and(|id| {
            let mut parts = id.split('-');
            let digits = |p: Option<&str>| {
                p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            };
            digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
        })
}

/// `dir/.name.tmp` for `dir/name`.
pub fn tmp_path(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// `path` made absolute with symlinks resolved, for comparing two spellings of one file (a path
/// that does not exist yet is resolved through its parent).
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.canonicalize().ok()?,
        _ => std::env::current_dir().ok()?,
    };
    Some(parent.join(path.file_name()?))
}

/// Refuses an output directory that holds one of the command's inputs, however spelled: the
/// command replaces and removes files there (`data prepare --out DIR` with an input in DIR).
pub fn check_output_dir(out: &Path, inputs: &[PathBuf]) -> Result<(), String> {
    let Some(o) = resolved(out) else {
        return Ok(());
    };
    match inputs
        .iter()
        .find(|i| resolved(i).is_some_and(|r| r.starts_with(&o)))
    {
        Some(i) => Err(format!(
            "{}: is an input of this command and lies in the output directory {}; choose another output directory",
            i.display(),
            out.display()
        )),
        None => Ok(()),
    }
}

/// Refuses an output that is one of the command's inputs, however spelled: the atomic rename
/// would replace the data being read (an export's `--out` naming the checkpoint's `model.bpk`).
pub fn check_output(out: &Path, inputs: &[PathBuf]) -> Result<(), String> {
    let Some(o) = resolved(out) else {
        return Ok(());
    };
    match inputs.iter().find(|i| resolved(i).is_some_and(|r| r == o)) {
        Some(i) => Err(format!(
            "{}: is an input of this command ({}); choose another output path",
            out.display(),
            i.display()
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory where a file would go is left alone; an input, however spelled, is refused.
    #[test]
    fn only_regular_files_are_replaced_and_inputs_never() {
        let d = tempfile::TempDir::new().expect("a temporary directory");
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let e = write_atomic(&sub, b"x").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(sub.is_dir(), "the directory is untouched");
        let f = sub.join("model.bpk");
        write_atomic(&f, b"weights").unwrap();
        // The same file spelled through `..`: refused; another file: fine.
        let spelled = sub.join("..").join("sub").join("model.bpk");
        let e = check_output(&spelled, std::slice::from_ref(&f)).unwrap_err();
        assert!(e.contains("is an input"), "{e}");
        check_output(&sub.join("out.gguf"), std::slice::from_ref(&f)).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"weights");
    }

    /// Writers of one file at once each put a whole file in place and none fails (with one
    /// temporary name, one writer renamed another's away and got "No such file").
    #[test]
    fn concurrent_writers_of_one_file_all_succeed() {
        let d = tempfile::TempDir::new().expect("a temporary directory");
        let f = d.path().join("results.json");
        let bodies: Vec<Vec<u8>> = (0..8).map(|i| vec![b'a' + i as u8; 1 << 16]).collect();
        std::thread::scope(|s| {
            for b in &bodies {
                let f = &f;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_atomic(f, b).unwrap();
                    }
                });
            }
        });
        assert!(bodies.contains(&std::fs::read(&f).unwrap()));
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "no temporaries left: {left:?}");
    }

    #[test]
    fn temporaries_are_recognised_in_both_forms_and_nothing_else() {
        assert!(is_tmp_for(".metrics.jsonl.tmp", "metrics.jsonl"));
        assert!(is_tmp_for(".metrics.jsonl.123-4.tmp", "metrics.jsonl"));
        assert!(!is_tmp_for(".metrics.jsonl.123.tmp", "metrics.jsonl"));
        assert!(!is_tmp_for(".metrics.jsonl.x-4.tmp", "metrics.jsonl"));
        assert!(!is_tmp_for(".metrics.jsonlx.tmp", "metrics.jsonl"));
        assert!(!is_tmp_for("metrics.jsonl", "metrics.jsonl"));
    }
}
