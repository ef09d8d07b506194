//! The OpenAI request bodies the server takes and their validation: a JSON body becomes one
//! [`Work`] per prompt (token ids, sampling, limits checked) or an [`ApiError`] in OpenAI's shape
//! that names the field at fault. Pure functions of the body and the model's [`Context`], so the
//! fuzzer drives them without a server.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tritium_engine::tokenizer::Tokenizer;
use tritium_engine::{Chat, SamplerConfig};
use tritium_gguf::names::END_OF_TURN;

/// An error as OpenAI's API returns it: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<String>,
    /// Seconds, for `Retry-After` (overload and rate limits).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            code: None,
            param: None,
            retry_after: None,
        }
    }

    /// A 400 about request field `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            message.into(),
        );
        e.param = Some(param.to_string());
        e
    }

    pub fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn retry(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
    }
}

/// What validation needs to know of the server and its model.
pub struct Context<'a> {
    pub tokenizer: &'a Tokenizer,
    pub vocab: usize,
    /// The names a request's `"model"` may give: the base first, then the adapters.
    pub models: &'a [String],
    /// Positions a slot's cache holds.
    pub ctx: usize,
    pub max_input: usize,
    pub max_output: usize,
    pub chat_template: Option<&'a str>,
}

/// One prompt's work, validated: what the scheduler runs.
#[derive(Debug, Clone)]
pub struct Work {
    pub prompt: Vec<u32>,
    pub sampling: SamplerConfig,
    pub max_tokens: usize,
    pub stops: Vec<String>,
    /// Index into [`Context::models`] minus one: `None` is the base model.
    pub lora: Option<usize>,
    /// Log-probabilities of the prompt's own tokens (`echo` with `logprobs`).
    pub prompt_logprobs: bool,
    /// How many alternatives to report beside each generated token's log-probability.
    pub top_logprobs: Option<usize>,
    pub ignore_eos: bool,
}

/// A validated request: its prompts' work and how to answer.
#[derive(Debug, Clone)]
pub struct Request {
    pub model: String,
    pub works: Vec<Work>,
    pub stream: bool,
    pub echo: bool,
    /// The prompts' text, for `echo` (None where the prompt came as token ids).
    pub prompt_texts: Vec<Option<String>>,
}

impl Request {
    /// Prompt `i`'s text, for `echo`: as sent, or decoded from the ids sent.
    pub fn prompt_text(&self, i: usize, tok: &Tokenizer) -> String {
        self.prompt_texts[i]
            .clone()
            .unwrap_or_else(|| tok.decode(&self.works[i].prompt))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The fields both endpoints share, parsed from the same body as the endpoint's own (not
/// `#[serde(flatten)]`: through it, errors lose the field's name).
#[derive(Deserialize, Default)]
struct Common {
    model: Option<String>,
    lora: Option<String>,
    #[serde(default)]
    stream: bool,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    #[serde(alias = "repetition_penalty")]
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<usize>,
    seed: Option<u64>,
    stop: Option<Stop>,
    #[serde(alias = "max_completion_tokens", alias = "n_predict")]
    max_tokens: Option<usize>,
    n: Option<u64>,
    best_of: Option<u64>,
    /// Generate through the end-of-sequence token (llama-server's and vLLM's extension; load
    /// generators use it so every request runs to `max_tokens`).
    #[serde(default)]
    ignore_eos: bool,
}

#[derive(Deserialize)]
struct CompletionBody {
    prompt: Prompt,
    #[serde(default)]
    echo: bool,
    logprobs: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
}

#[derive(Deserialize)]
struct ChatBody {
    messages: Vec<Message>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<usize>,
}

/// At most this many alternatives per token, as OpenAI's API allows.
const MAX_TOP_LOGPROBS: usize = 20;
/// At most this many prompts in one completion request.
const MAX_PROMPTS: usize = 64;
/// `max_tokens` of a completion that does not say (OpenAI's default).
const DEFAULT_COMPLETION_TOKENS: usize = 16;

/// Parses `body` as JSON of type `T`, naming the field at fault.
fn parse<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = if inner.is_syntax() || inner.is_eof() {
            format!("the body is not valid JSON: {inner}")
        } else if path == "." {
            format!("the body does not match the request: {inner}")
        } else {
            format!("field `{path}`: {inner}")
        };
        ApiError::invalid(if path == "." { "body" } else { &path }, msg)
    })
}

