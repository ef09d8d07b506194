//! `tritium serve` end to end: the real binary on a loopback port, driven by a real HTTP client
//! (ureq), on a small synthetic GGUF. Greedy text is checked against `tritium run --temp 0`,
//! log-probabilities against the engine's own logits (log-softmax in f64 here), and every limit
//! against the status, error shape and `Retry-After` it must give.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tritium_engine::synthetic::{Spec, gguf};
use tritium_engine::{Logits, Model, Runtime, Session};
use tritium_gguf::blocks::encode_f32;
use tritium_gguf::names::{adapter, general};
use tritium_gguf::{GgmlType, Value as GValue, Writer};

fn tritium() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tritium"))
}

/// A synthetic model with room for long generations.
fn model(dir: &Path) -> PathBuf {
    let p = dir.join("m.gguf");
    let spec = Spec {
        ctx: 2048,
        n_layers: 2,
        ..Spec::default()
    };
    std::fs::write(&p, gguf(&spec)).unwrap();
    p
}

/// A rank-2 adapter on every layer's Q and down projections, values from a fixed sequence.
fn adapter_file(dir: &Path, m: &Model) -> PathBuf {
    let (d, f) = (m.cfg.d_model, m.cfg.d_ff);
    let mut k = 7u32;
    let mut vals = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                k = k.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (((k >> 16) % 2001) as f32 / 1000.0 - 1.0) * 0.5
            })
            .collect()
    };
    let mut w = Writer::new();
    w.kv(general::ARCHITECTURE, GValue::String("bitnet".into()));
    w.kv(general::TYPE, GValue::String("adapter".into()));
    w.kv(adapter::TYPE, GValue::String("lora".into()));
    w.kv(adapter::LORA_ALPHA, GValue::F32(4.0));
    for l in 0..m.cfg.n_layers {
        for (stem, din, dout) in [("attn_q", d, d), ("ffn_down", f, d)] {
            let base = format!("blk.{l}.{stem}.weight");
            let a = vals(2 * din);
            let b = vals(dout * 2);
            w.tensor(
                &format!("{base}.lora_a"),
                &[din as u64, 2],
                GgmlType::F32,
                encode_f32(&a),
            );
            w.tensor(
                &format!("{base}.lora_b"),
                &[2, dout as u64],
                GgmlType::F32,
                encode_f32(&b),
            );
        }
    }
    let p = dir.join("ad.gguf");
    std::fs::write(&p, w.to_bytes()).unwrap();
    p
}

