//! Prometheus metrics of one node (issue 15), served as text at `/metrics`
//! (`http::serve`). Each node owns its recorder (the `metrics` crate's
//! `Recorder`, from `metrics-exporter-prometheus`, never installed globally): the simulator and
//! `quiver-node up` run several nodes in one process, and each must expose only its own.
//!
//! Counted as they happen: requests and their latency per RPC (`quiver_rpc_requests_total`,
//! `quiver_rpc_latency_ms`), promotions refused by gates (`quiver_gate_failures_total`).
//! Read at each scrape: Raft term, leader, applied and last log index, replication lag per peer
//! (on the leader), `version_count`, chunks fetched by repair and copies found rotten, and the
//! chunk bytes moved with each peer over QUIC (`quiver_chunk_bytes_{served,received,fetched,
//! pushed}_total`), as the node's `ChunkServer` and `PeerClient` count them
//! (`quiver_transfer::TransferStats`; a peer is its node id, else its address, at most
//! `TRANSFER_STATS_PEERS_MAX` of them before "other"). A node without its own QUIC endpoints
//! (the simulator's, whose `SimPeers` keeps its own byte accounting) has no such series.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use quiver_transfer::{ChunkBytes, PeerLabel};

/// Latency buckets (ms) of every latency histogram.
pub const LATENCY_BUCKETS_MS: [f64; 16] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
    10000.0,
];

/// The chunk byte counters per peer, in `ChunkBytes`' order (served, received, fetched,
/// pushed), with their help text.
const CHUNK_BYTES_HELP: [(&str, &str); 4] = [
    (
        "quiver_chunk_bytes_served_total",
        "Chunk bytes this node sent in answers to the peer's GETs over QUIC, by peer.",
    ),
    (
        "quiver_chunk_bytes_received_total",
        "Chunk bytes the peer pushed to this node over QUIC, verified and stored, by peer.",
    ),
    (
        "quiver_chunk_bytes_fetched_total",
        "Chunk bytes this node fetched from the peer over QUIC (repair, read-through), by peer.",
    ),
    (
        "quiver_chunk_bytes_pushed_total",
        "Chunk bytes this node pushed to the peer over QUIC and it acknowledged, by peer.",
    ),
];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// What a scrape reads of the node at that moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub term: u64,
    pub leader_id: Option<u64>,
    pub is_leader: bool,
    pub applied_index: u64,
    pub last_log_index: u64,
    /// Entries each peer is behind the leader's log (on the leader only).
    pub lag_by_peer: Vec<(u64, u64)>,
    /// Versions in the registry.
    pub version_count: u64,
    /// Deployment endpoints in the registry.
    pub endpoint_count: u64,
    /// The latest watch revision.
    pub watch_revision: u64,
    pub repair_fetched_chunks: u64,
    pub scrub_bad_copies: u64,
    /// Chunk bytes moved with each peer over QUIC since the node started.
    pub chunk_bytes_by_peer: Vec<(PeerLabel, ChunkBytes)>,
}

/// One node's recorder and what renders it.
pub struct NodeMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    node: String,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics")
            .field("node", &self.node)
            .finish()
    }
}

