//! Which files a list of corpus inputs names: a file as given, a directory's corpus files
//! (recursively), or a glob pattern's matches, in a fixed order so a prepared corpus and its resume
//! point never depend on how the file system lists a directory.

use std::path::{Path, PathBuf};

/// Extensions a directory is searched for (each also compressed with `.gz`, `.zst` or `.xz`).
const CORPUS_EXTENSIONS: [&str; 3] = [".txt", ".jsonl", ".parquet"];

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no such file, directory or matching pattern")]
    Missing(PathBuf),
    #[error("{pattern}: {msg}")]
    Pattern { pattern: String, msg: String },
    #[error(
        "{0}: a directory with no corpus files (.txt, .jsonl or .parquet, optionally .gz/.zst/.xz)"
    )]
    EmptyDir(PathBuf),
}

fn is_corpus_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let stem = [".gz", ".zst", ".xz"]
        .iter()
        .fold(name, |n, ext| n.strip_suffix(ext).unwrap_or(n));
    !name.starts_with('.') && CORPUS_EXTENSIONS.iter().any(|e| stem.ends_with(e))
}

/// The input files, in order: inputs in the order given, a directory's or pattern's files sorted
/// by path.
pub fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, CorpusError> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let before = files.len();
            walk(input, &mut files)?;
            if files.len() == before {
                return Err(CorpusError::EmptyDir(input.clone()));
            }
            files[before..].sort();
        } else if input.exists() {
            files.push(input.clone());
        } else {
            let pattern = input.to_string_lossy().into_owned();
            if !pattern.contains(['*', '?', '[']) {
                return Err(CorpusError::Missing(input.clone()));
            }
            let bad = |msg: String| CorpusError::Pattern {
                pattern: pattern.clone(),
                msg,
            };
            // As a shell does: `*` does not match a leading dot.
            let options = glob::MatchOptions {
                require_literal_leading_dot: true,
                ..Default::default()
            };
            let mut matched: Vec<PathBuf> = glob::glob_with(&pattern, options)
                .map_err(|e| bad(e.to_string()))?
                .map(|p| p.map_err(|e| bad(e.to_string())))
                .collect::<Result<_, _>>()?;
            matched.retain(|p| p.is_file());
            if matched.is_empty() {
                return Err(bad("matches no files".into()));
            }
            matched.sort();
            files.extend(matched);
        }
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), CorpusError> {
    walk_once(dir, files, &mut std::collections::HashSet::new())
}

/// [`walk`], entering each directory once however links reach it (a link back up the tree
/// would otherwise read the corpus again and again).
fn walk_once(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    seen: &mut std::collections::HashSet<PathBuf>,
) -> Result<(), CorpusError> {
    let io = |source| CorpusError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if !seen.insert(std::fs::canonicalize(dir).map_err(io)?) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            walk_once(&path, files, seen)?;
        } else if is_corpus_file(&path) {
            files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link back up the tree does not read the corpus again.
    #[cfg(unix)]
    #[test]
    fn a_link_loop_is_walked_once() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("corpus");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.txt"), b"x").unwrap();
        std::os::unix::fs::symlink(&root, root.join("sub/loop")).unwrap();
        let got = expand(std::slice::from_ref(&root)).unwrap();
        assert_eq!(got, vec![root.join("sub/a.txt")]);
    }

    #[test]
    fn directories_and_patterns_expand_sorted() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("shards/sub")).unwrap();
        for name in [
            "shards/b.parquet",
            "shards/a.jsonl.zst",
            "shards/sub/c.txt.gz",
            "shards/README.md",
            "shards/.hidden.txt",
            "one.txt",
        ] {
            std::fs::write(root.join(name), b"x").unwrap();
        }
        let got = expand(&[root.join("one.txt"), root.join("shards")]).unwrap();
        let want: Vec<PathBuf> = [
            "one.txt",
            "shards/a.jsonl.zst",
            "shards/b.parquet",
            "shards/sub/c.txt.gz",
        ]
        .iter()
        .map(|n| root.join(n))
        .collect();
        assert_eq!(got, want);
        let got = expand(&[root.join("shards/*.*")]).unwrap();
        assert_eq!(
            got,
            vec![
                root.join("shards/README.md"),
                root.join("shards/a.jsonl.zst"),
                root.join("shards/b.parquet")
            ]
        );
        let e = expand(&[root.join("nope/*.parquet")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope/*.parquet") && e.contains("matches no files"),
            "{e}"
        );
        let e = expand(&[root.join("missing.txt")]).unwrap_err().to_string();
        assert!(e.contains("missing.txt"), "{e}");
        std::fs::create_dir(root.join("empty")).unwrap();
        let e = expand(&[root.join("empty")]).unwrap_err().to_string();
        assert!(e.contains("no corpus files"), "{e}");
    }
}
