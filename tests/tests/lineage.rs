//! Lineage end to end (issue 14, must-show 2), on a real 3-node cluster driven by the real CLI:
//! the Airbnb case — quarantining data snapshot 47 blocks the promotion of a version trained on
//! it, flags the Production version trained on it in listings and `version show`, and the impact
//! query lists both (text, JSON, DOT); the lift is audited and unblocks; roles are checked where
//! the request arrives. Then every Lineage RPC with hostile fields: each answers clearly, none
//! changes anything, and the cluster keeps working and agrees on its state.
//!
//! Waiting is on a condition with a deadline, never a fixed sleep.

use std::time::{Duration, Instant};

use quiver_client::proto::ReadConsistency;
use quiver_tests::{connect, create_token, quiver, quiver_as, write_random_file, NodeProcess};
use tonic::Code;

const NODE: &str = env!("CARGO_BIN_EXE_e2e-quiver-node");
const CLI: &str = env!("CARGO_BIN_EXE_e2e-quiver");
const DEADLINE: Duration = Duration::from_secs(60);
/// Longest error message a client should have to read.
const MESSAGE_BYTES_MAX: usize = 1024;

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_cluster(dir: &std::path::Path) -> Vec<NodeProcess> {
    let founder = NodeProcess::start(NODE, &dir.join("node-1")).unwrap();
    let founder_peer = founder.peer_addr.clone().expect("a peer address");
    let mut nodes = vec![founder];
    for id in 2..=3 {
        let data = dir.join(format!("node-{id}"));
        nodes.push(
            NodeProcess::join(NODE, &dir.join("node-1"), &founder_peer, id, &data, &[]).unwrap(),
        );
    }
    nodes
}

fn digest(ep: &str) -> String {
    quiver(CLI, ep, &["status", "--output", "json"]).ok().json()["state_digest"]
        .as_str()
        .expect("a digest")
        .to_string()
}

/// Every node applied the same commands: their digests agree.
fn wait_for_agreement(nodes: &[NodeProcess]) {
    wait_until("every node has the same state", || {
        let digests: Vec<String> = nodes.iter().map(|n| digest(&n.endpoint)).collect();
        digests.windows(2).all(|w| w[0] == w[1])
    });
}

/// Registers a version of `model` trained on data snapshot `data`; returns its reference.
fn register(ep: &str, dir: &std::path::Path, model: &str, data: &str, seed: u64) -> String {
    let weights = dir.join(format!("w-{seed}.bin"));
    write_random_file(&weights, 2 << 10, seed).unwrap();
    let path = weights.display().to_string();
    let out = quiver(
        CLI,
        ep,
        &[
            "version",
            "register",
            model,
            "--artifact",
            &path,
            "--data-snapshot",
            data,
            "--code-commit",
            "abc123",
            "--run-id",
            &format!("r-{seed}"),
            "--tag",
            "feature_set=user-features@12",
        ],
    )
    .ok()
    .stdout;
    out.lines().last().expect("a reference").trim().to_string()
}