impl Common {
    /// The model or adapter named by `"model"` (or `"lora"`), as an adapter index.
    fn lora(&self, cx: &Context) -> Result<(String, Option<usize>), ApiError> {
        let pick = |field: &str, name: &str| match cx.models.iter().position(|m| m == name) {
            Some(i) => Ok(i),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "{field} `{name}`: no such model; this server has {}",
                    cx.models.join(", ")
                ),
            )
            .code("model_not_found")),
        };
        let mut chosen = 0;
        if let Some(m) = self.model.as_deref().filter(|m| !m.is_empty()) {
            chosen = pick("model", m)?;
        }
        if let Some(l) = self.lora.as_deref() {
            let i = pick("lora", l)?;
            if chosen != 0 && i != chosen {
                return Err(ApiError::invalid(
                    "lora",
                    format!("lora `{l}` contradicts model `{}`", cx.models[chosen]),
                ));
            }
            chosen = i;
        }
        Ok((cx.models[chosen].clone(), chosen.checked_sub(1)))
    }

    fn sampling(&self) -> Result<SamplerConfig, ApiError> {
        let d = SamplerConfig::default();
        let cfg = SamplerConfig {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            repeat_last_n: self.repeat_last_n.unwrap_or(d.repeat_last_n),
            seed: self.seed.unwrap_or(d.seed),
        };
        cfg.check().map_err(|b| {
            let f = b.knob.field();
            ApiError::invalid(f, format!("{f} {}: must be {}", b.value, b.want))
        })?;
        for (field, v) in [("n", self.n), ("best_of", self.best_of)] {
            if v.is_some_and(|v| v != 1) {
                return Err(ApiError::invalid(
                    field,
                    format!("{field}: only 1 choice per prompt is supported"),
                ));
            }
        }
        Ok(cfg)
    }

    fn stops(&self) -> Result<Vec<String>, ApiError> {
        let stops = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stops.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                "stop",
                "stop: a stop string must not be empty",
            ));
        }
        if stops.len() > 16 {
            return Err(ApiError::invalid("stop", "stop: at most 16 stop strings"));
        }
        Ok(stops)
    }

    fn max_tokens(&self, cx: &Context, default: usize) -> Result<usize, ApiError> {
        let n = self.max_tokens.unwrap_or(default.min(cx.max_output));
        if n > cx.max_output {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "max_tokens {n} is above this server's limit of {} (--max-output)",
                    cx.max_output
                ),
            ));
        }
        Ok(n)
    }
}

/// Checks a prompt's length against the limits, and with the `max_tokens` a request names,
/// that both fit the context together (as OpenAI's API refuses; unnamed, generation stops at the
/// context's end instead).
fn check_prompt(
    cx: &Context,
    param: &str,
    prompt: &[u32],
    max_tokens: Option<usize>,
) -> Result<(), ApiError> {
    if prompt.len() > cx.max_input {
        return Err(ApiError::invalid(
            param,
            format!(
                "the prompt has {} tokens, above this server's limit of {} (--max-input)",
                prompt.len(),
                cx.max_input
            ),
        )
        .code("context_length_exceeded"));
    }
    if prompt.len() > cx.ctx {
        return Err(ApiError::invalid(
            param,
            format!(
                "the prompt has {} tokens but the context holds {}",
                prompt.len(),
                cx.ctx
            ),
        )
        .code("context_length_exceeded"));
    }
    if let Some(n) = max_tokens
        && prompt.len().saturating_add(n) > cx.ctx
    {
        return Err(ApiError::invalid(
            "max_tokens",
            format!(
                "the prompt's {} tokens and max_tokens {n} exceed the context of {} tokens",
                prompt.len(),
                cx.ctx
            ),
        )
        .code("context_length_exceeded"));
    }
    check_ids(cx, param, prompt)
}

/// Every id inside the vocabulary, else an error naming the first one outside.
fn check_ids(cx: &Context, param: &str, ids: &[u32]) -> Result<(), ApiError> {
    match ids
        .iter()
        .enumerate()
        .find(|&(_, &t)| t as usize >= cx.vocab)
    {
        Some((i, &t)) => Err(ApiError::invalid(
            &format!("{param}[{i}]"),
            format!("token id {t} is outside the vocabulary of {}", cx.vocab),
        )),
        None => Ok(()),
    }
}

