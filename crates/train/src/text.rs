//! Reading training text, one document at a time, so a corpus never has to fit in memory.
//!
//! Formats, by extension: plain text (`.txt` or anything else), JSONL (`.jsonl`) with the document in
//! a string field (`text` unless told otherwise), and Parquet (`.parquet`) with the document in a
//! string column of that name. Text and JSONL may be compressed: `.gz`, `.zst` (streamed) or `.xz`
//! (decoded whole: xz corpora are rare and the pure-Rust decoder has no streaming reader).
//!
//! A document is a JSONL record, a Parquet row, or in plain text a block of lines separated by a line
//! holding only `<|endoftext|>` or, when a file has no such line, by blank lines. Empty documents
//! (and null Parquet values) are skipped, so document `i` of a file means its `i`-th non-empty one.

use std::io::{BufRead, BufReader, Read};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

pub const EOT_MARKER: &str = tritium_gguf::names::END_OF_TEXT[0];

/// The field (JSONL) or column (Parquet) that holds a document unless the user names another.
pub const DEFAULT_FIELD: &str = "text";

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid UTF-8 (byte {offset}); convert it to UTF-8 first")]
    Utf8 { path: PathBuf, offset: u64 },
    #[error("{path}:{line}: {msg}")]
    Json {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: decompression failed: {msg}")]
    Decompress { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Parquet { path: PathBuf, msg: String },
}

/// The whole file as text, decompressed by extension (for files read whole: evaluation text, tasks).
pub fn read_text(path: &Path) -> Result<String, TextError> {
    let mut bytes = Vec::new();
    decoded(path)?
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(path, e))?;
    String::from_utf8(bytes).map_err(|e| TextError::Utf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to() as u64,
    })
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

fn compressed(path: &Path) -> bool {
    let n = file_name(path);
    n.ends_with(".gz") || n.ends_with(".zst") || n.ends_with(".xz")
}