#[test]
fn the_airbnb_case_quarantine_blocks_flags_and_the_impact_lists_both() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_cluster(tmp.path());
    let leader = nodes[0].endpoint.clone();
    let follower = nodes[1].endpoint.clone();
    quiver(
        CLI,
        &leader,
        &["model", "create", "reco", "--namespace", "search"],
    )
    .ok();
    let v1 = register(&leader, tmp.path(), "reco", "47", 1);
    let v2 = register(&follower, tmp.path(), "reco", "47", 2);
    let v3 = register(&leader, tmp.path(), "reco", "48", 3);
    assert_eq!(
        (v1.as_str(), v2.as_str(), v3.as_str()),
        ("reco/1", "reco/2", "reco/3")
    );
    quiver(
        CLI,
        &leader,
        &[
            "stage",
            "set",
            "reco/1",
            "production",
            "--reason",
            "won the A/B test",
        ],
    )
    .ok();
    // An explicit edge: the feature set was computed from snapshot 46.
    quiver(
        CLI,
        &follower,
        &["lineage", "add", "data:46", "features:user-features@12"],
    )
    .ok();

    // Roles: a registrant of the namespace may not quarantine a data snapshot (it belongs to no
    // namespace: the approver role cluster-wide is needed), nor may a reader add edges; an
    // approver of the namespace may quarantine one of its versions but not lift it (admins).
    for (principal, role) in [
        ("reg", "registrant"),
        ("appr", "approver"),
        ("rita", "reader"),
    ] {
        quiver(
            CLI,
            &leader,
            &["role", "grant", principal, role, "--namespace", "search"],
        )
        .ok();
    }
    let (reg, appr, rita) = (
        create_token(CLI, &leader, "reg", None),
        create_token(CLI, &leader, "appr", None),
        create_token(CLI, &leader, "rita", None),
    );
    let denied = quiver_as(
        CLI,
        &follower,
        Some(&reg),
        &["lineage", "quarantine", "data:47", "--reason", "x"],
    )
    .err();
    assert!(denied.contains("permission denied"), "{denied}");
    let denied = quiver_as(
        CLI,
        &follower,
        Some(&rita),
        &["lineage", "add", "run:r-9", "version:reco/3"],
    )
    .err();
    assert!(denied.contains("permission denied"), "{denied}");
    quiver_as(
        CLI,
        &follower,
        Some(&reg),
        &["lineage", "add", "run:r-9", "version:reco/3"],
    )
    .ok();
    quiver_as(
        CLI,
        &follower,
        Some(&appr),
        &[
            "lineage",
            "quarantine",
            "version:reco/3",
            "--reason",
            "bad eval",
        ],
    )
    .ok();
    let denied = quiver_as(
        CLI,
        &follower,
        Some(&appr),
        &[
            "lineage",
            "lift",
            "version:reco/3",
            "--reason",
            "fine after all",
        ],
    )
    .err();
    assert!(denied.contains("permission denied"), "{denied}");
    quiver(
        CLI,
        &leader,
        &[
            "lineage",
            "lift",
            "version:reco/3",
            "--reason",
            "fine after all",
        ],
    )
    .ok();
    let denied = quiver_as(CLI, &leader, Some(&rita), &["lineage", "impact", "data:47"]).err();
    assert!(denied.contains("permission denied"), "{denied}");
    quiver_as(
        CLI,
        &leader,
        Some(&rita),
        &["lineage", "upstream", "reco/2"],
    )
    .ok();

    // Snapshot 47 had a label leak: quarantine it, through a follower.
    quiver(
        CLI,
        &follower,
        &[
            "lineage",
            "quarantine",
            "data:47",
            "--reason",
            "label leak in snapshot 47",
        ],
    )
    .ok();

    // Promotion of the version trained on it is refused, on every path, naming the entity, the
    // reason and the fix; the version stays where it was.
    for ep in [&leader, &follower] {
        for stage in ["staging", "production"] {
            let refused = quiver(
                CLI,
                ep,
                &["stage", "set", "reco/2", stage, "--reason", "ship it"],
            )
            .err();
            assert!(
                refused.contains("data:47")
                    && refused.contains("label leak in snapshot 47")
                    && refused.contains("quiver lineage lift data:47"),
                "{refused}"
            );
        }
    }
    // A version not trained on it is free.
    quiver(
        CLI,
        &leader,
        &[
            "stage",
            "set",
            "reco/3",
            "staging",
            "--reason",
            "clean data",
        ],
    )
    .ok();

    // The Production version trained on it is flagged, in listings and in `version show`.
    let listed = quiver(
        CLI,
        &follower,
        &["version", "list", "reco", "--output", "json"],
    )
    .ok()
    .json();
    let flags: Vec<(String, usize)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let n = v["quarantined_by"].as_array().map_or(0, |q| q.len());
            (v["reference"].as_str().unwrap().to_string(), n)
        })
        .collect();
    assert_eq!(
        flags,
        [
            ("reco/1".to_string(), 1),
            ("reco/2".to_string(), 1),
            ("reco/3".to_string(), 0)
        ]
    );
    let table = quiver(CLI, &leader, &["version", "list", "reco"])
        .ok()
        .stdout;
    assert!(table.contains("production QUARANTINED"), "{table}");
    let shown = quiver(CLI, &leader, &["version", "show", "reco:production"])
        .ok()
        .stdout;
    assert!(
        shown.contains("QUARANTINED upstream: data:47 (by admin: label leak in snapshot 47)"),
        "{shown}"
    );
    let status = quiver(CLI, &leader, &["status", "--output", "json"])
        .ok()
        .json();
    assert_eq!(
        status["quarantined_in_production"],
        serde_json::json!(["reco/1 (data:47)"]),
        "{status}"
    );
    let status = quiver(CLI, &leader, &["status"]).ok().stdout;
    assert!(
        status.contains("QUARANTINED in production: reco/1 (data:47)"),
        "{status}"
    );

    // The impact query lists both, with their stages: JSON, text and DOT.
    let impact = quiver(
        CLI,
        &follower,
        &["lineage", "impact", "data:47", "--output", "json"],
    )
    .ok()
    .json();
    let versions: Vec<(String, String)> = impact["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["reference"].as_str().unwrap().to_string(),
                v["stage"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [
            ("reco/1".to_string(), "production".to_string()),
            ("reco/2".to_string(), "experimental".to_string())
        ]
    );
    assert_eq!(
        impact["nodes"][0]["quarantine"]["reason"],
        "label leak in snapshot 47"
    );
    let text = quiver(CLI, &leader, &["lineage", "impact", "data:47"])
        .ok()
        .stdout;
    assert!(
        text.contains("QUARANTINED") && text.contains("reco/1") && text.contains("production"),
        "{text}"
    );
    let dot = quiver(
        CLI,
        &leader,
        &["lineage", "impact", "data:47", "--output", "dot"],
    )
    .ok()
    .stdout;
    assert!(
        dot.starts_with("digraph lineage {")
            && dot.contains(r#""data:47" -> "version:reco/2""#)
            && dot.contains("color=red"),
        "{dot}"
    );
    // Upstream of v2: its snapshot, commit, run and feature set, and what made the feature set.
    let up = quiver(
        CLI,
        &leader,
        &["lineage", "upstream", "reco@nope", "--output", "json"],
    )
    .err();
    assert!(up.contains("alias"), "{up}");
    let up = quiver(
        CLI,
        &leader,
        &["lineage", "upstream", "reco/2", "--output", "json"],
    )
    .ok()
    .json();
    let mut names: Vec<String> = up["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["entity"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "code:abc123",
            "data:46",
            "data:47",
            "features:user-features@12",
            "run:r-2",
            "version:reco/2"
        ]
    );
    let listed = quiver(
        CLI,
        &leader,
        &["lineage", "quarantines", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["entity"], "data:47");

    // Lifting is audited with its reason, and unblocks the promotion.
    quiver(
        CLI,
        &follower,
        &[
            "lineage",
            "lift",
            "data:47",
            "--reason",
            "relabelled; leak fixed",
        ],
    )
    .ok();
    let log = quiver(CLI, &leader, &["audit", "log", "--output", "json"])
        .ok()
        .json();
    let kinds: Vec<(String, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"].as_str().is_some_and(|k| k.contains("quarantine")))
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("quarantine".into(), "label leak in snapshot 47".into()))
            && kinds.contains(&("lift_quarantine".into(), "relabelled; leak fixed".into())),
        "{kinds:?}"
    );
    quiver(
        CLI,
        &leader,
        &[
            "stage",
            "set",
            "reco/2",
            "staging",
            "--reason",
            "data fixed",
        ],
    )
    .ok();
    wait_for_agreement(&nodes);
}

