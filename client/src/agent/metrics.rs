//! Prometheus metrics of one serving agent, served at its `GET /metrics`. Like a node's, the
//! recorder is the agent's own (never installed globally): tests and benchmarks run several
//! agents in one process.
//!
//! The four: `model_load_time_ms` (histogram: from the change that made the agent want
//! a version to the version ready to serve), `rollback_time_ms` (histogram: from the
//! registry's commit of a rollback to this agent routing by it), `version_count` (versions
//! loaded), `serving_error_rate_pct` (per version, in the generation routed by). Beside them:
//! requests by version and outcome, prediction latency, shadow disagreements, propagation of
//! every change, whether the registry answers, and bytes pulled.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Buckets (ms) of every histogram: from a tenth of a millisecond (a prediction) to two
/// minutes (pulling and loading a large version).
pub const BUCKETS_MS: [f64; 20] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2500.0, 5000.0,
    10000.0, 20000.0, 30000.0, 60000.0, 120000.0,
];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// How a prediction request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The model failed (500): counts against the version.
    Error,
    /// Refused by the signature or as malformed (400): the caller's mistake.
    Invalid,
    /// No version of the split loaded yet (503).
    Unavailable,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Invalid => "invalid",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// What a scrape reads of the agent at that moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub generation: u64,
    pub versions_loaded: u64,
    pub registry_reachable: bool,
    /// Error rate (%) of each version in the generation routed by.
    pub error_rate_pct: Vec<(u64, f64)>,
}

/// One agent's recorder.
pub struct AgentMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    endpoint: String,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl AgentMetrics {
    pub fn new(endpoint: &str) -> Arc<AgentMetrics> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS_MS)
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let metrics = AgentMetrics {
            recorder,
            handle,
            endpoint: endpoint.to_string(),
        };
        metrics.describe();
        Arc::new(metrics)
    }

    fn describe(&self) {
        let r = &self.recorder;
        let text = metrics::SharedString::const_str;
        let ms = Some(metrics::Unit::Milliseconds);
        r.describe_histogram(
            "model_load_time_ms".into(),
            ms,
            text("From the change that made the agent want a version to the version ready."),
        );
        r.describe_histogram(
            "rollback_time_ms".into(),
            ms,
            text("From the registry's commit of a rollback to this agent routing by it."),
        );
        r.describe_histogram(
            "quiver_agent_propagation_ms".into(),
            ms,
            text(
                "From the registry's commit of any deployment change to this agent routing by it.",
            ),
        );
        r.describe_gauge("version_count".into(), None, text("Versions loaded."));
        r.describe_gauge(
            "serving_error_rate_pct".into(),
            None,
            text("Errors per 100 requests of each version, in the generation routed by."),
        );
        r.describe_counter(
            "quiver_agent_requests_total".into(),
            None,
            text("Prediction requests by version and outcome (ok, error, invalid, unavailable)."),
        );
        r.describe_histogram(
            "quiver_agent_predict_latency_ms".into(),
            ms,
            text("Prediction latency by version, validation and model included."),
        );
    }

    fn key(&self, name: &'static str, labels: &[(&'static str, String)]) -> Key {
        let mut all = vec![Label::new("endpoint", self.endpoint.clone())];
        all.extend(labels.iter().map(|(k, v)| Label::new(*k, v.clone())));
        Key::from_parts(name, all)
    }

    fn histogram(&self, name: &'static str, labels: &[(&'static str, String)], ms: f64) {
        self.recorder
            .register_histogram(&self.key(name, labels), &METADATA)
            .record(ms);
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, String)], n: u64) {
        self.recorder
            .register_counter(&self.key(name, labels), &METADATA)
            .increment(n);
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, String)], value: f64) {
        self.recorder
            .register_gauge(&self.key(name, labels), &METADATA)
            .set(value);
    }

    /// A prediction (version 0: none answered) and how it ended.
    pub fn request(&self, version: u64, outcome: Outcome, elapsed: Duration) {
        let version = version.to_string();
        self.counter(
            "quiver_agent_requests_total",
            &[
                ("version", version.clone()),
                ("outcome", outcome.label().into()),
            ],
            1,
        );
        if matches!(outcome, Outcome::Ok | Outcome::Error) {
            self.histogram(
                "quiver_agent_predict_latency_ms",
                &[("version", version)],
                elapsed.as_secs_f64() * 1000.0,
            );
        }
    }

    /// A shadow's answer differed from the answer returned (or it failed).
    pub fn shadow_disagreement(&self, version: u64) {
        self.counter(
            "quiver_agent_shadow_disagreements_total",
            &[("version", version.to_string())],
            1,
        );
    }

    /// A version ready, `load_ms` after it was first wanted. One histogram for all versions:
    /// a label per version would grow without bound over an endpoint's life.
    pub fn model_loaded(&self, load_ms: i64) {
        self.histogram("model_load_time_ms", &[], load_ms as f64);
    }

    /// A deployment change routed by, `propagation_ms` after its commit.
    pub fn change_applied(&self, propagation_ms: i64, rollback: bool) {
        self.histogram("quiver_agent_propagation_ms", &[], propagation_ms as f64);
        if rollback {
            self.histogram("rollback_time_ms", &[], propagation_ms as f64);
        }
    }

    pub fn pulled(&self, bytes: u64) {
        self.counter("quiver_agent_pulled_bytes_total", &[], bytes);
    }

    /// The exposition text: `snapshot`'s gauges, set now, and every counter and histogram.
    pub fn render(&self, s: &Snapshot) -> String {
        self.gauge("quiver_agent_generation", &[], s.generation as f64);
        self.gauge("version_count", &[], s.versions_loaded as f64);
        self.gauge(
            "quiver_agent_registry_reachable",
            &[],
            if s.registry_reachable { 1.0 } else { 0.0 },
        );
        for (version, rate) in &s.error_rate_pct {
            self.gauge(
                "serving_error_rate_pct",
                &[("version", version.to_string())],
                *rate,
            );
        }
        self.handle.render()
    }
}
