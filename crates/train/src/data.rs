//! Prepared token data: `tritium data prepare` (`prepare.rs`) turns text into token shards;
//! training reads them memory-mapped and samples windows from a seeded, stateless sampler (so
//! nothing loads the corpus into RAM, and resuming at step N draws exactly the windows a straight
//! run would have).
//!
//! A prepared directory holds `meta.json` ([`DataMeta`]) and, per shard k, `train-0000k.bin` and
//! `val-0000k.bin`: little-endian u16 tokens when the vocabulary fits, else u32. Each split reads as
//! its shards concatenated. Documents are separated by the end-of-text token, and every
//! `val_every`-th document goes to the validation split. Format 1 (one `train.bin` and `val.bin`,
//! no shard list) is still read.

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::corpus::CorpusError;
use crate::text::TextError;
use crate::tokenizer::{Tokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Corpus(#[from] CorpusError),
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
    /// Token counts of each shard, in order (format 2; format 1 has one unnamed pair of files).
    #[serde(default)]
    pub shards: Vec<Shard>,
}

pub const FORMAT: u32 = 2;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub train_tokens: usize,
    pub val_tokens: usize,
}

/// Shard `k` of `split` ("train" or "val").
pub fn shard_path(dir: &Path, split: &str, k: usize) -> PathBuf {
    dir.join(format!("{split}-{k:05}.bin"))
}

/// One split of a prepared directory: its shards memory-mapped, read as one token sequence.
pub struct TokenFile {
    maps: Vec<Mmap>,
    /// Where each mapped shard starts in the sequence, and the total at the end.
    starts: Vec<usize>,
    token_bytes: usize,
    vocab_size: usize,
}

