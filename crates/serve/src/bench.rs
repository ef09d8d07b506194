//! `tritium bench-serve`: a bounded loopback load generator for any OpenAI-compatible server
//! (tritium's or llama-server). For each concurrency it runs that many client threads, each
//! sending the same number of streamed completions one after another (greedy, `ignore_eos`, a
//! fixed `max_tokens`), and reports aggregate generated tokens/s with p50/p99 time to first token
//! and gap between tokens, as the client sees them.

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Load {
    /// e.g. `http://127.0.0.1:8080`
    pub url: String,
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub streams: Vec<usize>,
    pub requests_per_stream: usize,
    pub max_tokens: usize,
    pub timeout: Duration,
}

/// One request's view from the client.
#[derive(Debug, Default, Clone)]
struct Sample {
    tokens: usize,
    ttft: f64,
    gaps: Vec<f64>,
}

/// The figures of one concurrency level.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Level {
    pub streams: usize,
    pub requests: usize,
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub token_gap_p50_ms: f64,
    pub token_gap_p99_ms: f64,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

/// One streamed completion; tokens are the server's `usage.completion_tokens` where it gives
/// them, else the chunks that carried text.
fn request(agent: &ureq::Agent, load: &Load, prompt: &str) -> Result<Sample, String> {
    let mut body = json!({
        "prompt": prompt,
        "max_tokens": load.max_tokens,
        "temperature": 0,
        "stream": true,
        "ignore_eos": true,
    });
    if let Some(m) = &load.model {
        body["model"] = json!(m);
    }
    let mut req = agent
        .post(format!("{}/v1/completions", load.url))
        .header("Content-Type", "application/json");
    if let Some(k) = &load.api_key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let start = Instant::now();
    let resp = req
        .send(body.to_string())
        .map_err(|e| format!("{}: {e}", load.url))?;
    if resp.status() != 200 {
        return Err(format!("{}: HTTP {}", load.url, resp.status()));
    }
    let reader = BufReader::new(resp.into_body().into_reader());
    let mut s = Sample::default();
    let (mut chunks, mut usage, mut last) = (0usize, None, None::<Instant>);
    for line in reader.lines() {
        let line = line.map_err(|e| format!("reading the stream: {e}"))?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).map_err(|e| format!("a chunk: {e}: {data}"))?;
        if let Some(e) = v.get("error") {
            return Err(format!("the server: {e}"));
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            usage = Some(n as usize);
        }
        let text = v["choices"][0]["text"].as_str().unwrap_or("");
        if !text.is_empty() {
            let now = Instant::now();
            match last {
                None => s.ttft = (now - start).as_secs_f64(),
                Some(t) => s.gaps.push((now - t).as_secs_f64()),
            }
            last = Some(now);
            chunks += 1;
        }
    }
    s.tokens = usage.unwrap_or(chunks);
    Ok(s)
}

/// Runs every concurrency level of `load` in turn.
pub fn run(load: &Load) -> Result<Vec<Level>, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(load.timeout))
        .build()
        .into();
    // One warm-up request: the first pays for page faults and thread start-up.
    request(&agent, load, "warm up")?;
    let mut levels = Vec::new();
    for &n in &load.streams {
        let barrier = Arc::new(Barrier::new(n));
        let start = Instant::now();
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (agent, load, barrier) = (agent.clone(), load.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..load.requests_per_stream)
                        .map(|r| {
                            request(&agent, &load, &format!("Story {i}.{r}: once upon a time"))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut samples = Vec::new();
        for h in handles {
            samples.extend(
                h.join()
                    .map_err(|_| "a client thread panicked".to_string())??,
            );
        }
        let seconds = start.elapsed().as_secs_f64();
        let tokens: usize = samples.iter().map(|s| s.tokens).sum();
        let mut ttft: Vec<f64> = samples.iter().map(|s| s.ttft).collect();
        let mut gaps: Vec<f64> = samples.iter().flat_map(|s| s.gaps.clone()).collect();
        levels.push(Level {
            streams: n,
            requests: samples.len(),
            tokens,
            seconds,
            tokens_per_s: tokens as f64 / seconds,
            ttft_p50_ms: percentile(&mut ttft, 0.5) * 1e3,
            ttft_p99_ms: percentile(&mut ttft, 0.99) * 1e3,
            token_gap_p50_ms: percentile(&mut gaps, 0.5) * 1e3,
            token_gap_p99_ms: percentile(&mut gaps, 0.99) * 1e3,
        });
    }
    Ok(levels)
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&mut v, 0.5), 3.0);
        assert_eq!(percentile(&mut v, 0.99), 5.0);
        assert_eq!(percentile(&mut v, 0.0), 1.0);
        assert!(percentile(&mut [], 0.5).is_nan());
    }
}