struct Server {
    child: Child,
    base: String,
    /// The `--api-key` it was started with, for metrics.
    key: Option<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(model: &Path, args: &[&str]) -> Server {
        let mut child = tritium()
            .arg("serve")
            .arg(model)
            .args(["--port", "0", "-t", "2"])
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.strip_prefix("listening on ") {
                        let _ = tx.send(rest.split_whitespace().next().unwrap().to_string());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let base = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server printed its address");
        let key = args
            .windows(2)
            .find(|w| w[0] == "--api-key")
            .map(|w| w[1].to_string());
        let s = Server {
            child,
            base,
            key,
            log,
        };
        let t0 = Instant::now();
        while s.get("/health", None).0 != 200 {
            assert!(t0.elapsed() < Duration::from_secs(30), "never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into()
    }

    fn get(&self, path: &str, key: Option<&str>) -> (u16, String) {
        let mut r = Self::agent().get(format!("{}{path}", self.base));
        if let Some(k) = key {
            r = r.header("Authorization", format!("Bearer {k}"));
        }
        let mut resp = r.call().unwrap();
        (
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap(),
        )
    }

    /// POSTs `body`; returns the status, `Retry-After` and the body.
    fn post_raw(&self, path: &str, body: &str, key: Option<&str>) -> (u16, Option<String>, String) {
        let mut r = Self::agent()
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(k) = key {
            r = r.header("Authorization", format!("Bearer {k}"));
        }
        let mut resp = r.send(body).unwrap();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (
            resp.status().as_u16(),
            retry,
            resp.body_mut().read_to_string().unwrap(),
        )
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let (status, _, text) = self.post_raw(path, &body.to_string(), None);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// A streamed request's `data:` payloads, in order.
    fn stream(&self, path: &str, body: Value) -> Vec<String> {
        let mut resp = Self::agent()
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let ct = resp
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        let text = resp.body_mut().read_to_string().unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
            .collect()
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics", self.key.as_deref());
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// Waits until `name` reads `want`.
    fn wait_metric(&self, name: &str, want: f64) {
        let t0 = Instant::now();
        while self.metric(name) != want {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{name} stayed at {} (want {want})",
                self.metric(name)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `tritium run --temp 0` prints after the prompt.
fn run_greedy(model: &Path, prompt: &str, n: usize, lora: Option<&Path>) -> String {
    run_greedy_kv(model, prompt, n, lora, "f32")
}

fn run_greedy_kv(model: &Path, prompt: &str, n: usize, lora: Option<&Path>, kv: &str) -> String {
    let mut c = tritium();
    c.arg("run").arg(model).args([
        "-p",
        prompt,
        "-n",
        &n.to_string(),
        "--temp",
        "0",
        "-t",
        "2",
        "--kv-cache",
        kv,
    ]);
    if let Some(l) = lora {
        c.arg("--lora").arg(l);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    out.strip_prefix(prompt)
        .unwrap()
        .strip_suffix('\n')
        .unwrap()
        .to_string()
}

fn error_of(text: &str) -> Value {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let e = v["error"].clone();
    assert!(
        e["message"].is_string() && e["type"].is_string(),
        "not OpenAI's error shape: {text}"
    );
    e
}

#[test]
fn completions_chat_streaming_models_and_tokenize() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let s = Server::start(&m, &["--parallel", "2"]);
    let (status, health) = s.get("/health", None);
    assert_eq!((status, health.as_str()), (200, r#"{"status":"ok"}"#));
    let models: Value = serde_json::from_str(&s.get("/v1/models", None).1).unwrap();
    assert_eq!(models["data"][0]["id"], "m");

    // A completion, whole and streamed: the chunks join to the same text, the last chunk
    // carries finish_reason and usage, then [DONE].
    let body = json!({"model": "m", "prompt": "the cat", "max_tokens": 20, "temperature": 0, "ignore_eos": true});
    let whole = s.post("/v1/completions", body.clone());
    assert_eq!(whole["object"], "text_completion");
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    assert_eq!(whole["usage"]["completion_tokens"], 20);
    assert_eq!(whole["usage"]["prompt_tokens"], 7); // one byte token each
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let chunks = s.stream("/v1/completions", streamed);
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let parsed: Vec<Value> = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    let joined: String = parsed
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(joined, whole["choices"][0]["text"].as_str().unwrap());
    let last = parsed.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["usage"]["completion_tokens"], 20);
    assert!(
        parsed[..parsed.len() - 1]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );

    // Chat: a message in, the assistant's message out; streamed, the role chunk comes first.
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 12, "temperature": 0, "ignore_eos": true});
    let whole = s.post("/v1/chat/completions", chat.clone());
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let chunks = s.stream("/v1/chat/completions", streamed);
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let parsed: Vec<Value> = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    assert_eq!(parsed[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(parsed[0]["object"], "chat.completion.chunk");
    let joined: String = parsed
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        joined,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(parsed.last().unwrap()["usage"]["total_tokens"].as_u64() > Some(12));

    // Tokenize and detokenize against the engine's tokenizer.
    let engine = Model::load(&m, &Runtime::new(1)).unwrap();
    let ids = engine.tokenizer.encode("the cat sat").unwrap();
    let t = s.post("/tokenize", json!({"content": "the cat sat"}));
    assert_eq!(t["tokens"], json!(ids));
    let back = s.post("/detokenize", json!({"tokens": ids}));
    assert_eq!(back["content"], "the cat sat");
    let pieces = s.post("/tokenize", json!({"content": "the", "with_pieces": true}));
    assert_eq!(pieces["tokens"][0]["piece"], "t");

    // The second identical request reused the slot's cache for all but its last prompt token.
    assert!(s.metric("tritium_cached_prompt_tokens_total") >= 6.0);

    // A request with three prompts is one request in the latency histogram.
    let before = s.metric("tritium_request_duration_seconds_count");
    let r = s.post(
        "/v1/completions",
        json!({"prompt": ["a", "b", "c"], "max_tokens": 2, "ignore_eos": true}),
    );
    assert_eq!(r["choices"].as_array().unwrap().len(), 3);
    assert_eq!(
        s.metric("tritium_request_duration_seconds_count"),
        before + 1.0
    );
}

#[test]
fn greedy_text_equals_tritium_run_alone_and_in_a_batch_of_eight() {
    greedy_text_equals_run("f32");
}

/// The same with an f16 KV cache on both sides: the cache's rounding is per value, so batching
/// still changes nothing.
#[test]
fn greedy_text_with_an_f16_cache_equals_tritium_run_with_one() {
    greedy_text_equals_run("f16");
}

fn greedy_text_equals_run(kv: &str) {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let s = Arc::new(Server::start(&m, &["--parallel", "8", "--kv-cache", kv]));
    let prompts: Vec<String> = (0..8).map(|i| format!("story {i}: the")).collect();
    let n = 48;
    let expected: Vec<String> = prompts
        .iter()
        .map(|p| run_greedy_kv(&m, p, n, None, kv))
        .collect();
    let ask = move |s: &Server, p: &str| {
        let r = s.post(
            "/v1/completions",
            json!({"prompt": p, "max_tokens": n, "temperature": 0}),
        );
        r["choices"][0]["text"].as_str().unwrap().to_string()
    };
    // Alone.
    assert_eq!(ask(&s, &prompts[0]), expected[0]);
    // Eight at once, started together so they share the engine's batches.
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = prompts
        .iter()
        .cloned()
        .map(|p| {
            let (s, b) = (s.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                ask(&s, &p)
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), expected[i], "prompt {i} in a batch");
    }
    // They did share: more than one slot was busy while they ran (the peak gauge).
    assert!(
        s.metric("tritium_peak_busy_slots") >= 2.0,
        "the eight requests never overlapped"
    );
}

#[test]
fn echo_logprobs_are_the_engines_log_softmax() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let s = Server::start(&m, &[]);
    let engine = Model::load(&m, &Runtime::new(1)).unwrap();
    let prompt = "a small test";
    let ids = engine.tokenizer.encode(prompt).unwrap();
    let r = s.post(
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 1, "temperature": 0, "echo": true, "logprobs": 3}),
    );
    let c = &r["choices"][0];
    assert!(c["text"].as_str().unwrap().starts_with(prompt));
    let lp = &c["logprobs"];
    let got = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(
        got.len(),
        ids.len() + 1,
        "prompt tokens then the generated one"
    );
    assert!(got[0].is_null() && lp["top_logprobs"][0].is_null());
    // The reference: every position's logits from a session, log-softmax in f64.
    let mut sess = Session::new(&engine, 64).unwrap();
    let logits = sess.forward(&ids, Logits::All).unwrap().to_vec();
    let v = engine.cfg.vocab;
    let log_softmax = |row: &[f32], id: usize| {
        let mx = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
        let z: f64 = row.iter().map(|&x| (x as f64 - mx).exp()).sum();
        row[id] as f64 - mx - z.ln()
    };
    for i in 1..ids.len() {
        let want = log_softmax(&logits[(i - 1) * v..i * v], ids[i] as usize);
        let have = got[i].as_f64().unwrap();
        assert!((have - want).abs() < 1e-4, "token {i}: {have} vs {want}");
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3);
        let best = top
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(best >= have - 1e-6, "the top alternatives include the best");
    }
    // The generated token's log-probability is the greedy (largest) one.
    let last = got[ids.len()].as_f64().unwrap();
    let row = &logits[(ids.len() - 1) * v..];
    let best = (0..v).map(|t| log_softmax(row, t)).fold(f64::MIN, f64::max);
    assert!((last - best).abs() < 1e-4);
    let offsets = lp["text_offset"].as_array().unwrap();
    assert_eq!(offsets[0], 0);
    assert_eq!(offsets[1], 1);
    // Token ids as the prompt, max_tokens 0: only the prompt's log-probabilities.
    let r = s.post(
        "/v1/completions",
        json!({"prompt": ids, "max_tokens": 0, "echo": true, "logprobs": 0}),
    );
    assert_eq!(
        r["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()
            .len(),
        ids.len()
    );
    assert_eq!(r["usage"]["completion_tokens"], 0);
}

#[test]
fn errors_come_in_openais_shape_and_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let s = Server::start(
        &m,
        &[
            "--api-key",
            "sesame",
            "--max-input",
            "16",
            "--max-output",
            "64",
            "--max-body",
            "4096",
            "--ctx",
            "32",
            "--parallel",
            "2",
            "--queue",
            "3",
        ],
    );
    let key = Some("sesame");
    let six_prompts = json!({"prompt": vec!["a"; 6]}).to_string();
    let cases: &[(&str, &str, u16, &str)] = &[
        ("/v1/completions", "{not json", 400, "not valid JSON"),
        ("/v1/completions", r#"{"prompt": 5}"#, 400, "prompt"),
        (
            "/v1/completions",
            r#"{"prompt": "x", "max_tokens": "many"}"#,
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            r#"{"model": "gpt-9", "prompt": "x"}"#,
            404,
            "gpt-9",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "lora": "nope"}"#,
            404,
            "nope",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "this prompt is far too long"}"#,
            400,
            "--max-input",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "max_tokens": 65}"#,
            400,
            "--max-output",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "temperature": -1}"#,
            400,
            "temperature",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "top_p": 0}"#,
            400,
            "top_p",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "stop": [""]}"#,
            400,
            "stop",
        ),
        ("/v1/completions", r#"{"prompt": "x", "n": 2}"#, 400, "n"),
        (
            "/v1/completions",
            r#"{"prompt": [99999]}"#,
            400,
            "outside the vocabulary",
        ),
        (
            "/v1/completions",
            r#"{"prompt": ["a", "b"], "stream": true}"#,
            400,
            "stream",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": []}"#,
            400,
            "messages",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "robot", "content": "x"}]}"#,
            400,
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
            400,
            "content[0]",
        ),
        ("/detokenize", r#"{"tokens": [1, 99999]}"#, 400, "tokens[1]"),
        // The prompt fits, but not with the tokens asked for (--ctx 32).
        (
            "/v1/completions",
            r#"{"prompt": "x", "max_tokens": 40}"#,
            400,
            "max_tokens",
        ),
        // More prompts than two slots and three places in the queue can ever hold.
        ("/v1/completions", six_prompts.as_str(), 400, "--queue"),
        ("/v1/embeddings", "{}", 404, "/v1/embeddings"),
    ];
    for &(path, body, want, needle) in cases {
        let (status, _, text) = s.post_raw(path, body, key);
        assert_eq!(status, want, "{path} {body}: {text}");
        let e = error_of(&text);
        assert!(
            e["message"].as_str().unwrap().contains(needle)
                || e["param"].as_str().is_some_and(|p| p.contains(needle)),
            "{path} {body}: {text} does not name {needle}"
        );
    }
    let (status, _, text) = s.post_raw(
        "/v1/completions",
        r#"{"prompt": "this prompt is far too long"}"#,
        key,
    );
    assert_eq!(status, 400);
    assert_eq!(error_of(&text)["code"], "context_length_exceeded");
    let (_, _, text) = s.post_raw(
        "/v1/completions",
        r#"{"prompt": "x", "max_tokens": 40}"#,
        key,
    );
    assert_eq!(error_of(&text)["code"], "context_length_exceeded");
    // A method an endpoint does not take.
    let (status, text) = s.get("/v1/completions", key);
    assert_eq!(status, 405, "{text}");
    assert!(error_of(&text)["message"].as_str().unwrap().contains("GET"));
    // A body over --max-body.
    let big = format!(r#"{{"prompt": "{}"}}"#, "x".repeat(8000));
    let (status, _, text) = s.post_raw("/v1/completions", &big, key);
    assert_eq!(status, 413, "{text}");
    error_of(&text);
    // Keys: none or a wrong one is 401 on every endpoint but /health.
    for k in [None, Some("sesam"), Some("sesame2"), Some("")] {
        let (status, _, text) = s.post_raw("/v1/completions", r#"{"prompt": "x"}"#, k);
        assert_eq!(status, 401, "{k:?}");
        assert_eq!(error_of(&text)["code"], "invalid_api_key");
    }
    assert_eq!(s.get("/v1/models", None).0, 401);
    assert_eq!(s.get("/v1/models", key).0, 200);
    // The scheme's name in any case (RFC 9110).
    let lower = Server::agent()
        .get(format!("{}/v1/models", s.base))
        .header("Authorization", "bearer sesame")
        .call()
        .unwrap();
    assert_eq!(lower.status().as_u16(), 200);
    assert_eq!(s.get("/health", None).0, 200);
    let (status, _, _) = s.post_raw(
        "/v1/completions",
        r#"{"prompt": "x", "max_tokens": 2}"#,
        key,
    );
    assert_eq!(status, 200);
    // Prompts stay out of the log unless --log-prompts.
    let log = s.log.lock().unwrap().join("\n");
    assert!(!log.contains("far too long"), "{log}");
    assert!(s.metric("tritium_errors_total{kind=\"unauthorized\"}") >= 4.0);
}

/// Starts a streamed request that runs long (ignore_eos, many tokens) and reads its first chunk;
/// returns the open response so the caller decides when the client goes away.
fn hog(s: &Server, max_tokens: usize) -> ureq::http::Response<ureq::Body> {
    let mut resp = Server::agent()
        .post(format!("{}/v1/completions", s.base))
        .header("Content-Type", "application/json")
        .send(
            json!({"prompt": "go", "max_tokens": max_tokens, "ignore_eos": true, "stream": true})
                .to_string(),
        )
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut first = [0u8; 16];
    resp.body_mut().as_reader().read_exact(&mut first).unwrap();
    resp
}

/// SIGTERM ends the server within the grace period and the hard stop after it, even while a
/// client holds a connection open mid-upload.
#[cfg(unix)]
#[test]
fn sigterm_ends_the_server_even_with_a_stalled_upload() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let mut s = Server::start(&m, &["--shutdown-grace", "0"]);
    // Headers promising a body that never comes.
    let mut stalled = std::net::TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    write!(
        stalled,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"pro"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = s.log.lock().unwrap().join("\n");
    assert!(log.contains("closing them"), "{log}");
    drop(stalled);
}

#[test]
fn a_client_that_goes_away_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let s = Server::start(&m, &["--parallel", "1"]);
    let resp = hog(&s, 2000);
    assert_eq!(s.metric("tritium_busy_slots"), 1.0);
    drop(resp);
    s.wait_metric("tritium_busy_slots", 0.0);
    assert_eq!(s.metric("tritium_cancelled_requests"), 1.0);
    assert!(s.metric("tritium_generated_tokens_total") < 2000.0);
    // The slot serves the next request.
    let r = s.post(
        "/v1/completions",
        json!({"prompt": "x", "max_tokens": 3, "ignore_eos": true}),
    );
    assert_eq!(r["usage"]["completion_tokens"], 3);
}

