//! The Prometheus figures `GET /metrics` exposes (text format, `tritium_` prefix).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Endpoint {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<Endpoint, Counter>,
    pub errors: Family<Kind, Counter>,
    pub prompt_tokens: Counter,
    pub cached_tokens: Counter,
    pub generated_tokens: Counter,
    pub time_to_first_token: Histogram,
    pub token_latency: Histogram,
    pub request_seconds: Histogram,
    pub queue_depth: Gauge,
    pub busy_slots: Gauge,
    pub slots: Gauge,
    pub cancelled: Gauge,
    pub peak_busy: Gauge,
}

impl Metrics {
    pub fn new(slots: usize) -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("tritium"),
            requests: Family::default(),
            errors: Family::default(),
            prompt_tokens: Counter::default(),
            cached_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            // 1 ms … 33 s.
            time_to_first_token: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            token_latency: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            request_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            queue_depth: Gauge::default(),
            busy_slots: Gauge::default(),
            slots: Gauge::default(),
            cancelled: Gauge::default(),
            peak_busy: Gauge::default(),
        };
        m.slots.set(slots as i64);
        let r = &mut m.registry;
        r.register(
            "requests",
            "Requests received, by endpoint",
            m.requests.clone(),
        );
        r.register(
            "errors",
            "Requests answered with an error, by kind",
            m.errors.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens of finished requests",
            m.prompt_tokens.clone(),
        );
        r.register(
            "cached_prompt_tokens",
            "Prompt tokens reused from a slot's KV cache instead of run",
            m.cached_tokens.clone(),
        );
        r.register(
            "generated_tokens",
            "Tokens generated",
            m.generated_tokens.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "From request to first generated token",
            m.time_to_first_token.clone(),
        );
        r.register(
            "token_latency_seconds",
            "Between successive generated tokens of one request",
            m.token_latency.clone(),
        );
        r.register(
            "request_duration_seconds",
            "From request to its last token",
            m.request_seconds.clone(),
        );
        r.register(
            "queue_depth",
            "Requests waiting for a slot",
            m.queue_depth.clone(),
        );
        r.register(
            "busy_slots",
            "Slots running a request",
            m.busy_slots.clone(),
        );
        r.register("slots", "Slots (--parallel)", m.slots.clone());
        r.register(
            "peak_busy_slots",
            "The most slots busy at once since start",
            m.peak_busy.clone(),
        );
        r.register(
            "cancelled_requests",
            "Requests dropped because their client went away (disconnect or timeout)",
            m.cancelled.clone(),
        );
        m
    }

    pub fn request(&self, endpoint: &str) {
        self.requests
            .get_or_create(&Endpoint {
                endpoint: endpoint.into(),
            })
            .inc();
    }

    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&Kind { kind: kind.into() }).inc();
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)
            .expect("writing to a String cannot fail");
        s
    }
}