/// Token ids of prompt text: no BOS unless the model asks for one, as `tritium run` does; an
/// empty prompt starts where documents do.
fn encode(cx: &Context, param: &str, text: &str) -> Result<Vec<u32>, ApiError> {
    let ids = cx
        .tokenizer
        .encode(text)
        .map_err(|e| ApiError::invalid(param, format!("{param}: the tokenizer failed: {e}")))?;
    if ids.is_empty() {
        return match cx.tokenizer.doc_start() {
            Some(b) => Ok(vec![b]),
            None => Err(ApiError::invalid(
                param,
                "the prompt is empty and the model has no BOS/EOS token to start from",
            )),
        };
    }
    Ok(ids)
}

/// `POST /v1/completions`.
pub fn completion(body: &[u8], cx: &Context) -> Result<Request, ApiError> {
    let b: CompletionBody = parse(body)?;
    let common: Common = parse(body)?;
    let (model, lora) = common.lora(cx)?;
    let sampling = common.sampling()?;
    let stops = common.stops()?;
    let max_tokens = common.max_tokens(cx, DEFAULT_COMPLETION_TOKENS)?;
    if let Some(n) = b.logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
        return Err(ApiError::invalid(
            "logprobs",
            format!("logprobs {n}: at most {MAX_TOP_LOGPROBS}"),
        ));
    }
    let (prompts, texts): (Vec<Vec<u32>>, Vec<Option<String>>) = match b.prompt {
        Prompt::Text(t) => (vec![encode(cx, "prompt", &t)?], vec![Some(t)]),
        Prompt::Texts(ts) => {
            let ids = ts
                .iter()
                .enumerate()
                .map(|(i, t)| encode(cx, &format!("prompt[{i}]"), t))
                .collect::<Result<_, _>>()?;
            (ids, ts.into_iter().map(Some).collect())
        }
        Prompt::Tokens(ids) => (vec![ids], vec![None]),
        Prompt::TokenLists(l) => {
            let n = l.len();
            (l, vec![None; n])
        }
    };
    if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
        return Err(ApiError::invalid(
            "prompt",
            format!("prompt: give 1 to {MAX_PROMPTS} prompts"),
        ));
    }
    if common.stream && prompts.len() > 1 {
        return Err(ApiError::invalid(
            "stream",
            "stream: a streamed completion takes one prompt",
        ));
    }
    let many = prompts.len() > 1;
    let mut works = Vec::new();
    for (i, p) in prompts.into_iter().enumerate() {
        let param = if many {
            format!("prompt[{i}]")
        } else {
            "prompt".into()
        };
        if p.is_empty() {
            return Err(ApiError::invalid(&param, format!("{param}: no tokens")));
        }
        check_prompt(cx, &param, &p, common.max_tokens)?;
        if max_tokens == 0 && !b.echo {
            return Err(ApiError::invalid(
                "max_tokens",
                "max_tokens 0 asks for nothing unless echo is set",
            ));
        }
        works.push(Work {
            prompt: p,
            sampling: sampling.clone(),
            max_tokens,
            stops: stops.clone(),
            lora,
            prompt_logprobs: b.echo && b.logprobs.is_some(),
            top_logprobs: b.logprobs,
            ignore_eos: common.ignore_eos,
        });
    }
    Ok(Request {
        model,
        works,
        stream: common.stream,
        echo: b.echo,
        prompt_texts: texts,
    })
}

