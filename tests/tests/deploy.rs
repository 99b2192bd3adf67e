//! Deployments end to end (issue 15), on a real 3-node cluster driven by the real CLI, through
//! followers as well as the leader: an endpoint is created on the Production version; a rollout
//! moves its traffic shadow → 5% → 100%, each move refused while the version's stage does not
//! allow it; a rollback returns all traffic to the version that served before (Archived by then:
//! it needs no stage) and the history names who, why and when; a watch of the endpoint hears
//! every change; the lineage impact of the new version reaches the endpoint; a reader may look
//! but not route traffic, and a refusal changes nothing.

use std::path::Path;
use std::time::Duration;

use quiver_client::proto::WatchRequest;
use quiver_tests::{
    connect, create_token, http_get, quiver, quiver_as, register_version, start_cluster,
    write_random_file,
};

const NODE: &str = env!("CARGO_BIN_EXE_e2e-quiver-node");
const CLI: &str = env!("CARGO_BIN_EXE_e2e-quiver");
const DEADLINE: Duration = Duration::from_secs(60);

fn register(endpoint: &str, dir: &Path, seed: u64) {
    let file = dir.join(format!("weights-{seed}.bin"));
    write_random_file(&file, 4096, seed).unwrap();
    register_version(CLI, endpoint, "reco", &[&file]).ok();
}

fn status(endpoint: &str) -> serde_json::Value {
    quiver(
        CLI,
        endpoint,
        &["deploy", "status", "reco-prod", "--output", "json"],
    )
    .ok()
    .json()
}

