//! Governance end to end (issue 14, must-show 1, 3 and 4) on real nodes driven by the
//! real CLI: reco-model v14 (NDCG@10 0.42 against v13's 0.40) is auto-promoted to Staging by an
//! evaluation pipeline's token; Production needs a fairness evaluation and one approval; the
//! registrant cannot approve; a reviewer approves after the fairness evaluation, v14 becomes
//! Production and v13 is archived; the gates give the same answer through every node; a policy
//! change mid-review voids the approval given; every node's audit chain verifies, and a record
//! altered on a stopped node's disk is detected and named. And on one node: a breaking
//! signature refused at promotion, an approver's override accepted and audited, and the catalog
//! finding the model and what its Production version was trained on.
//!
//! Waiting is on a condition with a deadline, never a fixed sleep.

use std::path::Path;
use std::time::{Duration, Instant};

use quiver_tests::{
    alter_state_files, create_token, offline_audit_verify, quiver, quiver_as, start_cluster,
    state_digests, write_random_file, NodeProcess,
};

const NODE: &str = env!("CARGO_BIN_EXE_e2e-quiver-node");
const CLI: &str = env!("CARGO_BIN_EXE_e2e-quiver");
const DEADLINE: Duration = Duration::from_secs(60);
/// The reviewer's comment: no other text in the state holds it, so its bytes on disk are found
/// alone.
const COMMENT: &str = "fairness-reviewed-5e2a";

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn settled(nodes: &[NodeProcess]) -> String {
    let mut last = Vec::new();
    wait_until("every node applied the same log", || {
        last = state_digests(CLI, nodes);
        last.windows(2).all(|w| w[0] == w[1])
    });
    last[0].clone()
}

/// `quiver stage check REFERENCE production` through every node, as JSON.
fn gate_reports(nodes: &[NodeProcess], token: &str, reference: &str) -> Vec<serde_json::Value> {
    nodes
        .iter()
        .map(|n| {
            quiver_as(
                CLI,
                &n.endpoint,
                Some(token),
                &[
                    "stage",
                    "check",
                    reference,
                    "production",
                    "--output",
                    "json",
                ],
            )
            .ok()
            .json()
        })
        .collect()
}

fn show(ep: &str, token: &str, reference: &str) -> serde_json::Value {
    quiver_as(
        CLI,
        ep,
        Some(token),
        &["version", "show", reference, "--output", "json"],
    )
    .ok()
    .json()
}

fn register(ep: &str, token: &str, file: &Path, ndcg: Option<&str>) -> String {
    let path = file.display().to_string();
    let mut args = vec![
        "version",
        "register",
        "reco-model",
        "--artifact",
        &path,
        "--data-snapshot",
        "snap-47",
        "--code-commit",
        "9f1c2e",
        "--run-id",
        "run-88",
        "--output",
        "json",
    ];
    let metric;
    if let Some(ndcg) = ndcg {
        metric = format!("ndcg@10={ndcg}");
        args.extend(["--metric", &metric]);
    }
    quiver_as(CLI, ep, Some(token), &args).ok().json()["reference"]
        .as_str()
        .expect("a reference")
        .to_string()
}

fn policy(approvals: u32, tolerance: f64) -> String {
    serde_json::json!({
        "staging": [
            {"kind": "required_metadata", "fields": ["data_snapshot", "code_commit", "run_id"]},
            {"kind": "metric", "metric": "ndcg@10", "op": ">=", "production_delta": 0.005,
             "tolerance": tolerance}
        ],
        "production": [
            {"kind": "evaluation", "eval_kind": "fairness",
             "bounds": [{"metric": "dp_gap", "op": "<=", "value": 0.05}]},
            {"kind": "approvals", "count": approvals, "role": "approver"}
        ],
        "auto_promote": true
    })
    .to_string()
}

