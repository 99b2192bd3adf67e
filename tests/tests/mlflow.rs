//! The real `mlflow` Python client against a 3-node cluster (issue 16, must-show 1): the
//! script `tests/mlflow/e2e.py` logs a `PythonModel` with `registered_model_name`, sets an
//! alias, loads `models:/name@alias` and checks its predictions, creates, gets and searches
//! models in pages, meets a stage transition refused by a gate and one allowed, and the error
//! codes the client acts on. It talks to a follower's HTTP address with the admin's token.
//!
//! The interpreter is `QUIVER_MLFLOW_PYTHON` (`.ci/run` makes a virtual environment with the
//! pinned client of `tests/mlflow/requirements.txt`). Without it the test says so in one line
//! and passes, unless `QUIVER_REQUIRE_MLFLOW=1` (set by `.ci/run`), when it fails.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use quiver_tests::{quiver, start_http_cluster, state_digests};

const NODE: &str = env!("CARGO_BIN_EXE_e2e-quiver-node");
const CLI: &str = env!("CARGO_BIN_EXE_e2e-quiver");
/// The script's own bound: MLflow's client waits up to 5 minutes for a version to be READY and
/// retries 5xx for minutes; a correct node answers each call at once.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// The interpreter with the `mlflow` client, or why the test does not run.
fn python() -> Option<String> {
    match std::env::var("QUIVER_MLFLOW_PYTHON") {
        Ok(path) if !path.is_empty() => Some(path),
        _ => {
            assert!(
                std::env::var("QUIVER_REQUIRE_MLFLOW").as_deref() != Ok("1"),
                "QUIVER_REQUIRE_MLFLOW=1 but QUIVER_MLFLOW_PYTHON is not set: point it at a \
                 Python with the packages of tests/mlflow/requirements.txt"
            );
            println!(
                "skipped: the real-mlflow-client test needs QUIVER_MLFLOW_PYTHON=<python with \
                 tests/mlflow/requirements.txt installed> (bash .ci/run sets it up)"
            );
            None
        }
    }
}

/// Runs `python script` with `envs`, killed after [`SCRIPT_TIMEOUT`]; (success, output).
fn run_script(python: &str, script: &Path, envs: &[(&str, String)]) -> (bool, String) {
    let out_path = tempfile::NamedTempFile::new().unwrap();
    let out = out_path.reopen().unwrap();
    let err = out.try_clone().unwrap();
    let mut command = Command::new(python);
    command
        .arg(script)
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        .env_remove("MLFLOW_TRACKING_USERNAME")
        .env_remove("MLFLOW_TRACKING_PASSWORD")
        .stdout(out)
        .stderr(err);
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start the Python interpreter");
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(out_path.path()).unwrap_or_default();
    match status {
        Some(status) => (status.success(), output),
        None => (
            false,
            format!("{output}\n(killed after {SCRIPT_TIMEOUT:?})"),
        ),
    }
}

#[test]
fn the_real_mlflow_client_logs_registers_loads_and_searches_through_a_follower() {
    let Some(python) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_http_cluster(NODE, tmp.path(), 3).unwrap();
    let admin = nodes[0].token().expect("the founder's admin token");
    // Staging in namespace `default` (where MLflow's models go) needs the version's lineage.
    let policy = tmp.path().join("policy.json");
    std::fs::write(
        &policy,
        serde_json::json!({
            "staging": [{"kind": "required_metadata", "fields": ["code_commit", "run_id"]}],
            "production": [],
        })
        .to_string(),
    )
    .unwrap();
    let file = policy.display().to_string();
    quiver(
        CLI,
        &nodes[0].endpoint,
        &["policy", "set", "--namespace", "default", "--file", &file],
    )
    .ok();
    let follower = nodes[2]
        .metrics_addr
        .clone()
        .expect("node 3 serves HTTP (--metrics-listen)");
    let ca = quiver_tests::ca_for(&nodes[1].endpoint).expect("the cluster's CA file");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mlflow/e2e.py");
    let started = Instant::now();
    let (ok, output) = run_script(
        &python,
        &script,
        &[
            ("MLFLOW_TRACKING_URI", format!("http://{follower}")),
            ("MLFLOW_TRACKING_TOKEN", admin),
            // HTTPS on another node's API port (ALPN HTTP/1.1), verified with the cluster CA.
            ("QUIVER_HTTPS_URI", nodes[1].endpoint.clone()),
            ("QUIVER_CA", ca.display().to_string()),
        ],
    );
    println!("{output}");
    println!("the mlflow script took {:?}", started.elapsed());
    assert!(ok, "the mlflow script failed:\n{output}");
    assert!(output.contains("mlflow e2e: all steps passed"), "{output}");
    // What the client did went through Raft: every node holds the same state.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let digests = state_digests(CLI, &nodes);
        if digests.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(Instant::now() < deadline, "nodes disagree: {digests:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