#[test]
fn over_the_queue_is_503_and_over_the_rate_is_429() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let s = Server::start(&m, &["--parallel", "1", "--queue", "1"]);
    let running = hog(&s, 2000);
    // One request may wait for the slot; the next is refused.
    let waiting = {
        let base = s.base.clone();
        std::thread::spawn(move || {
            let mut resp = Server::agent()
                .post(format!("{base}/v1/completions"))
                .send(json!({"prompt": "y", "max_tokens": 2, "ignore_eos": true}).to_string())
                .unwrap();
            (
                resp.status().as_u16(),
                resp.body_mut().read_to_string().unwrap(),
            )
        })
    };
    s.wait_metric("tritium_queue_depth", 1.0);
    let (status, retry, text) = s.post_raw("/v1/completions", r#"{"prompt": "z"}"#, None);
    assert_eq!(status, 503, "{text}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(error_of(&text)["code"], "server_overloaded");
    // The accepted ones are served once the slot frees.
    drop(running);
    let (status, text) = waiting.join().unwrap();
    assert_eq!(status, 200, "{text}");
    s.wait_metric("tritium_busy_slots", 0.0);

    let r = Server::start(&m, &["--rate-limit", "3"]);
    for _ in 0..3 {
        assert_eq!(r.get("/v1/models", None).0, 200);
    }
    let (status, retry, text) = r.post_raw("/v1/completions", r#"{"prompt": "z"}"#, None);
    assert_eq!(status, 429, "{text}");
    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(error_of(&text)["code"], "rate_limit_exceeded");
}

#[test]
fn a_request_picks_its_adapter_and_gets_what_run_lora_gives() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let engine = Model::load(&m, &Runtime::new(1)).unwrap();
    let ad = adapter_file(dir.path(), &engine);
    let lora_arg = format!("tuned={}", ad.display());
    let s = Server::start(&m, &["--parallel", "2", "--lora", &lora_arg]);
    let models: Value = serde_json::from_str(&s.get("/v1/models", None).1).unwrap();
    assert_eq!(models["data"][1]["id"], "tuned");
    let base = run_greedy(&m, "the dog", 24, None);
    let tuned = run_greedy(&m, "the dog", 24, Some(&ad));
    assert_ne!(base, tuned, "the adapter changes the output");
    let ask = |body: Value| {
        s.post("/v1/completions", body)["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let q = |extra: Value| {
        let mut b = json!({"prompt": "the dog", "max_tokens": 24, "temperature": 0});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    assert_eq!(ask(q(json!({"model": "tuned"}))), tuned);
    assert_eq!(ask(q(json!({"lora": "tuned"}))), tuned);
    assert_eq!(ask(q(json!({"model": "m"}))), base);
    assert_eq!(ask(q(json!({}))), base);
}

#[test]
fn the_official_openai_python_client_talks_to_it() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python).args(["-c", "import openai"]).output();
    if !probe.map(|o| o.status.success()).unwrap_or(false) {
        panic!(
            "this test drives the server with PyPI's openai client: run `python3 -m pip install openai` (or set PYTHON)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let s = Server::start(&m, &["--api-key", "k-123"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/serve/openai_client.py");
    let o = Command::new(&python)
        .arg(script)
        .arg(format!("{}/v1", s.base))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("openai client: ok"), "{text}");
}

#[test]
fn a_load_above_the_limits_loses_no_accepted_request() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let s = Arc::new(Server::start(&m, &["--parallel", "2", "--queue", "3"]));
    let n = 24;
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (s, b) = (s.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                let body = json!({"prompt": format!("load {i}"), "max_tokens": 200, "ignore_eos": true, "stream": i % 2 == 0});
                let (status, retry, text) = s.post_raw("/v1/completions", &body.to_string(), None);
                (i, status, retry, text)
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for h in handles {
        let (i, status, retry, text) = h.join().unwrap();
        match status {
            200 if i % 2 == 0 => {
                // A whole stream: the last chunk says length with 200 tokens, then [DONE].
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
                let last: Value = serde_json::from_str(data[data.len() - 2]).unwrap();
                assert_eq!(last["usage"]["completion_tokens"], 200, "{text}");
                ok += 1;
            }
            200 => {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["usage"]["completion_tokens"], 200, "{text}");
                ok += 1;
            }
            503 => {
                assert_eq!(retry.as_deref(), Some("1"));
                assert_eq!(error_of(&text)["code"], "server_overloaded");
                refused += 1;
            }
            other => panic!("request {i}: HTTP {other}: {text}"),
        }
    }
    assert_eq!(ok + refused, n);
    // At least a queue's worth was served (all 24 may arrive before the engine takes any into a
    // slot); the rest were refused, none lost.
    assert!(ok >= 3, "{ok} served, {refused} refused");
    assert!(
        refused >= 1,
        "24 requests at once never exceeded 2 slots + 3 queued"
    );
    s.wait_metric("tritium_busy_slots", 0.0);
    assert_eq!(s.metric("tritium_queue_depth"), 0.0);
    assert_eq!(
        s.metric("tritium_generated_tokens_total"),
        200.0 * ok as f64
    );
    assert_eq!(s.metric("tritium_cancelled_requests"), 0.0);
}