fn hostile_strings() -> Vec<String> {
    vec![
        String::new(),
        " ".into(),
        "a".repeat(100_000),
        "bad\0name".into(),
        "data:bad\0name".into(),
        "data:".into(),
        format!("data:{}", "x".repeat(257)),
        "../../etc/passwd".into(),
        "data:../../etc/passwd".into(),
        "/absolute/path".into(),
        "C:\\Windows\\System32".into(),
        "version:C:\\x/1".into(),
        "модель-🚀".into(),
        "data:модель-🚀".into(),
        "\u{202e}gnp.exe".into(),
        "%s%n%x".into(),
        "reco/1".into(),
        "reco:production".into(),
        "version:reco/0".into(),
        "version:reco/18446744073709551616".into(),
        "version:reco/18446744073709551615".into(),
        "version:nope/1".into(),
        "deployment:Bad".into(),
        "features:".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lineage_rpc_answers_hostile_input_clearly_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_cluster(tmp.path());
    let ep = nodes[0].endpoint.clone();
    quiver(CLI, &ep, &["model", "create", "reco"]).ok();
    let v1 = register(&ep, tmp.path(), "reco", "47", 1);
    assert_eq!(v1, "reco/1");
    quiver(
        CLI,
        &ep,
        &["lineage", "quarantine", "data:45", "--reason", "old"],
    )
    .ok();
    let before_impact = quiver(
        CLI,
        &ep,
        &["lineage", "impact", "data:47", "--output", "json"],
    )
    .ok()
    .stdout;

    let mut problems = Vec::new();
    let mut calls = 0usize;
    let mut judge = |what: String, answer: Result<(), quiver_client::ClientError>| {
        calls += 1;
        let Err(error) = answer else { return };
        let quiver_client::ClientError::Status { code, message } = &error else {
            problems.push(format!("{what}: not a status: {error}"));
            return;
        };
        let unclear = matches!(
            code,
            Code::Internal
                | Code::Unknown
                | Code::Unimplemented
                | Code::DataLoss
                | Code::Cancelled
                | Code::Unauthenticated
                | Code::PermissionDenied
        );
        if unclear || message.trim().is_empty() || message.len() > MESSAGE_BYTES_MAX {
            let what: String = what.chars().take(80).collect();
            let shown: String = message.chars().take(200).collect();
            problems.push(format!("{what}: {code:?}: {shown}"));
        }
    };
    // Writes get only what is not an entity (a path-like or unicode id is a fine data snapshot
    // id, and is accepted: the state tests cover those); each must be refused. Reads get all.
    let not_entities: Vec<String> = hostile_strings()
        .into_iter()
        .filter(|s| quiver_node::lineage::Entity::parse("entity", s).is_err())
        .collect();
    assert!(not_entities.len() > 15, "{not_entities:?}");
    let refused = |answer: Result<(), quiver_client::ClientError>| match answer {
        Ok(()) => Err(quiver_client::ClientError::Status {
            code: Code::Internal,
            message: "accepted".into(),
        }),
        Err(e) => Err(e),
    };
    for node in &nodes {
        let c = connect(&node.endpoint).await.unwrap();
        for s in hostile_strings() {
            let label = format!("{:?}", s.chars().take(24).collect::<String>());
            judge(
                format!("upstream {label}"),
                c.lineage_upstream(&s, ReadConsistency::Linearizable)
                    .await
                    .map(drop),
            );
            judge(
                format!("impact {label}"),
                c.lineage_impact(&s, ReadConsistency::Stale).await.map(drop),
            );
            // The reason of a quarantine already in force, of a lift of what is not quarantined.
            judge(
                format!("quarantine data:45 reason {label}"),
                refused(c.quarantine("data:45", &s).await.map(drop)),
            );
            judge(
                format!("lift data:44 reason {label}"),
                refused(c.lift_quarantine("data:44", &s).await.map(drop)),
            );
        }
        for s in &not_entities {
            let label = format!("{:?}", s.chars().take(24).collect::<String>());
            judge(
                format!("add {label} -> data:47"),
                refused(c.add_lineage_edge(s, "data:47").await.map(drop)),
            );
            judge(
                format!("add data:47 -> {label}"),
                refused(c.add_lineage_edge("data:47", s).await.map(drop)),
            );
            judge(
                format!("quarantine {label}"),
                refused(c.quarantine(s, "reason").await.map(drop)),
            );
            judge(
                format!("lift {label}"),
                refused(c.lift_quarantine(s, "reason").await.map(drop)),
            );
        }
        // Repeats: an edge twice, a second quarantine, a lift of what is not quarantined.
        judge(
            "registration edge again".into(),
            c.add_lineage_edge("data:47", "version:reco/1")
                .await
                .map(drop),
        );
        judge(
            "quarantine twice".into(),
            c.quarantine("data:45", "again").await.map(drop),
        );
        judge(
            "lift unquarantined".into(),
            c.lift_quarantine("data:47", "never was").await.map(drop),
        );
        judge(
            "list".into(),
            c.list_quarantines(ReadConsistency::Stale).await.map(drop),
        );
    }
    assert!(calls > 300, "{calls} calls");
    assert!(
        problems.is_empty(),
        "{} of {calls} calls answered unclearly:\n{}",
        problems.len(),
        problems.join("\n")
    );

    // Nothing changed: the one quarantine, the same impact; every node still takes a write and
    // the nodes agree on their state.
    let listed = quiver(CLI, &ep, &["lineage", "quarantines", "--output", "json"])
        .ok()
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let after_impact = quiver(
        CLI,
        &ep,
        &["lineage", "impact", "data:47", "--output", "json"],
    )
    .ok()
    .stdout;
    assert_eq!(after_impact, before_impact);
    for (i, node) in nodes.iter().enumerate() {
        quiver(
            CLI,
            &node.endpoint,
            &[
                "lineage",
                "add",
                &format!("data:after-{i}"),
                "version:reco/1",
            ],
        )
        .ok();
    }
    wait_for_agreement(&nodes);
}