impl TokenFile {
    pub fn len(&self) -> usize {
        *self.starts.last().expect("starts holds the total")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens `start..start + n` (ids past the vocabulary are clamped to 0 rather than read out of
    /// range by the embedding; `open` has already checked each shard's length).
    pub fn window(&self, start: usize, n: usize, out: &mut Vec<i64>) {
        let b = self.token_bytes;
        let end = start + n;
        let mut i = start;
        while i < end {
            // The shard holding token i (empty shards are not mapped, so starts strictly grow).
            let s = self.starts.partition_point(|&x| x <= i) - 1;
            let stop = self.starts[s + 1].min(end);
            let (map, base) = (&self.maps[s], self.starts[s]);
            for t in i - base..stop - base {
                let at = t * b;
                let id = if b == 2 {
                    u16::from_le_bytes([map[at], map[at + 1]]) as usize
                } else {
                    u32::from_le_bytes(map[at..at + 4].try_into().expect("4 bytes")) as usize
                };
                out.push(if id < self.vocab_size { id as i64 } else { 0 });
            }
            i = stop;
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
        if !(meta.format == 1 || meta.format == FORMAT)
            || !(meta.token_bytes == 2 || meta.token_bytes == 4)
        {
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
        // Ids are checked against the vocabulary as they are read (and clamped into it); a
        // vocabulary of 0 ids, or one another than the tokenizer's, is a damaged meta.json.
        if meta.vocab_size == 0 || tokenizer.is_some_and(|t| t.vocab_size() != meta.vocab_size) {
            return Err(DataError::Meta {
                path: meta_path,
                msg: format!(
                    "vocab_size {} does not match the tokenizer's {}; prepare the data again",
                    meta.vocab_size,
                    tokenizer.map_or("(none given)".into(), |t| t.vocab_size().to_string())
                ),
            });
        }
        let open = |split: &str, expect: usize| -> Result<TokenFile, DataError> {
            let parts: Vec<(PathBuf, usize)> = if meta.format == 1 {
                vec![(dir.join(format!("{split}.bin")), expect)]
            } else {
                meta.shards
                    .iter()
                    .enumerate()
                    .map(|(k, s)| {
                        let n = if split == "train" {
                            s.train_tokens
                        } else {
                            s.val_tokens
                        };
                        (shard_path(dir, split, k), n)
                    })
                    .collect()
            };
            // Checked sums: with a doctored meta.json, wrapping ones could agree with the files.
            let listed = parts.iter().try_fold(0usize, |a, p| a.checked_add(p.1));
            if listed != Some(expect) {
                let listed = listed.map_or("more than 2^64".into(), |n| n.to_string());
                return Err(DataError::Meta {
                    path: meta_path.clone(),
                    msg: format!(
                        "its {split} shards hold {listed} tokens but it says {expect}; prepare the data again"
                    ),
                });
            }
            let mut file = TokenFile {
                maps: Vec::new(),
                starts: vec![0],
                token_bytes: meta.token_bytes,
                vocab_size: meta.vocab_size,
            };
            for (path, tokens) in parts {
                let io = |source| DataError::Io {
                    path: path.clone(),
                    source,
                };
                let f = std::fs::File::open(&path).map_err(io)?;
                let len = f.metadata().map_err(io)?.len();
                if tokens.checked_mul(meta.token_bytes).map(|b| b as u64) != Some(len) {
                    return Err(DataError::Meta {
                        path: path.clone(),
                        msg: format!(
                            "{len} bytes, but meta.json says {tokens} tokens of {} bytes; prepare the data again",
                            meta.token_bytes
                        ),
                    });
                }
                if tokens == 0 {
                    continue; // an empty file cannot be mapped, and holds nothing to read
                }
                // SAFETY: the map is read-only and private to this process; tritium never writes
                // a prepared file in place (prepare renames fresh files over old ones), so the
                // bytes cannot change under the map unless another program truncates the file,
                // which would be a bug outside our control (the usual caveat of every mmap reader).
                let map = unsafe { Mmap::map(&f) }.map_err(io)?;
                file.maps.push(map);
                file.starts.push(file.len() + tokens);
            }
            Ok(file)
        };
        let train = open("train", meta.train_tokens)?;
        let val = open("val", meta.val_tokens)?;
        // Since session 38 every document starts with the tokenizer's BOS where it has one; data
        // prepared before then has the same meta.json and tokenizer hash but no BOS, and would
        // train a model on documents its engine and evaluation never show it. The first token
        // of each split tells them apart.
        if let Some(bos) = tokenizer.and_then(|t| t.bos_id) {
            for (split, f) in [("train", &train), ("val", &val)] {
                let mut first = Vec::new();
                if !f.is_empty() {
                    f.window(0, 1, &mut first);
                }
                if first.first().is_some_and(|&id| id != i64::from(bos)) {
                    return Err(DataError::Meta {
                        path: dir.to_path_buf(),
                        msg: format!(
                            "its {split} split starts with token {} where this tokenizer's BOS \
                             ({bos}) should start every document: it was prepared before tritium \
                             put the BOS there; prepare the data again",
                            first[0]
                        ),
                    });
                }
            }
        }
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

    fn token_file(dir: &Path, shards: &[&[u16]], vocab_size: usize) -> TokenFile {
        let mut file = TokenFile {
            maps: Vec::new(),
            starts: vec![0],
            token_bytes: 2,
            vocab_size,
        };
        for (k, ids) in shards.iter().enumerate() {
            let p = dir.join(format!("t{k}.bin"));
            let bytes: Vec<u8> = ids.iter().flat_map(|t| t.to_le_bytes()).collect();
            std::fs::write(&p, bytes).unwrap();
            let f = std::fs::File::open(&p).unwrap();
            // SAFETY: a private temporary file nothing else writes.
            file.maps.push(unsafe { Mmap::map(&f) }.unwrap());
            file.starts.push(file.len() + ids.len());
        }
        file
    }

    #[test]
    fn windows_read_across_shards() {
        let d = tempfile::tempdir().unwrap();
        let tf = token_file(d.path(), &[&[0, 1, 2], &[3], &[4, 5, 9]], 9);
        assert_eq!(tf.len(), 7);
        for (start, n) in [(0, 7), (2, 3), (3, 1), (1, 5), (6, 1), (4, 0)] {
            let mut got = Vec::new();
            tf.window(start, n, &mut got);
            // 9 is past the vocabulary of 9 ids: read as 0.
            let want: Vec<i64> = (start..start + n)
                .map(|i| if i == 6 { 0 } else { i as i64 })
                .collect();
            assert_eq!(got, want, "window {start}+{n}");
        }
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
        // Tokens [0, 0, 1, 2] over two shards: p = (1/2, 1/4, 1/4) → H = ½ln2 + 2·¼ln4 = 1.5 ln 2.
        let d = tempfile::tempdir().unwrap();
        let tf = token_file(d.path(), &[&[0, 0], &[1, 2]], 3);
        assert!((tf.unigram_entropy() - 1.5 * 2f64.ln()).abs() < 1e-12);
    }
}
