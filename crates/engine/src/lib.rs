//! tritium's inference engine: runs `bitnet` GGUF files (TQ2_0, TQ1_0 or I2_S ternary weights)
//! with packed ternary × int8 kernels, computing exactly what the trained model computed. No Burn.
//!
//! Data flow: [`model::Model::load`] (mmap, validate, pack, on a [`Runtime`]: threads and ISA) →
//! [`forward::Session`] (KV cache, forward pass) → [`sample::Sampler`] → [`generate`] (the token
//! loop with stop conditions).

pub mod chat;
pub mod forward;
pub mod kv;
/// The kernels live in their own crate so the fused training op uses the same ones.
pub use tritium_kernels as kernels;
pub mod lora;
pub mod matrix;
pub mod model;
pub mod quant;
pub mod runtime;
pub mod sample;
pub mod synthetic;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use chat::Chat;
pub use forward::{Logits, Session};
pub use kv::KvType;
pub use lora::Lora;
pub use model::{Model, map_file};
pub use runtime::Runtime;
pub use sample::{Sampler, SamplerConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is part of the message, not a `source()`, so error chains print it once.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: {err}")]
    Gguf {
        path: PathBuf,
        err: tritium_gguf::Error,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("{0}")]
    Context(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            err: source,
        }
    }

    pub fn gguf(path: &Path, err: tritium_gguf::Error) -> Error {
        Error::Gguf {
            path: path.to_path_buf(),
            err,
        }
    }

    /// Turns a message about `path`'s content into an error naming the file.
    pub fn invalid(path: &Path) -> impl Fn(String) -> Error + Copy + '_ {
        move |msg| Error::Invalid {
            path: path.to_path_buf(),
            msg,
        }
    }
}

/// What ended a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Eos,
    StopString,
    Length,
    Context,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    pub text: String,
    pub stop: Stop,
    /// Seconds for the prompt (through the first token's logits) and for the rest.
    pub prompt_seconds: f64,
    pub gen_seconds: f64,
}

/// Generates up to `n` tokens after `prompt` (token ids), streaming text pieces to `on_text`.
/// Stops at the end-of-sequence token, at any of `stops` (the stop string is cut from the text), at
/// `n` tokens or when the context is full.
pub fn generate(
    sess: &mut Session,
    sampler: &mut Sampler,
    prompt: &[u32],
    n: usize,
    stops: &[String],
    on_text: impl FnMut(&str),
) -> Result<Generation, Error> {
    generate_after(sess, sampler, &[], prompt, n, stops, on_text)
}

/// [`generate`] in a session that already ran `earlier` (a conversation's reused turns): the
/// repetition penalty looks back over them too, as llama.cpp's does over everything the
/// context has seen.
pub fn generate_after(
    sess: &mut Session,
    sampler: &mut Sampler,
    earlier: &[u32],
    prompt: &[u32],
    n: usize,
    stops: &[String],
    mut on_text: impl FnMut(&str),
) -> Result<Generation, Error> {
    let tok = &sess.model.tokenizer;
    if prompt.is_empty() {
        return Err(Error::Context("the prompt is empty".into()));
    }
    if sess.pos + prompt.len() > sess.ctx {
        return Err(Error::Context(format!(
            "the prompt has {} tokens but the context holds {} (raise --ctx up to the model's {})",
            prompt.len(),
            sess.ctx - sess.pos,
            sess.model.cfg.ctx
        )));
    }
    let start = Instant::now();
    let mut history: Vec<u32> = [earlier, prompt].concat();
    let mut logits = sess.forward(prompt, Logits::Last)?.to_vec();
    let prompt_seconds = start.elapsed().as_secs_f64();
    let gen_start = Instant::now();
    let mut out = Vec::new();
    let mut text = String::new();
    let mut shown = TextStream::new(stops);
    let mut stop = Stop::Length;
    while out.len() < n {
        let next = sampler.sample(&logits, &history);
        if tok.is_end(next) {
            stop = Stop::Eos;
            break;
        }
        out.push(next);
        history.push(next);
        let (piece, stopped) = shown.push(tok, next);
        if !piece.is_empty() {
            on_text(&piece);
            text.push_str(&piece);
        }
        if stopped {
            stop = Stop::StopString;
            break;
        }
        if out.len() == n {
            break;
        }
        if sess.pos >= sess.ctx {
            stop = Stop::Context;
            break;
        }
        logits.copy_from_slice(sess.forward(&[next], Logits::Last)?);
    }
    let rest = shown.finish(tok);
    if !rest.is_empty() {
        on_text(&rest);
        text.push_str(&rest);
    }
    Ok(Generation {
        prompt_tokens: prompt.len(),
        tokens: out,
        text,
        stop,
        prompt_seconds,
        gen_seconds: gen_start.elapsed().as_secs_f64(),
    })
}

/// Sampled tokens become text as soon as it is final: text that may begin a stop string is held
/// back, and the first stop string found ends the text (and is cut from it).
pub struct TextStream {
    stream: tokenizer::StreamDecoder,
    held: String,
    stops: Vec<String>,
    stopped: bool,
}

