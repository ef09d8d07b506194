//! Prepared token data: `tritium data prepare` turns text into flat token files, training reads them
//! memory-mapped and samples windows from a seeded, stateless sampler (so nothing loads the corpus
//! into RAM, and resuming at step N draws exactly the windows a straight run would have).
//!
//! A prepared directory holds `train.bin`, `val.bin` (little-endian u16 when the vocabulary fits,
//! else u32) and `meta.json` ([`DataMeta`]). Documents are separated by the end-of-text token, and
//! every `val_every`-th document goes to the validation split.

use std::path::{Path, PathBuf};
use std::time::Instant;

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::text::{TextError, documents};
use crate::tokenizer::{Tokenizer, TokenizerError};
use tritium_checkpoint::fsutil::{check_output, write_atomic};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Meta { path: PathBuf, msg: String },
    /// An output that is one of the inputs.
    #[error("{0}")]
    Output(String),
    #[error("no text in the inputs ({0}): nothing to train on")]
    Empty(String),
    #[error(
        "{dir}: the {split} split has {tokens} tokens, fewer than one window of {window}; add data or lower seq_len"
    )]
    TooShort {
        dir: PathBuf,
        split: &'static str,
        tokens: usize,
        window: usize,
    },
    #[error(
        "{dir}: prepared with tokenizer {data_hash:.12}…, but {tokenizer} is {tok_hash:.12}…; prepare the data again with this tokenizer"
    )]
    TokenizerMismatch {
        dir: PathBuf,
        tokenizer: PathBuf,
        data_hash: String,
        tok_hash: String,
    },
}

/// `meta.json` of a prepared directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataMeta {
    pub format: u32,
    pub tokenizer_hash: String,
    pub vocab_size: usize,
    /// Bytes per token: 2 (u16) or 4 (u32).
    pub token_bytes: usize,
    pub eot_id: u32,
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub train_documents: usize,
    pub val_documents: usize,
    pub text_bytes: usize,
    pub val_every: usize,
    pub sources: Vec<String>,
}

pub const FORMAT: u32 = 1;

/// What `prepare` did, for the report.
#[derive(Debug)]
pub struct PrepareReport {
    pub meta: DataMeta,
    pub seconds: f64,
}