/// `POST /v1/chat/completions`: the messages rendered by the model's chat template.
pub fn chat(body: &[u8], cx: &Context) -> Result<Request, ApiError> {
    let b: ChatBody = parse(body)?;
    let common: Common = parse(body)?;
    let (model, lora) = common.lora(cx)?;
    let sampling = common.sampling()?;
    let mut stops = common.stops()?;
    stops.extend(END_OF_TURN.iter().map(|s| s.to_string()));
    let max_tokens = common.max_tokens(cx, cx.max_output)?;
    if max_tokens == 0 {
        return Err(ApiError::invalid("max_tokens", "max_tokens must be ≥ 1"));
    }
    if b.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages: none given"));
    }
    if let Some(n) = b.top_logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
        return Err(ApiError::invalid(
            "top_logprobs",
            format!("top_logprobs {n}: at most {MAX_TOP_LOGPROBS}"),
        ));
    }
    let mut chat = Chat::new(cx.chat_template, None).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            e.to_string(),
        )
    })?;
    for (i, m) in b.messages.into_iter().enumerate() {
        if !matches!(
            m.role.as_str(),
            "system" | "user" | "assistant" | "developer"
        ) {
            return Err(ApiError::invalid(
                &format!("messages[{i}].role"),
                format!(
                    "messages[{i}].role `{}`: must be system, user or assistant",
                    m.role
                ),
            ));
        }
        let text = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(ps)) => {
                let mut t = String::new();
                for (j, p) in ps.into_iter().enumerate() {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(s)) => t.push_str(&s),
                        _ => {
                            return Err(ApiError::invalid(
                                &format!("messages[{i}].content[{j}]"),
                                format!(
                                    "messages[{i}].content[{j}]: only text parts are supported"
                                ),
                            ));
                        }
                    }
                }
                t
            }
        };
        let role = if m.role == "developer" {
            "system"
        } else {
            &m.role
        };
        chat.messages.push((role.to_string(), text));
    }
    let text = chat
        .render(cx.tokenizer)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let prompt = encode(cx, "messages", &text)?;
    check_prompt(cx, "messages", &prompt, common.max_tokens)?;
    Ok(Request {
        model,
        works: vec![Work {
            prompt,
            sampling,
            max_tokens,
            stops,
            lora,
            prompt_logprobs: false,
            top_logprobs: if b.logprobs {
                Some(b.top_logprobs.unwrap_or(0))
            } else {
                None
            },
            ignore_eos: common.ignore_eos,
        }],
        stream: common.stream,
        echo: false,
        prompt_texts: vec![None],
    })
}

/// llama-server's `content` or vLLM's `prompt` (lm-evaluation-harness's remote tokenizer).
#[derive(Deserialize)]
struct TokenizeBody {
    #[serde(alias = "prompt")]
    content: String,
    #[serde(default)]
    with_pieces: bool,
    /// The BOS first where the model adds one to prompts (llama-server's flag; off by default).
    #[serde(default)]
    add_special: bool,
}

#[derive(Deserialize)]
struct DetokenizeBody {
    tokens: Vec<u32>,
}

/// `POST /tokenize` (llama-server's and vLLM's shape): `{"tokens": [...]}`, with pieces if asked.
pub fn tokenize(body: &[u8], cx: &Context) -> Result<serde_json::Value, ApiError> {
    let b: TokenizeBody = parse(body)?;
    let encode = if b.add_special {
        Tokenizer::encode
    } else {
        Tokenizer::encode_text
    };
    let ids = encode(cx.tokenizer, &b.content)
        .map_err(|e| ApiError::invalid("content", format!("content: the tokenizer failed: {e}")))?;
    if b.with_pieces {
        let pieces: Vec<_> = ids
            .iter()
            .map(|&id| json!({"id": id, "piece": cx.tokenizer.decode(&[id])}))
            .collect();
        return Ok(json!({ "tokens": pieces }));
    }
    Ok(json!({ "tokens": ids }))
}

/// `POST /detokenize`: the text as llama-server (`content`) and vLLM (`prompt`) name it.
pub fn detokenize(body: &[u8], cx: &Context) -> Result<serde_json::Value, ApiError> {
    let b: DetokenizeBody = parse(body)?;
    check_ids(cx, "tokens", &b.tokens)?;
    let text = cx.tokenizer.decode(&b.tokens);
    Ok(json!({ "content": text, "prompt": text }))
}

/// `GET /tokenizer_info` (vLLM's shape, which lm-evaluation-harness's remote tokenizer reads).
pub fn tokenizer_info(cx: &Context) -> serde_json::Value {
    let piece = |id: Option<u32>| id.map(|i| cx.tokenizer.decode(&[i]));
    json!({
        "eos_token": piece(cx.tokenizer.eos),
        "bos_token": piece(cx.tokenizer.bos),
        "pad_token": null,
        "chat_template": cx.chat_template.unwrap_or(tritium_gguf::names::DEFAULT_CHAT_TEMPLATE),
        "vocab_size": cx.vocab,
    })
}
