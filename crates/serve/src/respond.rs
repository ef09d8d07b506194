//! The engine thread's events become OpenAI responses: one JSON body, or server-sent events
//! (chunks, a final chunk with `finish_reason` and `usage`, then `data: [DONE]`). Timing metrics
//! (time to first token, token gaps, request duration) are taken here, where the client sees them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant as Deadline;
use tritium_engine::tokenizer::{StreamDecoder, Tokenizer};

use crate::api::{ApiError, Request};
use crate::scheduler::{Event, Finish, TokenLogprob};
use crate::{App, Endpoint};

/// What every response of one request carries.
pub struct Meta {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub endpoint: Endpoint,
    pub start: Instant,
    pub request: u64,
}

/// One prompt's result, gathered.
#[derive(Default)]
struct Outcome {
    prompt_lp: Option<Vec<Option<TokenLogprob>>>,
    text: String,
    /// Generated tokens with their log-probabilities (when asked).
    tokens: Vec<(u32, Option<TokenLogprob>)>,
    finish: Option<Finish>,
    prompt_tokens: usize,
    completion_tokens: usize,
}

/// Tracks the request's timing for the metrics. Of a request with several prompts only the
/// first is timed: the others' tokens are read after it ends, not when they were made.
struct Clock {
    last: Option<Instant>,
    muted: bool,
}

impl Clock {
    fn new(muted: bool) -> Clock {
        Clock { last: None, muted }
    }

    fn token(&mut self, app: &App, meta: &Meta) {
        if self.muted {
            return;
        }
        let now = Instant::now();
        match self.last {
            None => app
                .metrics
                .time_to_first_token
                .observe((now - meta.start).as_secs_f64()),
            Some(t) => app.metrics.token_latency.observe((now - t).as_secs_f64()),
        }
        self.last = Some(now);
    }
}

fn done(app: &App, meta: &Meta, finish: Finish, prompt: usize, completion: usize, cached: usize) {
    let m = &app.metrics;
    m.prompt_tokens.inc_by(prompt as u64);
    m.cached_tokens.inc_by(cached as u64);
    m.generated_tokens.inc_by(completion as u64);
    let secs = meta.start.elapsed().as_secs_f64();
    eprintln!(
        "request {} {}: {} prompt tokens ({} cached), {} generated, {:.3} s, finish {}",
        meta.request,
        meta.model,
        prompt,
        cached,
        completion,
        secs,
        finish.as_str()
    );
}

pub(crate) fn timeout(app: &App) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout_error",
        format!(
            "the request ran past the server's timeout of {} s (--timeout)",
            app.opts.timeout.as_secs_f64()
        ),
    )
    .code("timeout")
}

fn engine_error(msg: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", msg)
}

async fn next(
    app: &App,
    rx: &mut UnboundedReceiver<Event>,
    deadline: Deadline,
) -> Result<Event, ApiError> {
    match tokio::time::timeout_at(deadline, rx.recv()).await {
        Err(_) => Err(timeout(app)),
        Ok(None) => Err(engine_error("the engine stopped".into())),
        Ok(Some(Event::Error(msg))) => Err(engine_error(msg)),
        Ok(Some(e)) => Ok(e),
    }
}

async fn collect(
    app: &App,
    meta: &Meta,
    mut rx: UnboundedReceiver<Event>,
    deadline: Deadline,
    clock: &mut Clock,
) -> Result<Outcome, ApiError> {
    let mut o = Outcome::default();
    loop {
        match next(app, &mut rx, deadline).await? {
            Event::Prompt(lp) => o.prompt_lp = Some(lp),
            Event::Token { id, text, logprob } => {
                o.text.push_str(&text);
                if id != u32::MAX {
                    clock.token(app, meta);
                    o.tokens.push((id, logprob));
                }
            }
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            } => {
                done(
                    app,
                    meta,
                    finish,
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens,
                );
                o.finish = Some(finish);
                o.prompt_tokens = prompt_tokens;
                o.completion_tokens = completion_tokens;
                return Ok(o);
            }
            Event::Error(_) => unreachable!("next() turns errors into Err"),
        }
    }
}

/// Where each token's text starts in the whole text, in characters (as OpenAI's `text_offset`
/// counts, Python string indices): the characters shown before it, so a token that ends a
/// character an earlier one began starts where that character does.
pub(crate) struct Offsets {
    stream: StreamDecoder,
    shown: usize,
}

impl Offsets {
    pub(crate) fn new(start: usize) -> Offsets {
        Offsets {
            stream: StreamDecoder::default(),
            shown: start,
        }
    }

    /// Token `id`'s offset; it then follows the text.
    pub(crate) fn next(&mut self, tok: &Tokenizer, id: u32) -> usize {
        let at = self.shown;
        self.shown += self.stream.push(tok, id).chars().count();
        at
    }
}