/// Tokenizes `inputs` into `out` (created if missing). Documents are encoded in parallel batches.
pub fn prepare(
    tok: &Tokenizer,
    inputs: &[PathBuf],
    out: &Path,
    val_every: usize,
) -> Result<PrepareReport, DataError> {
    let start = Instant::now();
    let mut read = inputs.to_vec();
    read.push(tok.path.clone());
    if out.exists() && !out.is_dir() {
        return Err(DataError::Output(format!(
            "{}: exists and is not a directory (prepared data is a directory of token files)",
            out.display()
        )));
    }
    for name in ["train.bin", "val.bin", "meta.json"] {
        check_output(&out.join(name), &read).map_err(DataError::Output)?;
    }
    let mut docs = Vec::new();
    for p in inputs {
        docs.extend(documents(p)?);
    }
    if docs.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        return Err(DataError::Empty(names.join(", ")));
    }
    let text_bytes = docs.iter().map(|d| d.len()).sum();
    let val_every = val_every.max(2);
    let bar = indicatif::ProgressBar::new(docs.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "tokenizing {bar:40} {pos}/{len} documents ({per_sec}, eta {eta})",
        )
        .expect("static template"),
    );
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let (mut n_train, mut n_val) = (0, 0);
    for (c, chunk) in docs.chunks(1024).enumerate() {
        let encs = tok
            .inner
            .encode_batch(chunk.iter().map(|s| s.as_str()).collect::<Vec<_>>(), false)
            .map_err(|e| TokenizerError::Train(e.to_string()))?;
        for (i, enc) in encs.iter().enumerate() {
            let index = c * 1024 + i;
            let (dst, n) = if index % val_every == val_every - 1 {
                (&mut val, &mut n_val)
            } else {
                (&mut train, &mut n_train)
            };
            dst.extend_from_slice(enc.get_ids());
            dst.push(tok.eot_id);
            *n += 1;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let vocab = tok.vocab_size();
    let token_bytes = if vocab <= u16::MAX as usize + 1 { 2 } else { 4 };
    std::fs::create_dir_all(out).map_err(|source| DataError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    for (name, ids) in [("train.bin", &train), ("val.bin", &val)] {
        let path = out.join(name);
        let bytes = encode_tokens(ids, token_bytes);
        write_atomic(&path, &bytes).map_err(|source| DataError::Io { path, source })?;
    }
    let meta = DataMeta {
        format: FORMAT,
        tokenizer_hash: tok.hash.clone(),
        vocab_size: vocab,
        token_bytes,
        eot_id: tok.eot_id,
        train_tokens: train.len(),
        val_tokens: val.len(),
        train_documents: n_train,
        val_documents: n_val,
        text_bytes,
        val_every,
        sources: inputs.iter().map(|p| p.display().to_string()).collect(),
    };
    let path = out.join("meta.json");
    let json = serde_json::to_string_pretty(&meta).expect("meta serializes");
    write_atomic(&path, json.as_bytes()).map_err(|source| DataError::Io { path, source })?;
    Ok(PrepareReport {
        meta,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn encode_tokens(ids: &[u32], token_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * token_bytes);
    for &id in ids {
        if token_bytes == 2 {
            out.extend_from_slice(&(id as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    out
}

/// One split of a prepared directory, memory-mapped.
pub struct TokenFile {
    map: Mmap,
    token_bytes: usize,
    vocab_size: usize,
}

impl TokenFile {
    pub fn len(&self) -> usize {
        self.map.len() / self.token_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens `start..start + n` (ids past the vocabulary are clamped to 0 rather than read out of
    /// range by the embedding; `open` has already checked the file's length).
    pub fn window(&self, start: usize, n: usize, out: &mut Vec<i64>) {
        let b = self.token_bytes;
        for i in start..start + n {
            let at = i * b;
            let id = if b == 2 {
                u16::from_le_bytes([self.map[at], self.map[at + 1]]) as usize
            } else {
                u32::from_le_bytes(self.map[at..at + 4].try_into().expect("4 bytes")) as usize
            };
            out.push(if id < self.vocab_size { id as i64 } else { 0 });
        }
    }

    /// Counts of each token id, for the unigram entropy baseline.
    pub fn unigram_entropy(&self) -> f64 {
        let mut counts = vec![0u64; self.vocab_size];
        let mut buf = Vec::with_capacity(4096);
        let mut at = 0;
        while at < self.len() {
            let n = 4096.min(self.len() - at);
            buf.clear();
            self.window(at, n, &mut buf);
            for &t in &buf {
                counts[t as usize] += 1;
            }
            at += n;
        }
        let total = self.len() as f64;
        counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / total;
                -p * p.ln()
            })
            .sum()
    }
}

/// A prepared directory, opened.
pub struct Dataset {
    pub meta: DataMeta,
    pub train: TokenFile,
    pub val: TokenFile,
    pub dir: PathBuf,
}

impl Dataset {
    /// Opens `dir`, checking `meta.json` against the files and, if given, the tokenizer's hash.
    pub fn open(dir: &Path, tokenizer: Option<&Tokenizer>) -> Result<Self, DataError> {
        let meta_path = dir.join("meta.json");
        let text = std::fs::read_to_string(&meta_path).map_err(|source| DataError::Io {
            path: meta_path.clone(),
            source,
        })?;
        let meta: DataMeta = serde_json::from_str(&text).map_err(|e| DataError::Meta {
            path: meta_path.clone(),
            msg: e.to_string(),
        })?;
        if meta.format != FORMAT || !(meta.token_bytes == 2 || meta.token_bytes == 4) {
            return Err(DataError::Meta {
                path: meta_path,
                msg: format!(
                    "format {} / {} bytes per token is not one this build reads; prepare the data again",
                    meta.format, meta.token_bytes
                ),
            });
        }
        if let Some(t) = tokenizer
            && t.hash != meta.tokenizer_hash
        {
            return Err(DataError::TokenizerMismatch {
                dir: dir.to_path_buf(),
                tokenizer: t.path.clone(),
                data_hash: meta.tokenizer_hash.clone(),
                tok_hash: t.hash.clone(),
            });
        }
        let open = |name: &str, expect: usize| -> Result<TokenFile, DataError> {
            let path = dir.join(name);
            let io = |source| DataError::Io {
                path: path.clone(),
                source,
            };
            let f = std::fs::File::open(&path).map_err(io)?;
            // SAFETY: the map is read-only and private to this process; tritium never writes a
            // prepared file in place (prepare renames fresh files over old ones), so the bytes
            // cannot change under the map unless another program truncates the file, which
            // would be a bug outside our control (the usual caveat of every mmap reader).
            let map = unsafe { Mmap::map(&f) }.map_err(io)?;
            if map.len() != expect * meta.token_bytes {
                return Err(DataError::Meta {
                    path: path.clone(),
                    msg: format!(
                        "{} bytes, but meta.json says {expect} tokens of {} bytes; prepare the data again",
                        map.len(),
                        meta.token_bytes
                    ),
                });
            }
            Ok(TokenFile {
                map,
                token_bytes: meta.token_bytes,
                vocab_size: meta.vocab_size,
            })
        };
        let train = open("train.bin", meta.train_tokens)?;
        let val = open("val.bin", meta.val_tokens)?;
        Ok(Self {
            meta,
            train,
            val,
            dir: dir.to_path_buf(),
        })
    }

    /// Errors unless both splits hold at least one window of `seq + 1` tokens.
    pub fn check_window(&self, seq: usize) -> Result<(), DataError> {
        for (split, f) in [("train", &self.train), ("val", &self.val)] {
            if f.len() < seq + 1 {
                return Err(DataError::TooShort {
                    dir: self.dir.clone(),
                    split,
                    tokens: f.len(),
                    window: seq + 1,
                });
            }
        }
        Ok(())
    }
}

/// SplitMix64: a tiny, well-mixed hash used as a stateless RNG (the window for (seed, step, row) is
/// a pure function, so resuming needs no RNG state beyond the step).
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Start of training window `row` of micro-batch `micro` at `step`, uniform over the file.
pub fn window_start(
    seed: u64,
    step: usize,
    micro: usize,
    row: usize,
    len: usize,
    seq: usize,
) -> usize {
    let key = splitmix64(
        seed ^ splitmix64(step as u64 ^ splitmix64(((micro as u64) << 32) | row as u64)),
    );
    (key % (len - seq) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::train_bpe;

    fn setup(text: &str) -> (tempfile::TempDir, Tokenizer, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("in.txt");
        std::fs::write(&input, text).unwrap();
        let docs = documents(&input).unwrap();
        train_bpe(&docs, 280, &d.path().join("tok.json")).unwrap();
        let tok = Tokenizer::load(&d.path().join("tok.json")).unwrap();
        (d, tok, input)
    }

    #[test]
    fn prepare_splits_by_document_and_reads_back() {
        let text: String = (0..40)
            .map(|i| format!("document number {i} says hello.\n\n"))
            .collect();
        let (d, tok, input) = setup(&text);
        let out = d.path().join("prep");
        let r = prepare(&tok, &[input], &out, 10).unwrap();
        assert_eq!((r.meta.train_documents, r.meta.val_documents), (36, 4));
        assert_eq!(r.meta.token_bytes, 2);
        let ds = Dataset::open(&out, Some(&tok)).unwrap();
        // Validation holds documents 9, 19, 29, 39, each followed by end-of-text.
        let mut v = Vec::new();
        ds.val.window(0, ds.val.len(), &mut v);
        let ids: Vec<u32> = v.iter().map(|&t| t as u32).collect();
        let decoded = tok.decode(&ids);
        assert_eq!(decoded.matches("<|endoftext|>").count(), 4);
        assert!(
            decoded.starts_with("document number 9 says hello.<|endoftext|>document number 19"),
            "{decoded}"
        );
        assert_eq!(
            ds.train.len() + ds.val.len(),
            r.meta.train_tokens + r.meta.val_tokens
        );
    }

    #[test]
    fn bad_data_is_refused_with_the_fix() {
        let (d, tok, input) = setup("alpha beta gamma.\n\ndelta epsilon.\n");
        let empty = d.path().join("empty.txt");
        std::fs::write(&empty, "\n\n  \n").unwrap();
        let e = prepare(&tok, &[empty], &d.path().join("x"), 10)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("empty.txt") && e.contains("nothing to train on"),
            "{e}"
        );

        let out = d.path().join("prep");
        prepare(&tok, std::slice::from_ref(&input), &out, 2).unwrap();
        let ds = Dataset::open(&out, Some(&tok)).unwrap();
        let e = ds.check_window(1000).unwrap_err().to_string();
        assert!(
            e.contains("fewer than one window") && e.contains("seq_len"),
            "{e}"
        );

        // Another tokenizer → hash mismatch names both and says what to do.
        let docs = vec!["something else entirely".to_string(); 20];
        train_bpe(&docs, 270, &d.path().join("other.json")).unwrap();
        let other = Tokenizer::load(&d.path().join("other.json")).unwrap();
        let e = Dataset::open(&out, Some(&other)).err().unwrap().to_string();
        assert!(
            e.contains("other.json") && e.contains("prepare the data again"),
            "{e}"
        );

        // A truncated token file is caught before training reads past its end.
        let bin = out.join("train.bin");
        let len = std::fs::metadata(&bin).unwrap().len();
        std::fs::write(&bin, vec![0u8; len as usize - 2]).unwrap();
        let e = Dataset::open(&out, None).err().unwrap().to_string();
        assert!(
            e.contains("train.bin") && e.contains("meta.json says"),
            "{e}"
        );
    }

    #[test]
    fn window_starts_are_deterministic_and_in_range() {
        let a: Vec<usize> = (0..100)
            .map(|r| window_start(7, 3, 0, r, 1000, 16))
            .collect();
        let b: Vec<usize> = (0..100)
            .map(|r| window_start(7, 3, 0, r, 1000, 16))
            .collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|&s| s + 16 < 1000));
        let c: Vec<usize> = (0..100)
            .map(|r| window_start(8, 3, 0, r, 1000, 16))
            .collect();
        assert_ne!(a, c);
    }

    #[test]
    fn unigram_entropy_by_hand() {
        // Tokens [0, 0, 1, 2]: p = (1/2, 1/4, 1/4) → H = ½ln2 + 2·¼ln4 = 1.5 ln 2.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.bin");
        std::fs::write(&p, encode_tokens(&[0, 0, 1, 2], 2)).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        // SAFETY: a private temporary file nothing else writes.
        let map = unsafe { Mmap::map(&f) }.unwrap();
        let tf = TokenFile {
            map,
            token_bytes: 2,
            vocab_size: 3,
        };
        assert!((tf.unigram_entropy() - 1.5 * 2f64.ln()).abs() < 1e-12);
    }
}