impl TextStream {
    pub fn new(stops: &[String]) -> TextStream {
        TextStream {
            stream: tokenizer::StreamDecoder::default(),
            held: String::new(),
            stops: stops.to_vec(),
            stopped: false,
        }
    }

    /// Adds token `id`; returns the text now safe to show and whether a stop string ended it.
    pub fn push(&mut self, tok: &tokenizer::Tokenizer, id: u32) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.held.push_str(&self.stream.push(tok, id));
        let held = &mut self.held;
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| held.find(s.as_str()))
            .min()
        {
            held.truncate(at);
            self.stopped = true;
            return (std::mem::take(held), true);
        }
        // Show everything that cannot be the start of a stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_prefix_suffix(held, s))
            .max()
            .unwrap_or(0);
        let show = held.len() - keep;
        (held.drain(..show).collect(), false)
    }

    /// The text still held back, once no more tokens come (nothing after a stop string), with
    /// an unfinished last character as the replacement character rather than dropped.
    pub fn finish(&mut self, tok: &tokenizer::Tokenizer) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(&self.stream.finish(tok));
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.held.truncate(at);
            self.stopped = true;
        }
        std::mem::take(&mut self.held)
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `stop` (on char bounds).
fn longest_prefix_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&k| {
            stop.is_char_boundary(k)
                && text.is_char_boundary(text.len() - k)
                && text.ends_with(&stop[..k])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{TextStream, generate, generate_after, longest_prefix_suffix};
    use crate::{Logits, Sampler, SamplerConfig, Session};

    /// A generation that ends inside a character shows it as U+FFFD rather than losing it.
    #[test]
    fn an_unfinished_character_is_shown_at_the_end() {
        let bytes = crate::synthetic::gguf(&crate::synthetic::Spec::default());
        let m = crate::Model::from_bytes(
            std::path::Path::new("t.gguf"),
            bytes,
            &crate::Runtime::new(1),
        )
        .unwrap();
        let tok = &m.tokenizer;
        let ids = tok.encode("xé").unwrap(); // byte-level: x, then é's two bytes
        assert_eq!(ids.len(), 3);
        let mut s = TextStream::new(&[]);
        assert_eq!(s.push(tok, ids[0]), ("x".into(), false));
        assert_eq!(s.push(tok, ids[1]), (String::new(), false));
        assert_eq!(s.finish(tok), "\u{FFFD}");
        let mut s = TextStream::new(&["é".into()]);
        let shown: String = ids.iter().map(|&i| s.push(tok, i).0).collect();
        assert_eq!(shown + &s.finish(tok), "x");
    }

    /// A continued conversation penalizes repeats of its earlier turns: generating after them
    /// in a session that already ran them gives what one generation over the whole text gives.
    #[test]
    fn the_repetition_penalty_sees_the_earlier_turns() {
        let spec = crate::synthetic::Spec {
            ctx: 64,
            ..Default::default()
        };
        let bytes = crate::synthetic::gguf(&spec);
        let m = crate::Model::from_bytes(
            std::path::Path::new("t.gguf"),
            bytes,
            &crate::Runtime::new(1),
        )
        .unwrap();
        let config = SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 1e3,
            ..Default::default()
        };
        let prompt = m.tokenizer.encode("ab").unwrap();
        let mut differs = 0;
        // Each round's earlier turns are the last round's with its reply (a conversation).
        let mut earlier = m.tokenizer.encode("xyz").unwrap();
        for round in 0..4 {
            let whole = [&earlier[..], &prompt].concat();
            let mut s = Session::new(&m, 64).unwrap();
            let mut sampler = Sampler::new(config.clone());
            let want = generate(&mut s, &mut sampler, &whole, 8, &[], |_| {})
                .unwrap()
                .tokens;
            let mut s = Session::new(&m, 64).unwrap();
            let after = |earlier: &[u32], s: &mut Session| {
                s.pos = 0;
                s.forward(&whole[..whole.len() - prompt.len()], Logits::Last)
                    .unwrap();
                let mut sampler = Sampler::new(config.clone());
                generate_after(s, &mut sampler, earlier, &prompt, 8, &[], |_| {})
                    .unwrap()
                    .tokens
            };
            assert_eq!(after(&earlier, &mut s), want, "round {round}");
            let alone = after(&[], &mut s);
            differs += usize::from(alone != want);
            earlier = [&whole[..], &want].concat();
        }
        // The window matters here: looking at the new turn alone chose otherwise.
        assert!(differs > 0);
    }

    #[test]
    fn held_back_text_is_a_possible_stop_prefix() {
        assert_eq!(longest_prefix_suffix("hello ###", "### End"), 3);
        assert_eq!(longest_prefix_suffix("hello #", "### End"), 1);
        assert_eq!(longest_prefix_suffix("hello", "### End"), 0);
        assert_eq!(
            longest_prefix_suffix("ab", "b"),
            0,
            "a whole stop string is found, not held"
        );
    }
}