impl NodeMetrics {
    pub fn new(node_id: u64) -> Arc<NodeMetrics> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS_MS)
            .expect("the latency buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let metrics = NodeMetrics {
            recorder,
            handle,
            node: node_id.to_string(),
        };
        metrics.describe();
        Arc::new(metrics)
    }

    fn describe(&self) {
        let r = &self.recorder;
        let text = |s: &'static str| metrics::SharedString::const_str(s);
        r.describe_counter(
            "quiver_rpc_requests_total".into(),
            None,
            text("Client API requests, by method and gRPC status code."),
        );
        r.describe_histogram(
            "quiver_rpc_latency_ms".into(),
            Some(metrics::Unit::Milliseconds),
            text("Client API request latency until the response starts, by method."),
        );
        r.describe_counter(
            "quiver_gate_failures_total".into(),
            None,
            text("Stage changes refused by policy gates at this node, by stage."),
        );
        for (name, help) in CHUNK_BYTES_HELP {
            r.describe_counter(
                name.into(),
                Some(metrics::Unit::Bytes),
                metrics::SharedString::const_str(help),
            );
        }
    }

    fn key(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        let mut all = vec![Label::new("node", self.node.clone())];
        all.extend(labels.iter().map(|(k, v)| Label::new(*k, v.to_string())));
        Key::from_parts(name, all)
    }

    /// One client API request to `method` (`/quiver.v1.Models/GetModel`), answered with `code`,
    /// whose response started after `elapsed`.
    pub fn rpc(&self, method: &str, code: &str, elapsed: Duration) {
        // A path no service serves still counts, under one label: a scanner cannot grow the
        // label set without bound.
        let method = if method.starts_with("/quiver.v1.") && method.len() <= 96 {
            method
        } else {
            "other"
        };
        self.recorder
            .register_counter(
                &self.key(
                    "quiver_rpc_requests_total",
                    &[("method", method), ("code", code)],
                ),
                &METADATA,
            )
            .increment(1);
        self.recorder
            .register_histogram(
                &self.key("quiver_rpc_latency_ms", &[("method", method)]),
                &METADATA,
            )
            .record(elapsed.as_secs_f64() * 1000.0);
    }

    /// A stage change into `stage` refused by its gates.
    pub fn gate_failure(&self, stage: &str) {
        self.recorder
            .register_counter(
                &self.key("quiver_gate_failures_total", &[("stage", stage)]),
                &METADATA,
            )
            .increment(1);
    }

    /// Sets a counter read from elsewhere to its total `value` (never lowers it).
    fn total(&self, name: &'static str, labels: &[(&'static str, &str)], value: u64) {
        self.recorder
            .register_counter(&self.key(name, labels), &METADATA)
            .absolute(value);
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        self.recorder
            .register_gauge(&self.key(name, labels), &METADATA)
            .set(value);
    }

    /// The exposition text: `snapshot`'s gauges, set now, and every counter and histogram.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let s = snapshot;
        self.gauge("quiver_raft_term", &[], s.term as f64);
        self.gauge(
            "quiver_raft_leader_id",
            &[],
            s.leader_id.unwrap_or(0) as f64,
        );
        self.gauge(
            "quiver_raft_is_leader",
            &[],
            if s.is_leader { 1.0 } else { 0.0 },
        );
        self.gauge("quiver_raft_applied_index", &[], s.applied_index as f64);
        self.gauge("quiver_raft_last_log_index", &[], s.last_log_index as f64);
        for (peer, lag) in &s.lag_by_peer {
            let peer = peer.to_string();
            self.gauge(
                "quiver_raft_replication_lag_entries",
                &[("peer", &peer)],
                *lag as f64,
            );
        }
        self.gauge("version_count", &[], s.version_count as f64);
        self.gauge("quiver_endpoint_count", &[], s.endpoint_count as f64);
        self.gauge("quiver_watch_revision", &[], s.watch_revision as f64);
        self.gauge(
            "quiver_repair_fetched_chunks",
            &[],
            s.repair_fetched_chunks as f64,
        );
        self.gauge("quiver_scrub_bad_copies", &[], s.scrub_bad_copies as f64);
        for (peer, bytes) in &s.chunk_bytes_by_peer {
            let peer = peer.to_string();
            let labels = [("peer", peer.as_str())];
            let [served, received, fetched, pushed] = CHUNK_BYTES_HELP.map(|(name, _)| name);
            self.total(served, &labels, bytes.served_bytes);
            self.total(received, &labels, bytes.received_bytes);
            self.total(fetched, &labels, bytes.fetched_bytes);
            self.total(pushed, &labels, bytes.pushed_bytes);
        }
        self.handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_render_shows_this_nodes_counters_histograms_and_gauges_only() {
        let one = NodeMetrics::new(1);
        let two = NodeMetrics::new(2);
        one.rpc("/quiver.v1.Models/GetModel", "0", Duration::from_millis(3));
        one.rpc(
            "/quiver.v1.Models/GetModel",
            "5",
            Duration::from_micros(200),
        );
        one.rpc(&format!("/{}", "x".repeat(10_000)), "12", Duration::ZERO);
        one.gate_failure("production");
        let text = one.render(&Snapshot {
            term: 7,
            leader_id: Some(1),
            is_leader: true,
            lag_by_peer: vec![(2, 3)],
            version_count: 42,
            ..Default::default()
        });
        for line in [
            r#"quiver_rpc_requests_total{node="1",method="/quiver.v1.Models/GetModel",code="0"} 1"#,
            r#"quiver_rpc_requests_total{node="1",method="/quiver.v1.Models/GetModel",code="5"} 1"#,
            r#"quiver_rpc_requests_total{node="1",method="other",code="12"} 1"#,
            r#"quiver_rpc_latency_ms_bucket{node="1",method="/quiver.v1.Models/GetModel",le="0.25"} 1"#,
            r#"quiver_rpc_latency_ms_count{node="1",method="/quiver.v1.Models/GetModel"} 2"#,
            r#"quiver_gate_failures_total{node="1",stage="production"} 1"#,
            r#"quiver_raft_term{node="1"} 7"#,
            r#"quiver_raft_is_leader{node="1"} 1"#,
            r#"quiver_raft_replication_lag_entries{node="1",peer="2"} 3"#,
            r#"version_count{node="1"} 42"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains("x".repeat(100).as_str()));
        let other = two.render(&Snapshot::default());
        assert!(!other.contains("quiver_rpc_requests_total"), "{other}");
        assert!(other.contains(r#"quiver_raft_term{node="2"} 0"#), "{other}");
        assert!(!other.contains("quiver_chunk_bytes"), "{other}");
    }

    #[test]
    fn a_render_shows_chunk_bytes_per_peer_as_counters_that_never_go_down() {
        let metrics = NodeMetrics::new(1);
        let addr = std::net::SocketAddr::from(([10, 0, 0, 9], 7000));
        let snapshot = |served_bytes| Snapshot {
            chunk_bytes_by_peer: vec![
                (
                    PeerLabel::Node(2),
                    ChunkBytes {
                        served_bytes,
                        pushed_bytes: 4096,
                        ..ChunkBytes::default()
                    },
                ),
                (
                    PeerLabel::Addr(addr),
                    ChunkBytes {
                        fetched_bytes: 5,
                        received_bytes: 6,
                        ..ChunkBytes::default()
                    },
                ),
                (
                    PeerLabel::Other,
                    ChunkBytes {
                        fetched_bytes: 7,
                        ..ChunkBytes::default()
                    },
                ),
            ],
            ..Default::default()
        };
        let text = metrics.render(&snapshot(1_048_576));
        for line in [
            "# TYPE quiver_chunk_bytes_served_total counter",
            r#"quiver_chunk_bytes_served_total{node="1",peer="2"} 1048576"#,
            r#"quiver_chunk_bytes_pushed_total{node="1",peer="2"} 4096"#,
            r#"quiver_chunk_bytes_fetched_total{node="1",peer="2"} 0"#,
            r#"quiver_chunk_bytes_fetched_total{node="1",peer="10.0.0.9:7000"} 5"#,
            r#"quiver_chunk_bytes_received_total{node="1",peer="10.0.0.9:7000"} 6"#,
            r#"quiver_chunk_bytes_fetched_total{node="1",peer="other"} 7"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(
            text.contains("# HELP quiver_chunk_bytes_received_total"),
            "{text}"
        );
        // A lower total (a peer's label moved, say) does not take a counter back.
        let text = metrics.render(&snapshot(10));
        assert!(
            text.contains(r#"quiver_chunk_bytes_served_total{node="1",peer="2"} 1048576"#),
            "{text}"
        );
    }
}
