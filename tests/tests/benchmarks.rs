//! The benchmark commands at toy size: CI proves they still run and print
//! their figures beside the baselines. (Real figures come from release
//! builds at full size; see the README.)

use quiver_tests::{quiver, NodeProcess};

const NODE: &str = env!("CARGO_BIN_EXE_e2e-quiver-node");
const CLI: &str = env!("CARGO_BIN_EXE_e2e-quiver");

fn figure<'a>(report: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    report
        .get(key)
        .unwrap_or_else(|| panic!("benchmark JSON has no {key:?}: {report}"))
}

#[test]
fn bench_ingest_and_bench_registry_run_at_toy_size() {
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(NODE, &tmp.path().join("node")).unwrap();
    let scratch = tmp.path().display().to_string();
    let ingest = quiver(
        CLI,
        &node.endpoint,
        &[
            "bench",
            "ingest",
            "--size",
            "8MiB",
            "--files",
            "2",
            "--scratch-dir",
            &scratch,
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    for key in [
        "raw_write_mb_per_s",
        "blake3_mb_per_s",
        "upload_mb_per_s",
        "download_mb_per_s",
    ] {
        let v = figure(&ingest, key).as_f64().unwrap_or(0.0);
        assert!(v > 0.0, "{key} = {v} in {ingest}");
    }
    let registry = quiver(
        CLI,
        &node.endpoint,
        &[
            "bench",
            "registry",
            "--clients",
            "2",
            "--duration",
            "1",
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    let text = registry.to_string();
    assert!(
        text.contains("p99"),
        "registry report has latency percentiles: {text}"
    );
}

#[test]
fn bench_transport_runs_at_toy_size() {
    let out = quiver(
        CLI,
        "http://127.0.0.1:9",
        &["bench", "transport", "--size", "8MiB", "--output", "json"],
    )
    .ok()
    .json();
    for key in [
        "tcp_mb_per_s",
        "quic_stream_mb_per_s",
        "chunk_protocol_mb_per_s",
    ] {
        let v = figure(&out, key).as_f64().unwrap_or(0.0);
        assert!(v > 0.0, "{key} = {v} in {out}");
    }
}

fn node_bench(args: &[&str]) -> serde_json::Value {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(NODE)
        .args(args)
        .args(["--output", "json", "--scratch-dir"])
        .arg(tmp.path())
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "quiver-node {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn cluster_benchmarks_run_at_toy_size() {
    let d = node_bench(&["bench", "distribution", "--size", "8MiB"]);
    assert!(figure(&d, "ready_s").as_f64().unwrap() > 0.0, "{d}");
    assert!(
        figure(&d, "replicated_to_raw_ratio").as_f64().unwrap() > 0.0,
        "{d}"
    );
    assert!(
        figure(&d, "replication_cpu_s").as_f64().unwrap() > 0.0,
        "{d}"
    );
    let m = node_bench(&[
        "bench",
        "metadata",
        "--clients",
        "2",
        "--duration",
        "1",
        "--nodes",
        "3",
    ]);
    let rows = m
        .as_array()
        .expect("one row per cluster size and client count");
    assert_eq!(rows.len(), 2, "{m}");
    assert!(rows
        .iter()
        .all(|r| r["registrations_per_s"].as_f64().unwrap() > 0.0));
    let f = node_bench(&["bench", "failover", "--drills", "1"]);
    assert_eq!(figure(&f, "writes_lost"), 0, "{f}");
    assert_eq!(figure(&f, "drills"), 1, "{f}");
}

#[test]
fn the_lineage_benchmark_runs_at_toy_size() {
    let r = node_bench(&[
        "bench",
        "lineage",
        "--versions",
        "300",
        "--edges",
        "3000",
        "--queries",
        "50",
    ]);
    assert_eq!(figure(&r, "versions"), 300, "{r}");
    assert_eq!(figure(&r, "edges"), 3000, "{r}");
    for key in [
        "impact_ms_p99",
        "point_read_ms_p99",
        "p99_ratio",
        "impact_nodes_mean",
    ] {
        assert!(figure(&r, key).as_f64().unwrap() > 0.0, "{key} in {r}");
    }
    // Too few edges for the registrations' own is refused, naming the flag.
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(NODE)
        .args(["bench", "lineage", "--versions", "10", "--edges", "5"])
        .arg("--scratch-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--edges 5 is fewer than the 40"),
        "{stderr}"
    );
}

#[test]
fn the_search_benchmark_runs_at_toy_size() {
    let r = node_bench(&["bench", "search", "--models", "400", "--queries", "80"]);
    assert_eq!(figure(&r, "models"), 400, "{r}");
    for key in [
        "search_ms_p99",
        "point_read_ms_p99",
        "p99_ratio",
        "hits_mean",
    ] {
        assert!(figure(&r, key).as_f64().unwrap() > 0.0, "{key} in {r}");
    }
    let shapes = figure(&r, "shapes").as_array().unwrap();
    assert_eq!(shapes.len(), 8, "every query shape was measured: {r}");
}

#[test]
fn the_promotion_benchmark_runs_at_toy_size() {
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(NODE, &tmp.path().join("node")).unwrap();
    let r = quiver(
        CLI,
        &node.endpoint,
        &[
            "bench",
            "promotion",
            "--promotions",
            "3",
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(figure(&r, "promotions"), 3, "{r}");
    for key in [
        "gated_ms_p50",
        "approval_ms_p50",
        "plain_ms_p50",
        "p50_ratio",
    ] {
        assert!(figure(&r, key).as_f64().unwrap() > 0.0, "{key} in {r}");
    }
}

#[test]
fn the_rollback_benchmark_runs_at_toy_size() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = quiver_tests::start_cluster(NODE, tmp.path(), 3).unwrap();
    let r = quiver(
        CLI,
        &nodes[0].endpoint,
        &[
            "bench",
            "rollback",
            "--agents",
            "4",
            "--rollbacks",
            "3",
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(figure(&r, "agents"), 4, "{r}");
    assert_eq!(figure(&r, "rollbacks"), 3, "{r}");
    for key in ["rollback_ms_p99", "step_ms_p99"] {
        assert!(figure(&r, key).as_f64().unwrap() >= 0.0, "{key} in {r}");
    }
    assert!(figure(&r, "call_ms_p50").as_f64().unwrap() > 0.0, "{r}");
    for agents in ["0", "201"] {
        let refused = quiver(
            CLI,
            &nodes[0].endpoint,
            &["bench", "rollback", "--agents", agents],
        )
        .err();
        assert!(refused.contains("use 1 to 200 agents"), "{refused}");
    }
}

#[test]
fn the_agent_overhead_benchmark_runs_at_toy_size() {
    let r = quiver(
        CLI,
        "https://127.0.0.1:1",
        &[
            "bench",
            "agent-overhead",
            "--requests",
            "200",
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(figure(&r, "requests"), 200, "{r}");
    for key in ["parse_us_p50", "agent_us_p50", "agent_us_p99", "p99_ratio"] {
        assert!(figure(&r, key).as_f64().unwrap() > 0.0, "{key} in {r}");
    }
}

#[test]
fn the_model_load_benchmark_runs_at_toy_size() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = quiver_tests::start_cluster(NODE, tmp.path(), 1).unwrap();
    let r = quiver(
        CLI,
        &nodes[0].endpoint,
        &["bench", "model-load", "--size-mib", "2", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(figure(&r, "size_bytes"), 2 << 20, "{r}");
    for key in ["load_ms", "raw_write_fsync_ms", "runtime_load_ms", "ratio"] {
        assert!(figure(&r, key).as_f64().unwrap() > 0.0, "{key} in {r}");
    }
    let refused = quiver(
        CLI,
        &nodes[0].endpoint,
        &["bench", "model-load", "--size-mib", "0"],
    )
    .err();
    assert!(refused.contains("--size-mib 0"), "{refused}");
}

#[test]
fn the_tls_floor_benchmark_runs_at_toy_size_and_refuses_out_of_range_counts() {
    let run = |args: &[&str]| {
        std::process::Command::new(NODE)
            .args(["bench", "tls-floor"])
            .args(args)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    let out = run(&["--calls", "50", "--rounds", "2", "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["plaintext_us_p50", "tls_us_p50"] {
        assert!(figure(&r, key).as_f64().unwrap() > 0.0, "{key} in {r}");
    }
    assert_eq!(figure(&r, "tls_rounds_us").as_array().unwrap().len(), 2);
    for bad in [
        &["--calls", "0"][..],
        &["--rounds", "0"],
        &["--calls", "1000001"],
        &["--rounds", "101"],
        &["--calls=-1"],
        &["--calls", "99999999999999999999999"],
        &["--output", "xml", "--calls", "1", "--rounds", "1"],
    ] {
        let out = run(bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(
            stderr.contains("--calls")
                || stderr.contains("--output")
                || stderr.contains("--rounds"),
            "{bad:?}: {stderr}"
        );
    }
}
