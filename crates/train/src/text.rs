//! Reading training text: plain `.txt`, gzip `.gz`, xz `.xz` (by extension), and JSONL with a `text`
//! field (`.jsonl`, also compressed), split into documents.
//!
//! A document is a JSONL record, or in plain text a block of lines separated by a line holding only
//! `<|endoftext|>` or, when a file has no such line, by blank lines.

use std::io::Read;
use std::path::{Path, PathBuf};

pub const EOT_MARKER: &str = tritium_gguf::names::END_OF_TEXT[0];

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid UTF-8 (byte {offset}); convert it to UTF-8 first")]
    Utf8 { path: PathBuf, offset: usize },
    #[error("{path}:{line}: {msg}")]
    Json {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: decompression failed: {msg}")]
    Decompress { path: PathBuf, msg: String },
}

/// The whole file as text, decompressed by extension.
pub fn read_text(path: &Path) -> Result<String, TextError> {
    let io = |source| TextError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let bytes = if name.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| TextError::Decompress {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        out
    } else if name.ends_with(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut raw.as_slice(), &mut out).map_err(|e| {
            TextError::Decompress {
                path: path.to_path_buf(),
                msg: e.to_string(),
            }
        })?;
        out
    } else {
        raw
    };
    String::from_utf8(bytes).map_err(|e| TextError::Utf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

fn is_jsonl(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let stem = name.trim_end_matches(".gz").trim_end_matches(".xz");
    stem.ends_with(".jsonl")
}

/// The documents of one file, in order.
pub fn documents(path: &Path) -> Result<Vec<String>, TextError> {
    let text = read_text(path)?;
    if is_jsonl(path) {
        return jsonl_documents(path, &text);
    }
    let has_marker = text.lines().any(|l| l.trim() == EOT_MARKER);
    let mut docs = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let boundary = if has_marker {
            line.trim() == EOT_MARKER
        } else {
            line.trim().is_empty()
        };
        if boundary {
            push_doc(&mut docs, &mut cur);
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    push_doc(&mut docs, &mut cur);
    Ok(docs)
}

fn push_doc(docs: &mut Vec<String>, cur: &mut String) {
    let d = cur.trim_end();
    if !d.trim().is_empty() {
        docs.push(d.to_string());
    }
    cur.clear();
}

fn jsonl_documents(path: &Path, text: &str) -> Result<Vec<String>, TextError> {
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |msg: String| TextError::Json {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        match v.get("text") {
            Some(serde_json::Value::String(s)) => {
                if !s.trim().is_empty() {
                    docs.push(s.clone());
                }
            }
            Some(_) => return Err(err("field \"text\" is not a string".into())),
            None => return Err(err("no \"text\" field".into())),
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn blank_lines_separate_documents_unless_markers_exist() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a.txt", b"one\ntwo\n\n\nthree\n");
        assert_eq!(documents(&p).unwrap(), vec!["one\ntwo", "three"]);
        let p = write(d.path(), "b.txt", b"one\n\ntwo\n<|endoftext|>\nthree\n");
        assert_eq!(documents(&p).unwrap(), vec!["one\n\ntwo", "three"]);
    }

    #[test]
    fn gzip_and_jsonl() {
        let d = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"{\"text\": \"hello\"}\n\n{\"text\": \"world\", \"id\": 3}\n")
            .unwrap();
        let p = write(d.path(), "c.jsonl.gz", &gz.finish().unwrap());
        assert_eq!(documents(&p).unwrap(), vec!["hello", "world"]);
    }

    #[test]
    fn bad_input_names_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "d.jsonl", b"{\"text\": \"ok\"}\n{\"txt\": 1}\n");
        let e = documents(&p).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:2") && e.contains("text"), "{e}");
        let p = write(d.path(), "e.txt", b"ok\xff\xfe");
        let e = documents(&p).unwrap_err().to_string();
        assert!(e.contains("e.txt") && e.contains("UTF-8"), "{e}");
        let e = documents(&d.path().join("missing.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.txt"), "{e}");
        let p = write(d.path(), "f.gz", b"not gzip");
        assert!(documents(&p).unwrap_err().to_string().contains("f.gz"));
    }
}