/// The legacy completions `logprobs` object over `items` (token, its log-probability if known),
/// each token's `text_offset` from `offsets`.
fn completion_logprobs(
    tok: &Tokenizer,
    items: &[(u32, Option<&TokenLogprob>)],
    at: &mut Offsets,
) -> Value {
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for (id, lp) in items {
        let piece = tok.decode(&[*id]);
        offsets.push(at.next(tok, *id));
        tokens.push(piece);
        lps.push(lp.map(|l| json!(l.logprob)).unwrap_or(Value::Null));
        tops.push(
            lp.map(|l| {
                let m: serde_json::Map<String, Value> = l
                    .top
                    .iter()
                    .map(|&(t, v)| (tok.decode(&[t]), json!(v)))
                    .collect();
                Value::Object(m)
            })
            .unwrap_or(Value::Null),
        );
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// The chat `logprobs` object over generated tokens.
fn chat_logprobs(tok: &Tokenizer, items: &[&TokenLogprob]) -> Value {
    let entry = |id: u32, lp: f64| {
        let t = tok.decode(&[id]);
        json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
    };
    let content: Vec<Value> = items
        .iter()
        .map(|l| {
            let mut e = entry(l.id, l.logprob);
            e["top_logprobs"] = l.top.iter().map(|&(t, v)| entry(t, v)).collect();
            e
        })
        .collect();
    json!({ "content": content })
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// A whole (non-streamed) response for every prompt of `req`.
pub async fn whole(
    app: &App,
    meta: &Meta,
    req: &Request,
    receivers: Vec<UnboundedReceiver<Event>>,
    deadline: Deadline,
) -> Result<Value, ApiError> {
    let tok = &app.engine.get().expect("ready").model.tokenizer;
    let mut outcomes = Vec::new();
    // Prompts run side by side in the engine; their results are read in order.
    for rx in receivers {
        let mut clock = Clock::new(!outcomes.is_empty());
        outcomes.push(collect(app, meta, rx, deadline, &mut clock).await?);
    }
    app.metrics
        .request_seconds
        .observe(meta.start.elapsed().as_secs_f64());
    let (prompt_total, completion_total) = outcomes.iter().fold((0, 0), |(p, c), o| {
        (p + o.prompt_tokens, c + o.completion_tokens)
    });
    let mut choices = Vec::new();
    for (i, (o, w)) in outcomes.iter().zip(&req.works).enumerate() {
        let finish = o.finish.map(Finish::as_str);
        match meta.endpoint {
            Endpoint::Completions => {
                let echo = if req.echo {
                    req.prompt_text(i, tok)
                } else {
                    String::new()
                };
                let logprobs = w.top_logprobs.map(|_| {
                    let mut items: Vec<(u32, Option<&TokenLogprob>)> = Vec::new();
                    if let Some(p) = &o.prompt_lp {
                        items.extend(w.prompt.iter().zip(p).map(|(&id, l)| (id, l.as_ref())));
                    }
                    items.extend(o.tokens.iter().map(|(id, l)| (*id, l.as_ref())));
                    completion_logprobs(tok, &items, &mut Offsets::new(0))
                });
                choices.push(json!({
                    "index": i,
                    "text": echo + &o.text,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }));
            }
            Endpoint::Chat => {
                let logprobs = w.top_logprobs.map(|_| {
                    let items: Vec<&TokenLogprob> =
                        o.tokens.iter().filter_map(|(_, l)| l.as_ref()).collect();
                    chat_logprobs(tok, &items)
                });
                choices.push(json!({
                    "index": i,
                    "message": {"role": "assistant", "content": o.text},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }));
            }
        }
    }
    Ok(json!({
        "id": meta.id,
        "object": if meta.endpoint == Endpoint::Chat { "chat.completion" } else { "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage(prompt_total, completion_total),
    }))
}

struct Streaming {
    app: Arc<App>,
    meta: Meta,
    req: Request,
    rx: UnboundedReceiver<Event>,
    deadline: Deadline,
    clock: Clock,
    /// Events ready to send.
    ready: VecDeque<Sse>,
    started: bool,
    over: bool,
    /// Where the next token's text starts, for completion text offsets.
    offsets: Offsets,
}

impl Streaming {
    fn chunk(&self, choice: Value, usage: Option<Value>) -> Sse {
        let object = match self.meta.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        };
        let mut v = json!({
            "id": self.meta.id,
            "object": object,
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": [choice],
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        Sse::default().data(v.to_string())
    }

    /// A chunk carrying `text` (and its logprobs), with no finish reason yet.
    fn text_chunk(&mut self, text: &str, logprobs: Value) -> Sse {
        let choice = match self.meta.endpoint {
            Endpoint::Chat => json!({
                "index": 0, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": null,
            }),
            Endpoint::Completions => json!({
                "index": 0, "text": text, "logprobs": logprobs, "finish_reason": null,
            }),
        };
        self.chunk(choice, None)
    }

    /// Turns the next engine event into chunks.
    async fn advance(&mut self) {
        let app = self.app.clone();
        let tok = &app.engine.get().expect("ready").model.tokenizer;
        if !self.started {
            self.started = true;
            if self.meta.endpoint == Endpoint::Chat {
                let c = self.chunk(
                    json!({"index": 0, "delta": {"role": "assistant", "content": ""},
                           "logprobs": null, "finish_reason": null}),
                    None,
                );
                self.ready.push_back(c);
            } else if self.req.echo && !self.req.works[0].prompt_logprobs {
                let text = self.req.prompt_text(0, tok);
                self.offsets = Offsets::new(text.chars().count());
                let c = self.text_chunk(&text, Value::Null);
                self.ready.push_back(c);
            }
            return;
        }
        let ev = next(&self.app, &mut self.rx, self.deadline).await;
        match ev {
            Err(e) => {
                self.app
                    .metrics
                    .error(if e.status == StatusCode::GATEWAY_TIMEOUT {
                        "timeout"
                    } else {
                        "server"
                    });
                self.ready
                    .push_back(Sse::default().data(e.body().to_string()));
                self.over = true;
            }
            Ok(Event::Prompt(lp)) => {
                let items: Vec<(u32, Option<&TokenLogprob>)> = self.req.works[0]
                    .prompt
                    .iter()
                    .zip(&lp)
                    .map(|(&id, l)| (id, l.as_ref()))
                    .collect();
                let logprobs = completion_logprobs(tok, &items, &mut self.offsets);
                let text = self.req.prompt_text(0, tok);
                let c = self.text_chunk(&text, logprobs);
                self.ready.push_back(c);
            }
            Ok(Event::Token { id, text, logprob }) => {
                if id != u32::MAX {
                    self.clock.token(&self.app, &self.meta);
                }
                let logprobs = match (self.meta.endpoint, &logprob) {
                    (_, None) => Value::Null,
                    (Endpoint::Chat, Some(l)) => chat_logprobs(tok, &[l]),
                    (Endpoint::Completions, Some(l)) => {
                        completion_logprobs(tok, &[(id, Some(l))], &mut self.offsets)
                    }
                };
                if !text.is_empty() || !logprobs.is_null() {
                    let c = self.text_chunk(&text, logprobs);
                    self.ready.push_back(c);
                }
            }
            Ok(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            }) => {
                done(
                    &self.app,
                    &self.meta,
                    finish,
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens,
                );
                self.app
                    .metrics
                    .request_seconds
                    .observe(self.meta.start.elapsed().as_secs_f64());
                let choice = match self.meta.endpoint {
                    Endpoint::Chat => json!({
                        "index": 0, "delta": {}, "logprobs": null, "finish_reason": finish.as_str(),
                    }),
                    Endpoint::Completions => json!({
                        "index": 0, "text": "", "logprobs": null, "finish_reason": finish.as_str(),
                    }),
                };
                let c = self.chunk(choice, Some(usage(prompt_tokens, completion_tokens)));
                self.ready.push_back(c);
                self.ready.push_back(Sse::default().data("[DONE]"));
                self.over = true;
            }
            Ok(Event::Error(_)) => unreachable!("next() turns errors into Err"),
        }
    }
}

/// A server-sent-events response. Dropping it (the client went away) drops the receiver, which
/// frees the job's slot at the engine's next step.
pub fn stream(
    app: Arc<App>,
    meta: Meta,
    req: Request,
    rx: UnboundedReceiver<Event>,
    deadline: Deadline,
) -> Response {
    let state = Streaming {
        app,
        meta,
        req,
        rx,
        deadline,
        clock: Clock::new(false),
        ready: VecDeque::new(),
        started: false,
        over: false,
        offsets: Offsets::new(0),
    };
    let events = stream::unfold(state, |mut s| async move {
        loop {
            if let Some(e) = s.ready.pop_front() {
                return Some((Ok::<_, Infallible>(e), s));
            }
            if s.over {
                return None;
            }
            s.advance().await;
        }
    });
    axum::response::sse::Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::Offsets;

    /// Offsets count characters of the whole text; the bytes of one character share its start.
    #[test]
    fn text_offsets_are_character_positions_in_the_whole_text() {
        let bytes = tritium_engine::synthetic::gguf(&Default::default());
        let rt = tritium_engine::Runtime::new(1);
        let m =
            tritium_engine::Model::from_bytes(std::path::Path::new("t.gguf"), bytes, &rt).unwrap();
        let tok = &m.tokenizer;
        let ids = tok.encode("xé!").unwrap(); // byte-level: x, é's two bytes, !
        assert_eq!(ids.len(), 4);
        let mut at = Offsets::new(5);
        let offs: Vec<usize> = ids.iter().map(|&i| at.next(tok, i)).collect();
        assert_eq!(offs, vec![5, 6, 6, 7]);
    }
}
