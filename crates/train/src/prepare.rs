//! `tritium data prepare`: text → token shards, streamed with bounded memory and resumable.
//!
//! One thread reads the inputs in order into batches of documents; each batch is tokenized in
//! parallel; a document's tokens go to the train or the validation buffer by its index in the whole
//! stream (every `val_every`-th document is validation). When the train buffer reaches
//! `shard_tokens`, both buffers are written as shard k (`train-0000k.bin`, `val-0000k.bin`, each
//! atomically), then `progress.json` records the shard and where the input stream stands (file and
//! document). A run killed at any moment restarts from its last recorded shard and writes the bytes
//! a straight run would: a shard's content depends only on the document stream and the shard size,
//! never on batching or timing. `meta.json` is written last, and training reads only directories that have it.
//!
//! Memory: two batches of text in flight (a few MB), one shard's tokens, the tokenizer.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::corpus;
use crate::data::{DataError, DataMeta, FORMAT, Shard, shard_path};
use crate::text::{DEFAULT_FIELD, TextError, for_each_document};
use crate::tokenizer::{Tokenizer, TokenizerError};
use tritium_checkpoint::fsutil::{check_output_dir, write_atomic};

/// Train tokens per shard unless told otherwise: 2^25 (64 MiB at two bytes a token), a few
/// minutes of tokenizing on two cores, which bounds what an interrupted run redoes.
pub const DEFAULT_SHARD_TOKENS: usize = 1 << 25;

/// The most train tokens a shard may be given: a shard is built in memory (up to 8 GiB at four
/// bytes a token), and a larger request would only fail later, as an allocation abort.
pub const MAX_SHARD_TOKENS: usize = 1 << 31;

/// Documents are read and tokenized in batches cut at whichever comes first (the output does not
/// depend on them: a shard ends after the document that fills it).
const BATCH_DOCS: usize = 2048;
const BATCH_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Every n-th document goes to the validation split (at least 2).
    pub val_every: usize,
    /// JSONL field or Parquet column holding the text.
    pub field: String,
    /// Train tokens per shard, taken into `1..=MAX_SHARD_TOKENS`.
    pub shard_tokens: usize,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            val_every: 20,
            field: DEFAULT_FIELD.into(),
            shard_tokens: DEFAULT_SHARD_TOKENS,
        }
    }
}

/// What `prepare` did, for the report.
#[derive(Debug)]
pub struct PrepareReport {
    pub meta: DataMeta,
    pub seconds: f64,
    /// Shards found done by an earlier, interrupted run (0 for a fresh one).
    pub resumed_shards: usize,
    /// Text bytes tokenized by this run (the earlier run's excluded), for its MB/s.
    pub bytes_this_run: usize,
}

/// An input file as the job saw it; a resumed run must see the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SourceFile {
    path: String,
    bytes: u64,
    /// Modification time, nanoseconds since the epoch (0 where the file system keeps none):
    /// an input edited in place to the same size is a different input.
    #[serde(default)]
    modified_ns: u64,
}

/// `progress.json`: the job (everything that decides the output bytes) and how far it got.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Progress {
    format: u32,
    tokenizer_hash: String,
    val_every: usize,
    field: String,
    shard_tokens: usize,
    sources: Vec<SourceFile>,
    shards: Vec<Shard>,
    /// The input stream resumes at document `next_doc` of file `next_file`.
    next_file: usize,
    next_doc: usize,
    documents: usize,
    train_documents: usize,
    val_documents: usize,
    text_bytes: usize,
}

impl Progress {
    fn same_job(&self, other: &Progress) -> bool {
        self.format == other.format
            && self.tokenizer_hash == other.tokenizer_hash
            && self.val_every == other.val_every
            && self.field == other.field
            && self.shard_tokens == other.shard_tokens
            && self.sources == other.sources
    }
}

/// Consecutive documents of one file: `docs[k]` is its document `first_doc + k`.
struct Batch {
    docs: Vec<String>,
    file: usize,
    first_doc: usize,
    /// The file ends with this batch.
    last: bool,
}