#[test]
fn the_seed_scenario_promotes_through_gates_and_four_eyes_and_the_audit_chain_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(NODE, tmp.path(), 3).unwrap();
    let leader = nodes[0].endpoint.clone();
    let follower = nodes[2].endpoint.clone();

    // The admin sets the scene: a high-risk model, a trainer (who registers, and also holds the
    // approver role: four eyes must refuse it anyway), an evaluation pipeline, a reviewer.
    quiver(
        CLI,
        &leader,
        &[
            "model",
            "create",
            "reco-model",
            "--namespace",
            "search",
            "--risk-tier",
            "high",
        ],
    )
    .ok();
    for (principal, role) in [
        ("trainer", "approver"),
        ("eval-pipeline", "registrant"),
        ("reviewer", "approver"),
    ] {
        quiver(
            CLI,
            &leader,
            &["role", "grant", principal, role, "--namespace", "search"],
        )
        .ok();
    }
    let trainer = create_token(CLI, &leader, "trainer", None);
    let evaluator = create_token(CLI, &leader, "eval-pipeline", None);
    let reviewer = create_token(CLI, &leader, "reviewer", None);
    let admin = quiver_tests::token_for(&leader).expect("the admin token");

    let weights = tmp.path().join("w.bin");
    write_random_file(&weights, 8 << 10, 13).unwrap();
    let v13 = register(&leader, &trainer, &weights, Some("0.40"));
    assert_eq!(v13, "reco-model/1");
    quiver_as(
        CLI,
        &leader,
        Some(&admin),
        &[
            "stage",
            "set",
            &v13,
            "production",
            "--reason",
            "first model",
        ],
    )
    .ok();

    // The policy of the namespace's high-risk models.
    let policy_file = tmp.path().join("policy.json");
    std::fs::write(&policy_file, policy(1, 0.0)).unwrap();
    let file = policy_file.display().to_string();
    quiver(
        CLI,
        &leader,
        &[
            "policy",
            "set",
            "--namespace",
            "search",
            "--tier",
            "high",
            "--file",
            &file,
        ],
    )
    .ok();
    let effective = quiver(
        CLI,
        &follower,
        &[
            "policy",
            "show",
            "--model",
            "reco-model",
            "--effective",
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(
        effective["scope"], "policy of namespace search, High risk",
        "{effective}"
    );
    // A registrant may not set policies.
    let e = quiver_as(
        CLI,
        &follower,
        Some(&evaluator),
        &["policy", "set", "--model", "reco-model", "--file", &file],
    )
    .err();
    assert!(e.contains("admin"), "{e}");

    // v14, evaluated: NDCG@10 0.42 against Production's 0.40 + 0.005: auto-promoted.
    write_random_file(&weights, 8 << 10, 14).unwrap();
    let v14 = register(&leader, &trainer, &weights, None);
    let recorded = quiver_as(
        CLI,
        &follower,
        Some(&evaluator),
        &[
            "version",
            "eval",
            &v14,
            "--kind",
            "offline",
            "--metric",
            "ndcg@10=0.42",
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(recorded["promoted"], true, "{recorded}");
    assert_eq!(recorded["version"]["stage"], "staging");
    let staged = show(&leader, &reviewer, &v14);
    let transition = &staged["stage_history"][1];
    assert_eq!(transition["actor"], "eval-pipeline", "{staged}");
    assert_eq!(transition["gate_report"]["passed"], true, "{staged}");

    // Production: refused while fairness is missing, naming the gate and the fix.
    let e = quiver_as(
        CLI,
        &leader,
        Some(&reviewer),
        &["stage", "set", &v14, "production", "--reason", "beats v13"],
    )
    .err();
    assert!(
        e.contains("fairness") && e.contains("quiver version eval"),
        "{e}"
    );
    // The gates give the same answer through every node.
    let reports = gate_reports(&nodes, &reviewer, &v14);
    assert!(reports.windows(2).all(|w| w[0] == w[1]), "{reports:?}");
    assert_eq!(reports[0]["passed"], false);

    let report_file = tmp.path().join("fairness.html");
    std::fs::write(&report_file, "<p>dp_gap 0.02</p>").unwrap();
    let report = report_file.display().to_string();
    quiver_as(
        CLI,
        &follower,
        Some(&evaluator),
        &[
            "version",
            "eval",
            &v14,
            "--kind",
            "fairness",
            "--metric",
            "dp_gap=0.02",
            "--report",
            &report,
        ],
    )
    .ok();
    let evals = quiver_as(
        CLI,
        &leader,
        Some(&reviewer),
        &["version", "evaluations", &v14, "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(evals.as_array().unwrap().len(), 2);
    assert!(evals[1]["summary"]
        .as_str()
        .unwrap()
        .starts_with("report fairness.html blake3:"));

    // Now only the approval is missing: the stage change opens a review.
    let out = quiver_as(
        CLI,
        &leader,
        Some(&reviewer),
        &["stage", "set", &v14, "production", "--reason", "beats v13"],
    )
    .ok();
    assert!(out.stdout.contains("review #1"), "{}", out.stdout);
    let pending = show(&follower, &reviewer, &v14);
    assert_eq!(pending["stage"], "staging");
    assert_eq!(pending["pending_review"]["id"], 1, "{pending}");
    let queue = quiver_as(
        CLI,
        &follower,
        Some(&reviewer),
        &["review", "list", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(queue.as_array().unwrap().len(), 1, "{queue}");

    // The registrant may not approve, even holding the approver role; nothing changes.
    let before = settled(&nodes);
    let e = quiver_as(
        CLI,
        &follower,
        Some(&trainer),
        &["review", "approve", "1", "--comment", "lgtm"],
    )
    .err();
    assert!(e.contains("four eyes") && e.contains("trainer"), "{e}");
    assert_eq!(settled(&nodes), before);

    // The reviewer approves through a follower: v14 is Production, v13 archived.
    let approved = quiver_as(
        CLI,
        &follower,
        Some(&reviewer),
        &[
            "review",
            "approve",
            "1",
            "--comment",
            COMMENT,
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(approved["review"]["state"], "promoted", "{approved}");
    assert_eq!(approved["version"]["stage"], "production");
    let live = show(&leader, &reviewer, "reco-model:production");
    assert_eq!(live["reference"], v14.as_str());
    let last = live["stage_history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["actor"], "reviewer");
    assert_eq!(last["gate_report"]["passed"], true, "{last}");
    assert!(last["gate_report"]["gates"][1]["detail"]
        .as_str()
        .unwrap()
        .contains("reviewer"));
    assert_eq!(show(&leader, &reviewer, &v13)["stage"], "archived");

    // A policy change mid-review voids the approval given: v15 needs two approvals; one is
    // given, then the model's policy changes.
    std::fs::write(&policy_file, policy(2, 0.0)).unwrap();
    quiver(
        CLI,
        &leader,
        &["policy", "set", "--model", "reco-model", "--file", &file],
    )
    .ok();
    write_random_file(&weights, 8 << 10, 15).unwrap();
    let v15 = register(&leader, &trainer, &weights, None);
    for (kind, metric) in [("offline", "ndcg@10=0.43"), ("fairness", "dp_gap=0.01")] {
        quiver_as(
            CLI,
            &leader,
            Some(&evaluator),
            &["version", "eval", &v15, "--kind", kind, "--metric", metric],
        )
        .ok();
    }
    quiver_as(
        CLI,
        &leader,
        Some(&reviewer),
        &["stage", "set", &v15, "production", "--reason", "next"],
    )
    .ok();
    let waiting = quiver_as(
        CLI,
        &leader,
        Some(&reviewer),
        &["review", "approve", "2", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(waiting["review"]["state"], "open", "{waiting}");
    assert_eq!(waiting["review"]["approvals"].as_array().unwrap().len(), 1);
    std::fs::write(&policy_file, policy(2, 0.001)).unwrap();
    quiver(
        CLI,
        &follower,
        &["policy", "set", "--model", "reco-model", "--file", &file],
    )
    .ok();
    let voided = quiver_as(
        CLI,
        &follower,
        Some(&reviewer),
        &["review", "show", "2", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(voided["approvals"].as_array().unwrap().len(), 0, "{voided}");
    assert!(voided["voided"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("policy changed"));
    assert_eq!(voided["voided"][0]["approvals"][0]["principal"], "reviewer");
    // And the gates agree on every node about it.
    let reports = gate_reports(&nodes, &reviewer, &v15);
    assert!(reports.windows(2).all(|w| w[0] == w[1]), "{reports:?}");

    // The audit log names who did what; every node's chain verifies.
    let log = quiver(
        CLI,
        &leader,
        &["audit", "log", "--model", "reco-model", "--output", "json"],
    )
    .ok()
    .json();
    let approval = log
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "approve_review" && r["principal"] == "reviewer")
        .expect("the approval is audited")
        .clone();
    assert_eq!(approval["reason"], COMMENT);
    let approval_seq = approval["seq"].as_u64().unwrap();
    settled(&nodes);
    for n in &nodes {
        let verdict = quiver(CLI, &n.endpoint, &["audit", "verify", "--output", "json"])
            .ok()
            .json();
        assert!(
            verdict["count"].as_u64().unwrap() > approval_seq,
            "{verdict}"
        );
    }

    // A record altered on a stopped node's disk is detected and named.
    let stopped = nodes.pop().unwrap();
    let dir = stopped.data_dir.clone();
    stopped.stop().unwrap();
    let (intact, stderr) = offline_audit_verify(NODE, &dir);
    assert!(intact, "{stderr}");
    let altered = alter_state_files(&dir, COMMENT.as_bytes(), b"fairness-reviewed-5e2b");
    assert!(altered > 0, "the comment is in the state env");
    let (intact, stderr) = offline_audit_verify(NODE, &dir);
    assert!(!intact);
    assert!(
        stderr.contains(&format!("broken at record {approval_seq}")) && stderr.contains("altered"),
        "{stderr}"
    );
    for node in nodes {
        node.stop().unwrap();
    }
}

fn signature(input: &str) -> String {
    serde_json::json!({
        "inputs": [{"name": input, "dtype": "float32", "shape": [-1, 4]}],
        "outputs": [{"name": "score", "dtype": "float32", "shape": [-1]}]
    })
    .to_string()
}

/// Must-show 3 through the CLI: a version whose signature breaks callers of the Production
/// version is refused at promotion, naming the break and the fix; a registrant cannot override;
/// an approver's override is accepted, and the transition's report and the audit log name who
/// accepted it and why. Then the catalog finds the model by stage and says what its Production
/// version was trained on.
#[test]
fn a_breaking_signature_is_refused_and_an_approvers_override_is_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(NODE, &tmp.path().join("node")).unwrap();
    let ep = node.endpoint.clone();
    quiver(
        CLI,
        &ep,
        &["model", "create", "sig-model", "--namespace", "serving"],
    )
    .ok();
    for (principal, role) in [("trainer", "registrant"), ("owner", "approver")] {
        quiver(
            CLI,
            &ep,
            &["role", "grant", principal, role, "--namespace", "serving"],
        )
        .ok();
    }
    let trainer = create_token(CLI, &ep, "trainer", None);
    let owner = create_token(CLI, &ep, "owner", None);
    let policy_file = tmp.path().join("policy.json");
    std::fs::write(
        &policy_file,
        r#"{"production": [{"kind": "signature_compatible"}]}"#,
    )
    .unwrap();
    let file = policy_file.display().to_string();
    quiver(
        CLI,
        &ep,
        &["policy", "set", "--model", "sig-model", "--file", &file],
    )
    .ok();

    let register = |input: &str, seed: u64| -> String {
        let weights = tmp.path().join(format!("w{seed}.bin"));
        write_random_file(&weights, 4 << 10, seed).unwrap();
        let sig = tmp.path().join(format!("sig-{input}.json"));
        std::fs::write(&sig, signature(input)).unwrap();
        let (w, s) = (weights.display().to_string(), sig.display().to_string());
        quiver_as(
            CLI,
            &ep,
            Some(&trainer),
            &[
                "version",
                "register",
                "sig-model",
                "--artifact",
                &w,
                "--signature",
                &s,
                "--data-snapshot",
                "snap-9",
                "--code-commit",
                "abc123",
                "--run-id",
                "run-9",
                "--output",
                "json",
            ],
        )
        .ok()
        .json()["reference"]
            .as_str()
            .expect("a reference")
            .to_string()
    };
    let promote = |token: &str, reference: &str, extra: &[&str]| {
        let mut args = vec!["stage", "set", reference, "production", "--reason"];
        args.push(if extra.is_empty() {
            "ship"
        } else {
            "callers migrated to feats"
        });
        args.extend(extra);
        quiver_as(CLI, &ep, Some(token), &args)
    };

    let v1 = register("features", 1);
    promote(&owner, &v1, &[]).ok();
    let v2 = register("feats", 2);
    let refused = promote(&owner, &v2, &[]).err();
    assert!(
        refused.contains("signature_compatible") || refused.contains("signature"),
        "{refused}"
    );
    assert!(refused.contains("features"), "names the break: {refused}");
    assert!(
        refused.contains("--override-signature"),
        "names the fix: {refused}"
    );
    let by_registrant = promote(&trainer, &v2, &["--override-signature"]).err();
    assert!(
        by_registrant.contains("approver"),
        "a registrant may not override: {by_registrant}"
    );
    assert_eq!(show(&ep, &owner, &v2)["stage"], "experimental");

    promote(&owner, &v2, &["--override-signature"]).ok();
    let shown = show(&ep, &owner, &v2);
    assert_eq!(shown["stage"], "production");
    let report =
        shown["stage_history"].as_array().unwrap().last().unwrap()["gate_report"].to_string();
    assert!(
        report.contains("overridden by owner") && report.contains("callers migrated to feats"),
        "{report}"
    );
    let audit = quiver(
        CLI,
        &ep,
        &["audit", "log", "--model", "sig-model", "--output", "json"],
    )
    .ok()
    .stdout;
    assert!(
        audit.contains("overridden by owner") && audit.contains("callers migrated to feats"),
        "the audit log names who accepted the break and why: {audit}"
    );

    // The catalog: found by stage and owner of the namespace; what Production was trained on.
    let hits = quiver(
        CLI,
        &ep,
        &[
            "model",
            "search",
            "--stage",
            "production",
            "--namespace",
            "serving",
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(hits["hits"][0]["name"], "sig-model", "{hits}");
    assert_eq!(hits["hits"][0]["production_version"], 2, "{hits}");
    let none = quiver(
        CLI,
        &ep,
        &[
            "model",
            "search",
            "sig*",
            "--namespace",
            "other",
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(none["hits"].as_array().map(Vec::len), Some(0), "{none}");
    let lineage = quiver(
        CLI,
        &ep,
        &[
            "version",
            "show",
            "sig-model:production",
            "--lineage",
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(lineage["version"]["reference"], "sig-model/2", "{lineage}");
    let upstream = lineage["lineage"].to_string();
    for entity in ["data:snap-9", "code:abc123", "run:run-9"] {
        assert!(upstream.contains(entity), "{entity} in {upstream}");
    }
}
