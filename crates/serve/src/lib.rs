//! `tritium serve`: an OpenAI-compatible HTTP server over the engine.
//!
//! Data flow: a handler validates the JSON body ([`api`]) into work per prompt, queues it
//! ([`scheduler::Queue`], bounded: beyond it 503 + `Retry-After`) and turns the engine thread's
//! events into an OpenAI response, whole or as server-sent events ([`respond`]). The engine thread
//! ([`scheduler`]) batches every busy slot into one forward per step. A middleware checks the API
//! key (constant time) and the per-client rate limit before any handler runs.

pub mod api;
pub mod bench;
pub mod metrics;
pub mod respond;
pub mod scheduler;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tritium_engine::{KvType, Lora, Model, Runtime};

use api::{ApiError, Context};
use metrics::Metrics;
use scheduler::{Job, Queue, Refused};

/// Everything `tritium serve` is told.
#[derive(Debug, Clone)]
pub struct Options {
    pub model: PathBuf,
    pub host: String,
    pub port: u16,
    pub parallel: usize,
    /// Positions per slot (None: the model's context).
    pub ctx: Option<usize>,
    /// What every slot's KV cache holds.
    pub kv_cache: KvType,
    pub loras: Vec<(String, PathBuf)>,
    pub api_keys: Vec<String>,
    pub max_input: Option<usize>,
    pub max_output: usize,
    pub queue: usize,
    /// Requests per minute per client (API key, else peer address).
    pub rate_limit: Option<u32>,
    pub timeout: Duration,
    /// How long running requests may go on after SIGTERM/Ctrl-C.
    pub shutdown_grace: Duration,
    pub body_limit: usize,
    pub threads: usize,
    pub log_prompts: bool,
}

/// The loaded model and its engine thread.
struct Engine {
    model: Arc<Model>,
    queue: Arc<Queue>,
    /// The base model's name, then the adapters'.
    models: Vec<String>,
    ctx: usize,
    max_input: usize,
}

pub struct App {
    opts: Options,
    /// SHA-256 of each API key: compared in constant time whatever the lengths.
    key_digests: Vec<[u8; 32]>,
    engine: OnceLock<Engine>,
    metrics: Metrics,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    next_id: AtomicU64,
}

impl App {
    fn ready(&self) -> Result<&Engine, ApiError> {
        self.engine.get().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable_error",
                "Loading model",
            )
            .retry(1)
        })
    }

    fn context<'a>(&'a self, e: &'a Engine) -> Context<'a> {
        Context {
            tokenizer: &e.model.tokenizer,
            vocab: e.model.cfg.vocab,
            models: &e.models,
            ctx: e.ctx,
            max_input: e.max_input,
            max_output: self.opts.max_output,
            chat_template: e.model.tokenizer.chat_template.as_deref(),
        }
    }

    /// Counts an error response by kind and passes it on.
    fn fail(&self, e: ApiError) -> Response {
        self.metrics.error(match e.status.as_u16() {
            400 | 413 | 422 => "invalid_request",
            401 => "unauthorized",
            404 => "not_found",
            429 => "rate_limited",
            503 => "unavailable",
            504 => "timeout",
            _ => "server",
        });
        e.into_response()
    }
}