fn split(status: &serde_json::Value) -> Vec<(u64, u64)> {
    status["split"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["version"].as_u64().unwrap(),
                s["percent"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_moves_traffic_step_by_step_and_a_rollback_returns_it_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(NODE, dir.path(), 3).unwrap();
    let (a, b, c) = (
        nodes[0].endpoint.clone(),
        nodes[1].endpoint.clone(),
        nodes[2].endpoint.clone(),
    );
    quiver(
        CLI,
        &a,
        &["model", "create", "reco", "--namespace", "search"],
    )
    .ok();
    register(&a, dir.path(), 1);
    register(&a, dir.path(), 2);
    let stage = |ep: &str, reference: &str, stage: &str| {
        quiver(
            CLI,
            ep,
            &["stage", "set", reference, stage, "--reason", "test"],
        )
        .ok();
    };
    stage(&a, "reco/1", "production");

    // Only a Production version takes all traffic.
    let refused = quiver(
        CLI,
        &b,
        &["deploy", "create", "reco-prod", "--version", "reco/2"],
    )
    .err();
    assert!(
        refused.contains("reco/2 is in experimental") && refused.contains("quiver stage set"),
        "{refused}"
    );
    let created = quiver(
        CLI,
        &b,
        &[
            "deploy",
            "create",
            "reco-prod",
            "--version",
            "reco:production",
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(split(&created), [(1, 100)]);

    // A watch of the endpoint, on the third node.
    let mut watch = connect(&c)
        .await
        .unwrap()
        .watch(WatchRequest {
            endpoint: "reco-prod".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let start = watch.message().await.unwrap().unwrap().revision;

    // A Staging version may be a shadow and a canary, not all traffic.
    stage(&a, "reco/2", "staging");
    // Steps of an hour: the controller leaves them be, and an approver moves them by hand.
    let plan = "shadow:1h,5%:1h,100%";
    let started = quiver(
        CLI,
        &c,
        &[
            "deploy",
            "rollout",
            "reco-prod",
            "--version",
            "reco/2",
            "--plan",
            plan,
            "--reason",
            "canary v2",
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(split(&started), [(1, 100)]);
    assert_eq!(started["shadows"], serde_json::json!([2]));
    assert_eq!(started["rollout"]["step"], 1);
    let text = quiver(CLI, &a, &["deploy", "status", "reco-prod"])
        .ok()
        .stdout;
    assert!(text.contains("step 1 of 3 (shadow 1h)"), "{text}");
    quiver(CLI, &b, &["deploy", "advance", "reco-prod"]).ok();
    assert_eq!(split(&status(&a)), [(1, 95), (2, 5)]);
    // A stale advance (step 1 again) moves nothing.
    let stale = quiver(
        CLI,
        &a,
        &["deploy", "advance", "reco-prod", "--from-step", "1"],
    )
    .err();
    assert!(stale.contains("step 2 is in force"), "{stale}");
    let refused = quiver(CLI, &a, &["deploy", "advance", "reco-prod"]).err();
    assert!(
        refused.contains("only a version in Production"),
        "{refused}"
    );
    assert_eq!(split(&status(&c)), [(1, 95), (2, 5)]);
    stage(&b, "reco/2", "production");
    let done = quiver(
        CLI,
        &a,
        &["deploy", "advance", "reco-prod", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(split(&done), [(2, 100)]);
    assert!(done["rollout"].is_null());
    assert_eq!(done["previous"], 1);

    // A reader may look but not route traffic; the refusal changes nothing.
    quiver(
        CLI,
        &a,
        &["role", "grant", "viewer", "reader", "--namespace", "search"],
    )
    .ok();
    let viewer = create_token(CLI, &a, "viewer", None);
    let denied = quiver_as(
        CLI,
        &b,
        Some(&viewer),
        &["deploy", "rollback", "reco-prod", "--reason", "mine"],
    )
    .err();
    assert!(
        denied.contains("viewer") && denied.contains("approver"),
        "{denied}"
    );
    let seen = quiver_as(
        CLI,
        &b,
        Some(&viewer),
        &["deploy", "status", "reco-prod", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(seen["generation"], done["generation"]);

    // Rollback: back to reco/1, which is Archived now, with who and why in the history.
    let back = quiver(
        CLI,
        &c,
        &[
            "deploy",
            "rollback",
            "reco-prod",
            "--reason",
            "error rate 4%",
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(split(&back), [(1, 100)]);
    let history = quiver(
        CLI,
        &a,
        &["deploy", "history", "reco-prod", "--output", "json"],
    )
    .ok()
    .json();
    let kinds: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "rollback",
            "rollout_complete",
            "rollout_step",
            "rollout_start",
            "create"
        ]
    );
    assert_eq!(history[0]["reason"], "error rate 4%");
    assert!(history[0]["principal"]
        .as_str()
        .unwrap()
        .starts_with("admin"));
    assert!(history[0]["at_ms"].as_i64().unwrap() > 0);
    let list = quiver(CLI, &b, &["deploy", "list", "--output", "json"])
        .ok()
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1);

    // The watch heard the four changes made after it started.
    let mut heard = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while heard.len() < 4 {
            let batch = watch.message().await.unwrap().unwrap();
            heard.extend(batch.events);
        }
    })
    .await
    .expect("the endpoint's watch heard its changes");
    assert_eq!(heard.len(), 4, "{heard:?}");
    assert!(heard
        .iter()
        .all(|e| e.kind == "deployment" && e.endpoint == "reco-prod"));
    assert!(heard.iter().all(|e| e.revision > start));

    // Lineage: the new version's impact reaches the endpoint.
    let impact = quiver(
        CLI,
        &a,
        &["lineage", "impact", "version:reco/2", "--output", "json"],
    )
    .ok()
    .stdout;
    assert!(impact.contains("deployment:reco-prod"), "{impact}");
    // And the audit log names the rollback with its reason.
    let audit = quiver(CLI, &a, &["audit", "log", "--model", "reco"])
        .ok()
        .stdout;
    assert!(
        audit.contains("rollback") && audit.contains("error rate 4%"),
        "{audit}"
    );
}

#[test]
fn a_node_serves_prometheus_metrics_of_its_own_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node-1");
    let d = data.display().to_string();
    let node = quiver_tests::NodeProcess::spawn(
        NODE,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &d,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &data,
    )
    .unwrap();
    let ep = node.endpoint.clone();
    let log = std::fs::read_to_string(data.with_extension("stderr.log")).unwrap_or_default();
    quiver(CLI, &ep, &["model", "create", "reco"]).ok();
    register(&ep, dir.path(), 1);
    let addr = node
        .metrics_addr
        .clone()
        .unwrap_or_else(|| panic!("serve prints its metrics address; stderr: {log}"));
    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    for line in [
        r#"quiver_raft_term{node="1"} "#,
        r#"quiver_raft_is_leader{node="1"} 1"#,
        r#"version_count{node="1"} 1"#,
        r#"quiver_rpc_requests_total{node="1",method="/quiver.v1.Models/CreateModel",code="0"} 1"#,
        r#"quiver_rpc_latency_ms_bucket{node="1",method="/quiver.v1.Versions/RegisterVersion""#,
    ] {
        assert!(body.contains(line), "{line} missing from:\n{body}");
    }
    let long = format!("/{}", "a".repeat(100_000));
    // A query is ignored.
    assert_eq!(http_get(&addr, "/metrics?x=%ff%00").0, 200);
    // The root leads a browser to the web UI.
    assert_eq!(http_get(&addr, "/").0, 303);
    for path in [
        "/metrics/../etc/passwd",
        "/%00",
        "/metrics/x",
        long.as_str(),
    ] {
        let (status, _) = http_get(&addr, path);
        assert!(
            matches!(status, 400 | 404 | 414 | 431),
            "a path of {} bytes: {status}",
            path.len()
        );
    }
    // The node still serves.
    quiver(CLI, &ep, &["model", "create", "after"]).ok();
    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains(r#"method="/quiver.v1.Models/CreateModel",code="0"} 2"#),
        "{body}"
    );
}

/// Polls `check` until it holds or the deadline passes.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_moves_a_rollout_on_and_reports_out_of_bounds_roll_it_back() {
    use quiver_client::proto::VersionServingStats;
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(NODE, dir.path(), 3).unwrap();
    let (a, b) = (nodes[0].endpoint.clone(), nodes[1].endpoint.clone());
    quiver(CLI, &a, &["model", "create", "reco"]).ok();
    register(&a, dir.path(), 1);
    register(&a, dir.path(), 2);
    let stage = |reference: &str, stage: &str| {
        quiver(
            CLI,
            &a,
            &["stage", "set", reference, stage, "--reason", "test"],
        )
        .ok();
    };
    stage("reco/1", "production");
    stage("reco/2", "staging");
    quiver(
        CLI,
        &a,
        &["deploy", "create", "reco-prod", "--version", "reco/1"],
    )
    .ok();
    quiver(
        CLI,
        &b,
        &[
            "deploy",
            "rollout",
            "reco-prod",
            "--version",
            "reco/2",
            "--plan",
            "5%:1s,25%:1s,100%",
        ],
    )
    .ok();
    // The leader's controller takes step 2 by itself, and waits at 25%: reco/2 is in Staging.
    wait_until("the controller moves to 25%", || {
        split(&status(&a)) == [(1, 75), (2, 25)]
    });
    let history = quiver(
        CLI,
        &a,
        &["deploy", "history", "reco-prod", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(history[0]["kind"], "rollout_step");
    assert!(
        history[0]["principal"]
            .as_str()
            .unwrap()
            .starts_with("node:"),
        "{history}"
    );
    // Agents report through a follower: errors over the bound roll it back at once.
    let generation = status(&b)["generation"].as_u64().unwrap();
    let client = connect(&b).await.unwrap();
    let fine = client
        .report_serving(
            "reco-prod",
            "agent-eu-1",
            generation,
            vec![VersionServingStats {
                version: 2,
                requests: 100,
                errors: 0,
                p99_ms: 12.0,
            }],
        )
        .await
        .unwrap();
    assert!(!fine.rolled_back);
    let breach = client
        .report_serving(
            "reco-prod",
            "agent-us-1",
            generation,
            vec![VersionServingStats {
                version: 2,
                requests: 100,
                errors: 9,
                p99_ms: 15.0,
            }],
        )
        .await
        .unwrap();
    assert!(breach.rolled_back, "{breach:?}");
    assert_eq!(split(&status(&a)), [(1, 100)]);
    let history = quiver(
        CLI,
        &a,
        &["deploy", "history", "reco-prod", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(history[0]["kind"], "rollback");
    let reason = history[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("automatic: reco/2 at step 2 of 3 (25% 1s): error rate 4.50% > 1%"),
        "{reason}"
    );

    // Promoted, the next rollout runs to the end without anyone.
    stage("reco/2", "production");
    quiver(
        CLI,
        &a,
        &[
            "deploy",
            "rollout",
            "reco-prod",
            "--version",
            "reco/2",
            "--plan",
            "shadow:500ms,100%",
        ],
    )
    .ok();
    wait_until("the controller completes the rollout", || {
        split(&status(&b)) == [(2, 100)]
    });
    // Bad reports are refused naming the field.
    let e = client
        .report_serving(
            "reco-prod",
            "agent-eu-1",
            generation,
            vec![VersionServingStats {
                version: 2,
                requests: 1,
                errors: 2,
                p99_ms: f64::NAN,
            }],
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("stats"), "{e}");
}