/// A failed read: in a compressed file that is the decoder's complaint about its input.
fn read_error(path: &Path, e: std::io::Error) -> TextError {
    if compressed(path) && e.kind() != std::io::ErrorKind::NotFound {
        TextError::Decompress {
            path: path.to_path_buf(),
            msg: e.to_string(),
        }
    } else {
        TextError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// The file's bytes, decompressed by extension, as a stream.
fn decoded(path: &Path) -> Result<Box<dyn BufRead + Send>, TextError> {
    let file = std::fs::File::open(path).map_err(|source| TextError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let name = file_name(path);
    Ok(if name.ends_with(".gz") {
        let gz = flate2::read::MultiGzDecoder::new(BufReader::new(file));
        Box::new(BufReader::with_capacity(1 << 16, gz))
    } else if name.ends_with(".zst") {
        let zst = zstd::stream::read::Decoder::new(file).map_err(|e| read_error(path, e))?;
        Box::new(BufReader::with_capacity(1 << 16, zst))
    } else if name.ends_with(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut BufReader::new(file), &mut out).map_err(|e| {
            TextError::Decompress {
                path: path.to_path_buf(),
                msg: e.to_string(),
            }
        })?;
        Box::new(std::io::Cursor::new(out))
    } else {
        Box::new(BufReader::with_capacity(1 << 16, file))
    })
}

/// Decoded lines, each checked as UTF-8 (errors give the byte offset, as `read_text`'s do).
struct Lines<'a> {
    path: &'a Path,
    reader: Box<dyn BufRead + Send>,
    buf: Vec<u8>,
    offset: u64,
    /// 1-based number of the line last returned.
    line: usize,
}

impl<'a> Lines<'a> {
    fn open(path: &'a Path) -> Result<Self, TextError> {
        Ok(Self {
            path,
            reader: decoded(path)?,
            buf: Vec::new(),
            offset: 0,
            line: 0,
        })
    }

    /// The next line without its `\n` or `\r\n`, or `None` at the end.
    fn next_line(&mut self) -> Result<Option<&str>, TextError> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| read_error(self.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        let start = self.offset;
        self.offset += n as u64;
        self.line += 1;
        let mut line = &self.buf[..];
        if let Some(l) = line.strip_suffix(b"\n") {
            line = l.strip_suffix(b"\r").unwrap_or(l);
        }
        // A UTF-8 byte-order mark (Windows editors write one) is not text.
        if self.line == 1 {
            line = line.strip_prefix(b"\xef\xbb\xbf").unwrap_or(line);
        }
        std::str::from_utf8(line)
            .map(Some)
            .map_err(|e| TextError::Utf8 {
                path: self.path.to_path_buf(),
                offset: start + e.valid_up_to() as u64,
            })
    }
}

/// Calls `f` with each document of `path` in order, until the file ends or `f` breaks. `field`
/// names the JSONL field or Parquet column that holds the text.
pub fn for_each_document(
    path: &Path,
    field: &str,
    f: &mut dyn FnMut(String) -> ControlFlow<()>,
) -> Result<(), TextError> {
    let name = file_name(path);
    if name.ends_with(".parquet") {
        return parquet_documents(path, field, f);
    }
    let stem = [".gz", ".zst", ".xz"]
        .iter()
        .fold(name, |n, ext| n.strip_suffix(ext).unwrap_or(n));
    if stem.ends_with(".jsonl") {
        jsonl_documents(path, field, f)
    } else {
        text_documents(path, f)
    }
}

/// All documents of one file (for inputs that are read whole: tokenizer training, tests).
pub fn documents(path: &Path) -> Result<Vec<String>, TextError> {
    field_documents(path, DEFAULT_FIELD)
}

/// [`documents`], taking JSONL and Parquet documents from `field`.
pub fn field_documents(path: &Path, field: &str) -> Result<Vec<String>, TextError> {
    let mut docs = Vec::new();
    for_each_document(path, field, &mut |d| {
        docs.push(d);
        ControlFlow::Continue(())
    })?;
    Ok(docs)
}

fn text_documents(
    path: &Path,
    f: &mut dyn FnMut(String) -> ControlFlow<()>,
) -> Result<(), TextError> {
    // Whether any marker line exists decides how the whole file splits, so a first pass looks
    // (decoding runs far faster than tokenizing, so the second read costs little).
    let mut lines = Lines::open(path)?;
    let mut has_marker = false;
    while let Some(line) = lines.next_line()? {
        if line.trim() == EOT_MARKER {
            has_marker = true;
            break;
        }
    }
    let mut lines = Lines::open(path)?;
    let mut cur = String::new();
    while let Some(line) = lines.next_line()? {
        let boundary = if has_marker {
            line.trim() == EOT_MARKER
        } else {
            line.trim().is_empty()
        };
        if boundary {
            if let Some(doc) = take_doc(&mut cur)
                && f(doc).is_break()
            {
                return Ok(());
            }
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    if let Some(doc) = take_doc(&mut cur) {
        let _ = f(doc);
    }
    Ok(())
}

fn take_doc(cur: &mut String) -> Option<String> {
    let d = cur.trim_end();
    let doc = (!d.trim().is_empty()).then(|| d.to_string());
    cur.clear();
    doc
}

fn jsonl_documents(
    path: &Path,
    field: &str,
    f: &mut dyn FnMut(String) -> ControlFlow<()>,
) -> Result<(), TextError> {
    let mut lines = Lines::open(path)?;
    loop {
        let line_no = lines.line + 1;
        let Some(line) = lines.next_line()? else {
            return Ok(());
        };
        if line.trim().is_empty() {
            continue;
        }
        let err = |msg: String| TextError::Json {
            path: path.to_path_buf(),
            line: line_no,
            msg,
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        match v.get(field) {
            Some(serde_json::Value::String(s)) => {
                if !s.trim().is_empty() && f(s.clone()).is_break() {
                    return Ok(());
                }
            }
            Some(serde_json::Value::Null) => {}
            Some(_) => return Err(err(format!("field {field:?} is not a string"))),
            None => return Err(err(format!("no {field:?} field"))),
        }
    }
}

/// The string column `field` of a Parquet file, row group by row group, a page at a time (a row
/// group is never held whole). Null values are skipped like empty documents.
fn parquet_documents(
    path: &Path,
    field: &str,
    f: &mut dyn FnMut(String) -> ControlFlow<()>,
) -> Result<(), TextError> {
    use parquet::basic::Type;
    use parquet::column::reader::ColumnReader;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let err = |msg: String| TextError::Parquet {
        path: path.to_path_buf(),
        msg,
    };
    let file = std::fs::File::open(path).map_err(|source| TextError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = SerializedFileReader::new(file).map_err(|e| err(e.to_string()))?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let columns = schema.columns();
    let Some(col) = columns.iter().position(|c| c.path().string() == field) else {
        let names: Vec<String> = columns.iter().map(|c| c.path().string()).collect();
        return Err(err(format!(
            "no column {field:?} (it has {}); name the text column with --field",
            names.join(", ")
        )));
    };
    let descr = &columns[col];
    if descr.physical_type() != Type::BYTE_ARRAY || descr.max_rep_level() > 0 {
        return Err(err(format!(
            "column {field:?} is {} (repetition level {}), not a string column",
            descr.physical_type(),
            descr.max_rep_level()
        )));
    }
    let (mut values, mut defs) = (Vec::new(), Vec::new());
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(|e| err(e.to_string()))?;
        let column = group
            .get_column_reader(col)
            .map_err(|e| err(format!("row group {g}: {e}")))?;
        let ColumnReader::ByteArrayColumnReader(mut column) = column else {
            return Err(err(format!("column {field:?} is not a byte-array column")));
        };
        loop {
            values.clear();
            defs.clear();
            let (records, _, _) = column
                .read_records(256, Some(&mut defs), None, &mut values)
                .map_err(|e| err(format!("row group {g}: {e}")))?;
            if records == 0 {
                break;
            }
            for v in &values {
                let s = std::str::from_utf8(v.data()).map_err(|e| {
                    err(format!(
                        "row group {g}: a value of {field:?} is not UTF-8 (byte {})",
                        e.valid_up_to()
                    ))
                })?;
                if !s.trim().is_empty() && f(s.to_string()).is_break() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
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
        let p = write(d.path(), "a.txt", b"one\r\ntwo\n\n\nthree\n");
        assert_eq!(documents(&p).unwrap(), vec!["one\ntwo", "three"]);
        let p = write(d.path(), "b.txt", b"one\n\ntwo\n<|endoftext|>\nthree\n");
        assert_eq!(documents(&p).unwrap(), vec!["one\n\ntwo", "three"]);
        // A byte-order mark is not part of the first document, nor of a JSONL line.
        let p = write(d.path(), "c.txt", b"\xef\xbb\xbfone\n\ntwo\n");
        assert_eq!(documents(&p).unwrap(), vec!["one", "two"]);
        let p = write(d.path(), "d.jsonl", b"\xef\xbb\xbf{\"text\": \"hi\"}\n");
        assert_eq!(documents(&p).unwrap(), vec!["hi"]);
    }

    #[test]
    fn gzip_zstd_and_jsonl_fields() {
        let d = tempfile::tempdir().unwrap();
        let lines = b"{\"text\": \"hello\"}\n\n{\"text\": \"world\", \"id\": 3}\n";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(lines).unwrap();
        let p = write(d.path(), "c.jsonl.gz", &gz.finish().unwrap());
        assert_eq!(documents(&p).unwrap(), vec!["hello", "world"]);
        let lines = b"{\"body\": \"a\", \"text\": 1}\n{\"body\": null}\n{\"body\": \"b\\nc\"}\n";
        let p = write(
            d.path(),
            "c.jsonl.zst",
            &zstd::encode_all(&lines[..], 3).unwrap(),
        );
        assert_eq!(field_documents(&p, "body").unwrap(), vec!["a", "b\nc"]);
        let p = write(
            d.path(),
            "t.txt.zst",
            &zstd::encode_all(&b"x\n\ny"[..], 1).unwrap(),
        );
        assert_eq!(documents(&p).unwrap(), vec!["x", "y"]);
    }

    /// `testdata/docs.parquet` was written by pyarrow 26 (an independent writer): columns `id`
    /// (int64) and `content` (nullable string) with a null, an empty and a blank value, zstd pages,
    /// three row groups of at most three rows:
    /// `pq.write_table(t, "docs.parquet", compression="zstd", row_group_size=3, data_page_size=64)`.
    #[test]
    fn parquet_string_column_across_row_groups() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/docs.parquet");
        assert_eq!(
            field_documents(&p, "content").unwrap(),
            vec![
                "First document.",
                "Second, with a line\nbreak.",
                "Third — non-ASCII: é, ß, 日本.",
                "Fourth."
            ]
        );
        // Stopping early stops reading.
        let mut first = Vec::new();
        for_each_document(&p, "content", &mut |d| {
            first.push(d);
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(first, vec!["First document."]);
        let e = documents(&p).unwrap_err().to_string();
        assert!(
            e.contains("docs.parquet") && e.contains("no column \"text\"") && e.contains("content"),
            "{e}"
        );
        let e = field_documents(&p, "id").unwrap_err().to_string();
        assert!(e.contains("not a string column"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let cut = write(d.path(), "cut.parquet", &bytes[..bytes.len() / 2]);
        let e = documents(&cut).unwrap_err().to_string();
        assert!(e.contains("cut.parquet"), "{e}");
    }

    #[test]
    fn bad_input_names_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "d.jsonl", b"{\"text\": \"ok\"}\n{\"txt\": 1}\n");
        let e = documents(&p).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:2") && e.contains("text"), "{e}");
        let p = write(d.path(), "e.txt", b"ok\nfine\nok\xff\xfe");
        let e = documents(&p).unwrap_err().to_string();
        assert!(e.contains("e.txt") && e.contains("UTF-8 (byte 10)"), "{e}");
        let e = documents(&d.path().join("missing.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.txt"), "{e}");
        let p = write(d.path(), "f.gz", b"not gzip");
        assert!(documents(&p).unwrap_err().to_string().contains("f.gz"));
        let p = write(d.path(), "g.jsonl.zst", b"not zstd");
        let e = documents(&p).unwrap_err().to_string();
        assert!(
            e.contains("g.jsonl.zst") && e.contains("decompression"),
            "{e}"
        );
    }
}
