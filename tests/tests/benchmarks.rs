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