/// Checks what every endpoint but `/health` needs: the API key, then the client's rate.
async fn guard(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    // `Authorization: Bearer KEY`, the scheme in any case (RFC 9110).
    let key = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, k)| k.trim().to_string());
    if !app.key_digests.is_empty() {
        let given = digest(key.as_deref().unwrap_or("").as_bytes());
        // Every key is compared, each in constant time, so timing tells nothing of which matched.
        let ok = app
            .key_digests
            .iter()
            .fold(subtle::Choice::from(0), |acc, k| acc | k.ct_eq(&given));
        if !bool::from(ok) {
            // Wrong keys count against the address's rate, so keys cannot be guessed at speed.
            if let Some(l) = &app.limiter
                && l.check_key(&format!("ip:{}", peer.ip())).is_err()
            {
                return app.fail(
                    ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limit_error",
                        "too many requests with a wrong API key",
                    )
                    .code("rate_limit_exceeded")
                    .retry(60),
                );
            }
            return app.fail(
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "invalid or missing API key (Authorization: Bearer KEY)",
                )
                .code("invalid_api_key"),
            );
        }
    }
    if let Some(l) = &app.limiter {
        // One entry per client ever seen: drop the ones whose budget has refilled, so many
        // distinct addresses cannot grow the table without bound.
        if l.len() > 10_000 {
            l.retain_recent();
        }
        let client = match &key {
            Some(k) if !app.opts.api_keys.is_empty() => format!("key:{k}"),
            _ => format!("ip:{}", peer.ip()),
        };
        if let Err(not_until) = l.check_key(&client) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return app.fail(
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    format!(
                        "over the rate limit of {} requests a minute",
                        app.opts.rate_limit.unwrap_or(0)
                    ),
                )
                .code("rate_limit_exceeded")
                .retry(wait.as_secs_f64().ceil().max(1.0) as u64),
            );
        }
    }
    // One bound on the whole exchange, the body's upload included (the handlers' own deadline
    // starts once the body is in); a streamed reply is bounded by that deadline alone.
    let bound = app.opts.timeout.saturating_add(Duration::from_secs(1));
    match tokio::time::timeout(bound, next.run(req)).await {
        Ok(r) => r,
        Err(_) => app.fail(respond::timeout(&app)),
    }
}

/// SHA-256 of `bytes`.
fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