/// Tokenizes `inputs` (files, directories, glob patterns) into `out` (created if missing), or
/// finishes an interrupted run of the same job there. `on_shard` hears each shard once it is
/// safely recorded, and may stop the run there (a later call resumes it).
pub fn prepare(
    tok: &Tokenizer,
    inputs: &[PathBuf],
    out: &Path,
    opts: &PrepareOptions,
    on_shard: &mut dyn FnMut(usize) -> ControlFlow<()>,
) -> Result<Option<PrepareReport>, DataError> {
    let start = Instant::now();
    let files = corpus::expand(inputs)?;
    if out.exists() && !out.is_dir() {
        return Err(DataError::Output(format!(
            "{}: exists and is not a directory (prepared data is a directory of token files)",
            out.display()
        )));
    }
    let mut read = files.clone();
    read.push(tok.path.clone());
    check_output_dir(out, &read).map_err(DataError::Output)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let mut sources = Vec::with_capacity(files.len());
    for f in &files {
        let meta = std::fs::metadata(f).map_err(io(f))?;
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        sources.push(SourceFile {
            path: f.display().to_string(),
            bytes: meta.len(),
            modified_ns,
        });
    }
    let val_every = opts.val_every.max(2);
    let fresh = Progress {
        format: FORMAT,
        tokenizer_hash: tok.hash.clone(),
        val_every,
        field: opts.field.clone(),
        shard_tokens: opts.shard_tokens.clamp(1, MAX_SHARD_TOKENS),
        sources,
        shards: Vec::new(),
        next_file: 0,
        next_doc: 0,
        documents: 0,
        train_documents: 0,
        val_documents: 0,
        text_bytes: 0,
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let progress_path = out.join("progress.json");
    let mut state = match std::fs::read(&progress_path) {
        Ok(bytes) => {
            let earlier: Progress =
                serde_json::from_slice(&bytes).map_err(|e| DataError::Meta {
                    path: progress_path.clone(),
                    msg: format!("{e}; remove the directory to start over"),
                })?;
            if !earlier.same_job(&fresh) {
                return Err(DataError::Output(format!(
                    "{}: an interrupted preparation of other inputs or settings (tokenizer, \
                     --val-every, --field, --shard-tokens, or the input files changed); give the \
                     same ones to finish it, or remove {} to start over",
                    progress_path.display(),
                    out.display()
                )));
            }
            earlier
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // No job to finish, but a finished one: its shards stay whole until a new
            // preparation has succeeded somewhere else, never overwritten in place.
            if out.join("meta.json").exists() {
                return Err(DataError::Output(format!(
                    "{} holds a finished preparation (meta.json); choose another --out, or \
                     remove it first to prepare it again",
                    out.display()
                )));
            }
            fresh
        }
        Err(e) => return Err(io(&progress_path)(e)),
    };
    let resumed_shards = state.shards.len();
    let bytes_before = state.text_bytes;
    // From here the directory's meta.json (from an earlier job) no longer describes its shards:
    // remove it first, so that a crash can leave an unfinished directory but never a wrong one.
    remove_if_present(&out.join("meta.json"))?;

    let vocab = tok.vocab_size();
    let token_bytes = if vocab <= u16::MAX as usize + 1 { 2 } else { 4 };
    let shard_bytes = state.shard_tokens * token_bytes;
    // A shard is built whole in memory: a machine without room for one gets an error naming the
    // flag, not an allocation abort halfway through the corpus.
    let mut train = Vec::new();
    train
        .try_reserve_exact(shard_bytes + BATCH_BYTES * 2)
        .map_err(|e| {
            DataError::Output(format!(
                "--shard-tokens {}: a shard of {} MiB does not fit in memory ({e}); give fewer",
                state.shard_tokens,
                shard_bytes >> 20
            ))
        })?;
    let mut val = Vec::new();
    let bar = indicatif::ProgressBar::new_spinner();
    let (tx, rx) = sync_channel::<Result<Batch, TextError>>(2);
    let (first_file, first_doc) = (state.next_file, state.next_doc);
    let field = state.field.clone();
    let stopped = std::thread::scope(|s| -> Result<bool, DataError> {
        s.spawn(move || read_batches(&files, first_file, first_doc, &field, tx));
        for batch in rx {
            let batch = batch?;
            let encs = tok
                .inner
                .encode_batch_fast(
                    batch.docs.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
                    false,
                )
                .map_err(|e| TokenizerError::Train(e.to_string()))?;
            for (k, (doc, enc)) in batch.docs.iter().zip(&encs).enumerate() {
                let (dst, n) = if state.documents % val_every == val_every - 1 {
                    (&mut val, &mut state.val_documents)
                } else {
                    (&mut train, &mut state.train_documents)
                };
                // A tokenizer with a BOS (Llama-3's) opens each document with it, as its
                // pretraining did; end-of-text closes every document either way.
                if let Some(bos) = tok.bos_id {
                    push_tokens(dst, &[bos], token_bytes);
                }
                push_tokens(dst, enc.get_ids(), token_bytes);
                push_tokens(dst, &[tok.eot_id], token_bytes);
                *n += 1;
                state.documents += 1;
                state.text_bytes += doc.len();
                (state.next_file, state.next_doc) = if batch.last && k + 1 == batch.docs.len() {
                    (batch.file + 1, 0)
                } else {
                    (batch.file, batch.first_doc + k + 1)
                };
                // A shard ends after the document that fills it, whatever the batches were.
                if train.len() >= shard_bytes {
                    write_shard(out, &mut state, &mut train, &mut val, token_bytes)?;
                    if on_shard(state.shards.len()).is_break() {
                        return Ok(true);
                    }
                }
            }
            if batch.last {
                (state.next_file, state.next_doc) = (batch.file + 1, 0);
            }
            let mb = (state.text_bytes - bytes_before) as f64 / 1e6;
            bar.set_message(format!(
                "tokenizing: {mb:.1} MB ({:.2} MB/s), {} shards written",
                mb / start.elapsed().as_secs_f64(),
                state.shards.len()
            ));
        }
        Ok(false)
    })?;
    bar.finish_and_clear();
    if stopped {
        return Ok(None);
    }
    if state.documents == 0 {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        return Err(DataError::Empty(names.join(", ")));
    }
    if !train.is_empty() || !val.is_empty() {
        write_shard(out, &mut state, &mut train, &mut val, token_bytes)?;
        let _ = on_shard(state.shards.len());
    }
    let meta = DataMeta {
        format: FORMAT,
        tokenizer_hash: state.tokenizer_hash.clone(),
        vocab_size: vocab,
        token_bytes,
        eot_id: tok.eot_id,
        train_tokens: state.shards.iter().map(|s| s.train_tokens).sum(),
        val_tokens: state.shards.iter().map(|s| s.val_tokens).sum(),
        train_documents: state.train_documents,
        val_documents: state.val_documents,
        text_bytes: state.text_bytes,
        val_every,
        sources: state.sources.iter().map(|s| s.path.clone()).collect(),
        shards: state.shards.clone(),
    };
    // Shards an earlier, longer run of this job left past its own end. (Nothing else in the
    // directory is touched: `train.bin` there may be another tool's.)
    for split in ["train", "val"] {
        let mut k = state.shards.len();
        while shard_path(out, split, k).exists() {
            remove_if_present(&shard_path(out, split, k))?;
            k += 1;
        }
    }
    let path = out.join("meta.json");
    let json = serde_json::to_string_pretty(&meta).expect("meta serializes");
    write_atomic(&path, json.as_bytes()).map_err(io(&path))?;
    remove_if_present(&progress_path)?;
    Ok(Some(PrepareReport {
        bytes_this_run: meta.text_bytes - bytes_before,
        meta,
        seconds: start.elapsed().as_secs_f64(),
        resumed_shards,
    }))
}

/// The reader thread: documents from `first_doc` of `files[first_file]` on, in batches that
/// never span two files.
fn read_batches(
    files: &[PathBuf],
    first_file: usize,
    first_doc: usize,
    field: &str,
    tx: std::sync::mpsc::SyncSender<Result<Batch, TextError>>,
) {
    for (file, path) in files.iter().enumerate().skip(first_file) {
        let skip = if file == first_file { first_doc } else { 0 };
        let mut batch = Batch {
            docs: Vec::new(),
            file,
            first_doc: skip,
            last: false,
        };
        let (mut bytes, mut index, mut gone) = (0, 0, false);
        let read = for_each_document(path, field, &mut |doc| {
            index += 1;
            if index <= skip {
                return ControlFlow::Continue(());
            }
            bytes += doc.len();
            batch.docs.push(doc);
            if batch.docs.len() >= BATCH_DOCS || bytes >= BATCH_BYTES {
                let next = Batch {
                    docs: Vec::new(),
                    file,
                    first_doc: index,
                    last: false,
                };
                bytes = 0;
                if tx.send(Ok(std::mem::replace(&mut batch, next))).is_err() {
                    gone = true;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
        if gone {
            return;
        }
        if let Err(e) = read {
            let _ = tx.send(Err(e));
            return;
        }
        batch.last = true;
        if tx.send(Ok(batch)).is_err() {
            return;
        }
    }
}

fn push_tokens(dst: &mut Vec<u8>, ids: &[u32], token_bytes: usize) {
    for &id in ids {
        if token_bytes == 2 {
            dst.extend_from_slice(&(id as u16).to_le_bytes());
        } else {
            dst.extend_from_slice(&id.to_le_bytes());
        }
    }
}

/// Shard k's files, then the progress that names them: a crash between the two leaves files the
/// progress does not claim, which the resumed run writes again with the same bytes.
fn write_shard(
    out: &Path,
    state: &mut Progress,
    train: &mut Vec<u8>,
    val: &mut Vec<u8>,
    token_bytes: usize,
) -> Result<(), DataError> {
    let k = state.shards.len();
    for (split, bytes) in [("train", &*train), ("val", &*val)] {
        let path = shard_path(out, split, k);
        write_atomic(&path, bytes).map_err(|source| DataError::Io { path, source })?;
    }
    state.shards.push(Shard {
        train_tokens: train.len() / token_bytes,
        val_tokens: val.len() / token_bytes,
    });
    let path = out.join("progress.json");
    let json = serde_json::to_string_pretty(state).expect("progress serializes");
    write_atomic(&path, json.as_bytes()).map_err(|source| DataError::Io { path, source })?;
    train.clear();
    val.clear();
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), DataError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;
    use crate::text::documents;
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

    fn opts(val_every: usize, shard_tokens: usize) -> PrepareOptions {
        PrepareOptions {
            val_every,
            shard_tokens,
            ..Default::default()
        }
    }

    /// The message of the error `prepare` must stop with.
    fn refusal(tok: &Tokenizer, inputs: &[PathBuf], out: &Path, o: &PrepareOptions) -> String {
        prepare(tok, inputs, out, o, &mut |_| ControlFlow::Continue(()))
            .expect_err("refused")
            .to_string()
    }

    fn run(tok: &Tokenizer, inputs: &[PathBuf], out: &Path, o: &PrepareOptions) -> PrepareReport {
        prepare(tok, inputs, out, o, &mut |_| ControlFlow::Continue(()))
            .unwrap()
            .unwrap()
    }

    fn split(ds: &crate::data::TokenFile) -> Vec<i64> {
        let mut v = Vec::new();
        ds.window(0, ds.len(), &mut v);
        v
    }

    /// Every file of a directory, sorted by name.
    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&p).unwrap())
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn prepare_splits_by_document_and_reads_back() {
        let text: String = (0..40)
            .map(|i| format!("document number {i} says hello.\n\n"))
            .collect();
        let (d, tok, input) = setup(&text);
        let out = d.path().join("prep");
        // Another tool's file in the output directory is left alone (nanoGPT names its own
        // prepared data train.bin).
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("train.bin"), b"not ours").unwrap();
        let r = run(&tok, &[input], &out, &opts(10, DEFAULT_SHARD_TOKENS));
        assert_eq!(std::fs::read(out.join("train.bin")).unwrap(), b"not ours");
        assert_eq!((r.meta.train_documents, r.meta.val_documents), (36, 4));
        assert_eq!((r.meta.token_bytes, r.meta.shards.len()), (2, 1));
        let ds = Dataset::open(&out, Some(&tok)).unwrap();
        // Validation holds documents 9, 19, 29, 39, each followed by end-of-text.
        let ids: Vec<u32> = split(&ds.val).iter().map(|&t| t as u32).collect();
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

        // A tokenizer with a BOS (Llama-3's) opens every document with it.
        let bos = crate::tokenizer::add_bos_for_tests(&tok.path);
        let tok = Tokenizer::load(&tok.path).unwrap();
        let out = d.path().join("prep-bos");
        run(
            &tok,
            &[d.path().join("in.txt")],
            &out,
            &opts(10, DEFAULT_SHARD_TOKENS),
        );
        let ds = Dataset::open(&out, Some(&tok)).unwrap();
        let ids: Vec<u32> = split(&ds.val).iter().map(|&t| t as u32).collect();
        let text = tok.decode(&ids);
        assert_eq!(ids[0], bos);
        assert!(
            text.starts_with("<|begin_of_text|>document number 9 says hello.<|endoftext|><|begin_of_text|>document number 19"),
            "{text}"
        );

        // Data prepared before documents began with the BOS (the same meta.json, no BOS first)
        // is refused, naming the split, rather than trained on.
        let b = ds.meta.token_bytes;
        drop(ds); // its maps of the shard
        let shard = crate::data::shard_path(&out, "train", 0);
        let mut bytes = std::fs::read(&shard).unwrap();
        bytes[..b].copy_from_slice(&1u32.to_le_bytes()[..b]);
        std::fs::write(&shard, &bytes).unwrap();
        let err = Dataset::open(&out, Some(&tok)).err().unwrap().to_string();
        assert!(
            err.contains("train split starts with token 1")
                && err.contains(&format!("BOS ({bos})")),
            "{err}"
        );
    }

    /// Text, zstd JSONL and Parquet inputs in one corpus; small shards give the token streams of
    /// each document encoded on its own, in order, split by index — and the same streams as one
    /// shard.
    #[test]
    fn shards_hold_each_document_in_order_whatever_their_size() {
        let text: String = (0..30)
            .map(|i| format!("plain text doc {i}.\n\n"))
            .collect();
        let (d, tok, input) = setup(&text);
        let jsonl: String = (0..25)
            .map(|i| format!("{{\"text\": \"json doc {i} with more words\"}}\n"))
            .collect();
        let zst = d.path().join("b.jsonl.zst");
        std::fs::write(&zst, zstd::encode_all(jsonl.as_bytes(), 3).unwrap()).unwrap();
        let pq = d.path().join("c.parquet");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/docs.parquet"),
            &pq,
        )
        .unwrap();
        let inputs = vec![input.clone(), zst.clone(), pq.clone()];
        let mut o = opts(4, 40);
        o.field = "text".into();
        // The Parquet fixture keeps its text in "content": a clear error, then a corpus without it.
        let e = refusal(&tok, &inputs, &d.path().join("x"), &o);
        assert!(e.contains("c.parquet") && e.contains("content"), "{e}");
        let inputs = vec![input.clone(), zst.clone()];

        let mut docs = documents(&input).unwrap();
        docs.extend(documents(&zst).unwrap());
        let (mut want_train, mut want_val) = (Vec::new(), Vec::new());
        for (i, doc) in docs.iter().enumerate() {
            let dst = if i % 4 == 3 {
                &mut want_val
            } else {
                &mut want_train
            };
            dst.extend(tok.encode(doc).unwrap().iter().map(|&t| t as i64));
            dst.push(tok.eot_id as i64);
        }

        let small = d.path().join("small");
        let r = run(&tok, &inputs, &small, &o);
        assert!(r.meta.shards.len() > 3, "{:?}", r.meta.shards);
        let ds = Dataset::open(&small, Some(&tok)).unwrap();
        assert_eq!(split(&ds.train), want_train);
        assert_eq!(split(&ds.val), want_val);
        let one = d.path().join("one");
        run(&tok, &inputs, &one, &opts(4, 1 << 20));
        let ds1 = Dataset::open(&one, Some(&tok)).unwrap();
        assert_eq!(split(&ds1.train), want_train);
        assert_eq!(split(&ds1.val), want_val);
        assert!(!small.join("progress.json").exists());
    }

    /// An interrupted run, with the debris a crash can leave (a shard written but not recorded, a
    /// temporary file), finishes with the bytes of a straight run; other settings are refused.
    #[test]
    fn an_interrupted_run_resumes_to_the_same_bytes() {
        let text: String = (0..200)
            .map(|i| format!("paragraph {i} of the corpus, long enough to tokenize.\n\n"))
            .collect();
        let (d, tok, input) = setup(&text);
        let o = opts(5, 300);
        let straight = d.path().join("straight");
        let r = run(&tok, std::slice::from_ref(&input), &straight, &o);
        let n = r.meta.shards.len();
        assert!(n >= 4, "{n} shards");

        let resumed = d.path().join("resumed");
        let stopped = prepare(&tok, std::slice::from_ref(&input), &resumed, &o, &mut |k| {
            if k == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert!(stopped.is_none());
        assert!(!resumed.join("meta.json").exists());
        std::fs::write(crate::data::shard_path(&resumed, "train", 2), b"half a sh").unwrap();
        std::fs::write(resumed.join("train-00003.bin.tmp"), b"junk").unwrap();

        let mut other = o.clone();
        other.val_every = 6;
        let e = refusal(&tok, std::slice::from_ref(&input), &resumed, &other);
        assert!(
            e.contains("progress.json") && e.contains("--val-every"),
            "{e}"
        );

        // The input edited in place to the same size is another input, not this job's rest.
        let original = std::fs::read(&input).unwrap();
        let was = std::fs::metadata(&input).unwrap().modified().unwrap();
        let set_modified = |t: std::time::SystemTime| {
            let f = std::fs::File::options().write(true).open(&input).unwrap();
            f.set_modified(t).unwrap();
        };
        let mut edited = original.clone();
        edited[0] = b'P';
        std::fs::write(&input, &edited).unwrap();
        set_modified(was + std::time::Duration::from_secs(5));
        let e = refusal(&tok, std::slice::from_ref(&input), &resumed, &o);
        assert!(e.contains("input files changed"), "{e}");
        std::fs::write(&input, &original).unwrap();
        set_modified(was);

        let r2 = run(&tok, std::slice::from_ref(&input), &resumed, &o);
        assert_eq!(r2.resumed_shards, 2);
        assert!(r2.bytes_this_run < r.meta.text_bytes);
        std::fs::remove_file(resumed.join("train-00003.bin.tmp")).unwrap();
        assert_eq!(files(&resumed), files(&straight));

        // Preparing into a finished directory again, with inputs that would fail midway (here
        // none at all to train on), is refused before anything there is touched.
        let empty = d.path().join("empty.txt");
        std::fs::write(&empty, "\n\n").unwrap();
        let before = files(&straight);
        let e = refusal(&tok, &[empty], &straight, &o);
        assert!(e.contains("finished preparation"), "{e}");
        assert_eq!(files(&straight), before);
        Dataset::open(&straight, Some(&tok)).unwrap();
    }

    /// A doctored meta.json (sizes that overflow when summed or multiplied, a vocabulary of
    /// nothing) is an error naming the file, not a panic or a read past a shard's end.
    #[test]
    fn a_doctored_meta_json_is_an_error() {
        let text: String = (0..40).map(|i| format!("doc {i} here.\n\n")).collect();
        let (d, tok, input) = setup(&text);
        let out = d.path().join("prep");
        run(&tok, &[input], &out, &opts(10, 1 << 20));
        let meta_path = out.join("meta.json");
        let good: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
        let doctor = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut m = good.clone();
            edit(&mut m);
            std::fs::write(&meta_path, m.to_string()).unwrap();
            match Dataset::open(&out, None) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("opened a doctored meta.json"),
            }
        };
        let e = doctor(&|m| m["vocab_size"] = 0.into());
        assert!(e.contains("meta.json") && e.contains("vocab_size 0"), "{e}");
        // 2^63 + n tokens of 2 bytes: the product wraps to the file's real length.
        let n = good["shards"][0]["train_tokens"].as_u64().unwrap();
        let e = doctor(&|m| {
            m["shards"][0]["train_tokens"] = ((1u64 << 63) + n).into();
            m["train_tokens"] = ((1u64 << 63) + n).into();
        });
        assert!(e.contains("prepare the data again"), "{e}");
        // A sum past 2^64 that wraps to the stated total.
        let e = doctor(&|m| {
            let shard = m["shards"][0].clone();
            let mut big = shard.clone();
            big["train_tokens"] = u64::MAX.into();
            big["val_tokens"] = 0.into();
            m["shards"] = serde_json::json!([shard, big]);
            m["train_tokens"] = (n - 1).into();
        });
        assert!(e.contains("prepare the data again"), "{e}");
        std::fs::write(&meta_path, good.to_string()).unwrap();
        Dataset::open(&out, Some(&tok)).unwrap();
    }

    #[test]
    fn bad_data_is_refused_with_the_fix() {
        let (d, tok, input) = setup("alpha beta gamma.\n\ndelta epsilon.\n");
        let empty = d.path().join("empty.txt");
        std::fs::write(&empty, "\n\n  \n").unwrap();
        let e = refusal(&tok, &[empty], &d.path().join("x"), &opts(10, 100));
        assert!(
            e.contains("empty.txt") && e.contains("nothing to train on"),
            "{e}"
        );

        let out = d.path().join("prep");
        run(&tok, std::slice::from_ref(&input), &out, &opts(2, 100));
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

        // A truncated shard is caught before training reads past its end.
        let bin = out.join("train-00000.bin");
        let len = std::fs::metadata(&bin).unwrap().len();
        std::fs::write(&bin, vec![0u8; len as usize - 2]).unwrap();
        let e = Dataset::open(&out, None).err().unwrap().to_string();
        assert!(
            e.contains("train-00000.bin") && e.contains("meta.json says"),
            "{e}"
        );
    }
}