async fn health(State(app): State<Arc<App>>) -> Response {
    match app.ready() {
        Ok(e) if e.queue.is_stopped() => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_error",
            "the engine has stopped",
        )
        .into_response(),
        Ok(_) => axum::Json(json!({"status": "ok"})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn models(State(app): State<Arc<App>>) -> Response {
    app.metrics.request("models");
    match app.ready() {
        Ok(e) => axum::Json(json!({
            "object": "list",
            "data": e.models.iter().map(|m| json!({
                "id": m, "object": "model", "created": 0, "owned_by": "tritium",
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => app.fail(e),
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    if let Some(e) = app.engine.get() {
        let (m, q) = (&app.metrics, &e.queue);
        for (gauge, figure) in [
            (&m.queue_depth, &q.depth),
            (&m.busy_slots, &q.busy_slots),
            (&m.cancelled, &q.cancelled),
            (&m.peak_busy, &q.peak_busy),
        ] {
            gauge.set(figure.load(Ordering::SeqCst) as i64);
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// A body under the size limit, or a 413 in OpenAI's shape.
fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|r| {
        let status = r.status();
        ApiError::new(status, "invalid_request_error", r.body_text()).code(
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                "request_too_large"
            } else {
                "bad_body"
            },
        )
    })
}

/// A JSON-in, JSON-out endpoint over `api`'s function `f`.
fn answer(
    app: &App,
    endpoint: &str,
    b: Result<Bytes, BytesRejection>,
    f: fn(&[u8], &Context) -> Result<serde_json::Value, ApiError>,
) -> Response {
    app.metrics.request(endpoint);
    match app.ready().and_then(|e| f(&body(b)?, &app.context(e))) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => app.fail(e),
    }
}

async fn tokenize(State(app): State<Arc<App>>, b: Result<Bytes, BytesRejection>) -> Response {
    answer(&app, "tokenize", b, api::tokenize)
}

async fn detokenize(State(app): State<Arc<App>>, b: Result<Bytes, BytesRejection>) -> Response {
    answer(&app, "detokenize", b, api::detokenize)
}

async fn tokenizer_info(State(app): State<Arc<App>>) -> Response {
    app.metrics.request("tokenizer_info");
    match app.ready() {
        Ok(e) => axum::Json(api::tokenizer_info(&app.context(e))).into_response(),
        Err(e) => app.fail(e),
    }
}

/// Which OpenAI endpoint a generation answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

async fn completions(State(app): State<Arc<App>>, b: Result<Bytes, BytesRejection>) -> Response {
    generate(app, b, Endpoint::Completions).await
}

async fn chat(State(app): State<Arc<App>>, b: Result<Bytes, BytesRejection>) -> Response {
    generate(app, b, Endpoint::Chat).await
}

async fn generate(app: Arc<App>, b: Result<Bytes, BytesRejection>, ep: Endpoint) -> Response {
    let start = Instant::now();
    app.metrics.request(match ep {
        Endpoint::Completions => "completions",
        Endpoint::Chat => "chat_completions",
    });
    let parsed = app.ready().and_then(|e| {
        let b = body(b)?;
        let cx = app.context(e);
        let req = match ep {
            Endpoint::Completions => api::completion(&b, &cx)?,
            Endpoint::Chat => api::chat(&b, &cx)?,
        };
        Ok((e, req))
    });
    let (engine, req) = match parsed {
        Ok(x) => x,
        Err(e) => return app.fail(e),
    };
    let id = app.next_id.fetch_add(1, Ordering::SeqCst);
    if app.opts.log_prompts {
        for w in &req.works {
            eprintln!(
                "request {id}: prompt {:?}",
                engine.model.tokenizer.decode(&w.prompt)
            );
        }
    }
    // Every prompt is queued, or none.
    let (mut jobs, mut receivers) = (Vec::new(), Vec::new());
    for w in &req.works {
        let (tx, rx) = mpsc::unbounded_channel();
        jobs.push(Job {
            work: w.clone(),
            events: tx,
        });
        receivers.push(rx);
    }
    if let Err(why) = engine.queue.submit(jobs) {
        let msg = match why {
            Refused::TooMany => {
                return app.fail(ApiError::invalid(
                    "prompt",
                    format!(
                        "{} prompts in one request: more than this server's {} slots (--parallel) \
                         and {} places in its queue (--queue) can hold",
                        req.works.len(),
                        app.opts.parallel,
                        app.opts.queue
                    ),
                ));
            }
            Refused::Full => format!(
                "the server is busy: every slot is taken and {} requests already wait (--queue)",
                app.opts.queue
            ),
            Refused::ShuttingDown => "the server is shutting down".into(),
        };
        return app.fail(
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", msg)
                .code("server_overloaded")
                .retry(1),
        );
    }
    // A --timeout past what an Instant can hold means no timeout in practice: a century.
    let until = start
        .checked_add(app.opts.timeout)
        .or_else(|| start.checked_add(Duration::from_secs(100 * 365 * 86400)))
        .unwrap_or(start);
    let deadline = tokio::time::Instant::from_std(until);
    let meta = respond::Meta {
        id: format!(
            "{}-{id}",
            if ep == Endpoint::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            }
        ),
        model: req.model.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        endpoint: ep,
        start,
        request: id,
    };
    if req.stream {
        let rx = receivers.pop().expect("one prompt when streaming");
        return respond::stream(app.clone(), meta, req, rx, deadline);
    }
    match respond::whole(&app, &meta, &req, receivers, deadline).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => app.fail(e),
    }
}

/// Loads the model and adapters and starts the engine thread.
fn load(opts: &Options) -> Result<Engine, String> {
    let rt = Runtime::new(opts.threads);
    let model = Arc::new(Model::load(&opts.model, &rt).map_err(|e| e.to_string())?);
    let ctx = opts.ctx.unwrap_or(model.cfg.ctx);
    if ctx == 0 || ctx > model.cfg.ctx {
        return Err(format!(
            "--ctx {ctx}: must be between 1 and the model's context of {}",
            model.cfg.ctx
        ));
    }
    let base = opts
        .model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let mut models = vec![base];
    let mut loras = Vec::new();
    for (name, path) in &opts.loras {
        if models.contains(name) {
            return Err(format!("--lora {name}=…: the name `{name}` is taken"));
        }
        loras.push(Lora::load(path, &model).map_err(|e| e.to_string())?);
        models.push(name.clone());
    }
    let queue = Arc::new(Queue::new(opts.queue, opts.parallel));
    let _engine_thread = scheduler::spawn(
        model.clone(),
        Arc::new(loras),
        queue.clone(),
        opts.parallel,
        ctx,
        opts.kv_cache,
    )?;
    Ok(Engine {
        model,
        queue,
        models,
        ctx,
        max_input: opts.max_input.unwrap_or(ctx).min(ctx),
    })
}

/// Resolves when SIGTERM or Ctrl-C arrives.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics_text))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/tokenize", post(tokenize))
        .route("/tokenizer_info", get(tokenizer_info))
        .route("/detokenize", post(detokenize))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(app.opts.body_limit))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

async fn not_found(req: Request) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("no endpoint {}", req.uri().path()),
    )
    .code("not_found")
    .into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("{} does not take {}", req.uri().path(), req.method()),
    )
    .code("method_not_allowed")
    .into_response()
}

/// Binds, loads the model (answering 503 meanwhile), serves until SIGTERM/Ctrl-C, then stops
/// taking requests and lets running ones finish within the grace period.
pub fn serve(opts: Options) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        // HTTP work is light; the cores belong to the engine, whose team a second HTTP thread
        // only preempts more often. One worker against two, six alternating rounds of
        // `bench-serve` on Zen 4 (125m, 2 engine threads): 8 streams faster in all six (+1–26%,
        // median +3.5%), one stream in five. Loading runs on the blocking pool, not here.
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    let result = rt.block_on(serve_async(opts));
    // A model still loading on the blocking pool, or a connection past the hard stop, does not
    // hold the process.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// How long after the grace period connections may take to close before the server stops
/// anyway (a client reading a stream slowly, or sending a body byte by byte).
const HARD_STOP: Duration = Duration::from_secs(5);

async fn serve_async(opts: Options) -> Result<(), String> {
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("--host/--port {addr}: cannot listen: {e}"))?;
    let local = listener.local_addr().map_err(|e| format!("{addr}: {e}"))?;
    let limiter = opts.rate_limit.map(|n| {
        RateLimiter::keyed(Quota::per_minute(
            NonZeroU32::new(n).expect("--rate-limit ≥ 1 is checked by the CLI"),
        ))
    });
    let app = Arc::new(App {
        key_digests: opts.api_keys.iter().map(|k| digest(k.as_bytes())).collect(),
        metrics: Metrics::new(opts.parallel),
        engine: OnceLock::new(),
        limiter,
        next_id: AtomicU64::new(0),
        opts,
    });
    eprintln!("listening on http://{local} (loading the model)");
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
    {
        let app = app.clone();
        tokio::task::spawn_blocking(move || match load(&app.opts) {
            Ok(e) => {
                let m = &e.model;
                eprintln!(
                    "ready: {} ({} layers, d_model {}, {}), {} slots × {} tokens, {} threads",
                    app.opts.model.display(),
                    m.cfg.n_layers,
                    m.cfg.d_model,
                    m.weight_type.name(),
                    app.opts.parallel,
                    e.ctx,
                    m.rt.threads()
                );
                let _ = app.engine.set(e);
            }
            Err(msg) => {
                let _ = failed_tx.send(msg);
            }
        });
    }
    let server = axum::serve(
        listener,
        router(app.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    );
    let grace = app.opts.shutdown_grace;
    let app2 = app.clone();
    let (signalled, hard_stop) = tokio::sync::oneshot::channel::<()>();
    let hard_stop = async move {
        match hard_stop.await {
            Ok(()) => tokio::time::sleep(grace + HARD_STOP).await,
            Err(_) => std::future::pending().await,
        }
    };
    let stopping = async move {
        shutdown_signal().await;
        let _ = signalled.send(());
        eprintln!("shutting down: no new requests; running ones have {grace:?} to finish");
        if let Some(e) = app2.engine.get() {
            e.queue.drain();
            let q = e.queue.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                q.stop();
            });
        }
    };
    // A model that fails to load ends the server with its error (a dropped sender, on success,
    // disables that branch).
    let result = tokio::select! {
        r = server.with_graceful_shutdown(stopping) => r.map_err(|e| format!("serving: {e}")),
        Ok(msg) = failed_rx => Err(msg),
        () = hard_stop => {
            eprintln!("connections still open {HARD_STOP:?} after the grace period: closing them");
            Ok(())
        }
    };
    if let Some(e) = app.engine.get() {
        e.queue.stop();
    }
    if result.is_ok() {
        eprintln!("stopped");
    }
    result
}
