//! The audit log end to end (decision 0019), on a real 3-node cluster driven by the real CLI:
//! changes are listed with their principal and reason; every node's chain verifies; an export
//! verifies offline with the cluster CA and fails with a flipped byte or another cluster's CA;
//! a record altered on a stopped node's disk is named by `quiver-node audit verify`; hostile
//! listing requests are refused cleanly and change nothing.
//!
//! Waiting is on a condition with a deadline, never a fixed sleep.

use std::path::Path;
use std::time::{Duration, Instant};

use quiver_client::proto::ListAuditRequest;
use quiver_tests::{
    alter_state_files, ca_for, connect, offline_audit_verify, quiver, quiver_as, register_version,
    write_random_file, NodeProcess,
};
use tonic::Code;

const NODE: &str = env!("CARGO_BIN_EXE_e2e-quiver-node");
const CLI: &str = env!("CARGO_BIN_EXE_e2e-quiver");
const DEADLINE: Duration = Duration::from_secs(60);
/// A reason no other text in the state holds, so that its bytes on disk are found alone.
const REASON: &str = "offline-eval-passed-7f3a";

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn digest(ep: &str) -> String {
    quiver(CLI, ep, &["status", "--output", "json"]).ok().json()["state_digest"]
        .as_str()
        .expect("a digest")
        .to_string()
}

fn audit_verify(ep: &str) -> serde_json::Value {
    quiver(CLI, ep, &["audit", "verify", "--output", "json"])
        .ok()
        .json()
}

fn verify_bundle(ep: &str, bundle: &Path, ca: &Path) -> quiver_tests::CliRun {
    let (b, c) = (bundle.display().to_string(), ca.display().to_string());
    quiver(CLI, ep, &["audit", "verify-bundle", &b, "--ca", &c])
}

#[test]
fn the_audit_chain_lists_verifies_exports_and_names_an_altered_record() {
    let tmp = tempfile::tempdir().unwrap();
    let founder = NodeProcess::start(NODE, &tmp.path().join("node-1")).unwrap();
    let founder_peer = founder.peer_addr.clone().expect("a peer address");
    let mut nodes = vec![founder];
    for id in 2..=3 {
        let data = tmp.path().join(format!("node-{id}"));
        nodes.push(
            NodeProcess::join(
                NODE,
                &tmp.path().join("node-1"),
                &founder_peer,
                id,
                &data,
                &[],
            )
            .unwrap(),
        );
    }
    let leader = nodes[0].endpoint.clone();
    let ca = ca_for(&leader).expect("the cluster CA");

    // Some changes by the admin.
    quiver(
        CLI,
        &leader,
        &["model", "create", "reco", "--namespace", "search"],
    )
    .ok();
    quiver(CLI, &leader, &["model", "create", "rank"]).ok();
    let weights = tmp.path().join("w.bin");
    write_random_file(&weights, 4 << 10, 1).unwrap();
    register_version(CLI, &leader, "reco", &[&weights]).ok();
    quiver(
        CLI,
        &leader,
        &["stage", "set", "reco/1", "staging", "--reason", REASON],
    )
    .ok();

    // The log lists them, with the principal and the reason; a model's listing only its own.
    let log = quiver(CLI, &leader, &["audit", "log", "--output", "json"])
        .ok()
        .json();
    let records = log.as_array().expect("a list");
    let stage = records
        .iter()
        .find(|r| r["kind"] == "set_stage")
        .expect("the stage change is audited");
    assert_eq!(stage["principal"], "admin");
    assert_eq!(stage["reason"], REASON);
    assert_eq!(stage["subject"], "reco/1");
    let stage_seq = stage["seq"].as_u64().unwrap();
    assert!(records
        .iter()
        .any(|r| r["kind"] == "create_model" && r["subject"] == "rank"));
    let reco = quiver(
        CLI,
        &leader,
        &["audit", "log", "--model", "reco", "--output", "json"],
    )
    .ok()
    .json();
    let reco = reco.as_array().unwrap();
    assert_eq!(reco.len(), 3, "{reco:?}");
    assert!(reco.iter().all(|r| r["model"] == "reco"));
    let none = quiver(
        CLI,
        &leader,
        &["audit", "log", "--since", "9999-12-31", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(none.as_array().unwrap().len(), 0);
    let table = quiver(CLI, &leader, &["audit", "log"]).ok().stdout;
    assert!(table.contains("admin") && table.contains(REASON), "{table}");

    // A reader of namespace `search` reads reco's records and nothing more; no credential, none.
    let rita = quiver(
        CLI,
        &leader,
        &["token", "create", "--principal", "rita", "--output", "json"],
    )
    .ok()
    .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    quiver(
        CLI,
        &leader,
        &["role", "grant", "rita", "reader", "--namespace", "search"],
    )
    .ok();
    let as_rita = |args: &[&str]| quiver_as(CLI, &leader, Some(&rita), args);
    let own = as_rita(&["audit", "log", "--model", "reco", "--output", "json"])
        .ok()
        .json();
    assert_eq!(own.as_array().unwrap().len(), 3);
    let out = tmp.path().join("rita.jsonl").display().to_string();
    for args in [
        vec!["audit", "log"],
        vec!["audit", "log", "--model", "rank"],
        vec!["audit", "verify"],
        vec!["audit", "export", "--out", &out],
    ] {
        let e = as_rita(&args).err();
        assert!(e.contains("permission denied"), "{args:?}: {e}");
        let e = quiver_as(CLI, &leader, None, &args).err();
        assert!(
            e.contains("unauthenticated") || e.contains("permission denied"),
            "{e}"
        );
    }
    assert!(
        !tmp.path().join("rita.jsonl").exists(),
        "a refused export leaves no file"
    );

    // Every node's chain verifies, to the same head once each has applied everything.
    let heads =
        || -> Vec<serde_json::Value> { nodes.iter().map(|n| audit_verify(&n.endpoint)).collect() };
    wait_until("every node's chain verifies to the same head", || {
        let heads = heads();
        heads
            .iter()
            .all(|h| h["head_hash"] == heads[0]["head_hash"])
    });
    let count = heads()[0]["count"].as_u64().unwrap();
    assert!(count >= records.len() as u64 && stage_seq <= count);

    // Hostile listings are refused cleanly and change nothing.
    let before = digest(&leader);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = connect(&nodes[1].endpoint).await.unwrap();
        let list = |model: &str, since_ms: i64, page_token: &str| {
            client.list_audit(ListAuditRequest {
                model: model.into(),
                since_ms,
                page_size: u32::MAX,
                page_token: page_token.into(),
                consistency: 0,
            })
        };
        for model in [
            "a".repeat(100_000),
            "re\0co".into(),
            "../x".into(),
            "модель".into(),
        ] {
            let e = list(&model, 0, "").await.unwrap_err();
            assert!(
                matches!(e.code(), Some(Code::InvalidArgument | Code::NotFound)),
                "{e}"
            );
            assert!(e.to_string().len() < 1200, "a short message");
        }
        assert_eq!(
            list("nope", 0, "").await.unwrap_err().code(),
            Some(Code::NotFound)
        );
        for since in [i64::MIN, i64::MAX, -1, 0] {
            list("", since, "").await.unwrap();
        }
        for token in [
            "x",
            "-1",
            "+1",
            "1e9",
            "99999999999999999999999",
            "\u{1F600}",
        ] {
            let e = list("", 0, token).await.unwrap_err();
            assert_eq!(e.code(), Some(Code::InvalidArgument), "{token}: {e}");
        }
        let past_end = list("", 0, &u64::MAX.to_string()).await.unwrap();
        assert!(past_end.records.is_empty() && past_end.next_page_token.is_empty());
    });
    assert_eq!(digest(&leader), before, "hostile listings changed nothing");

    // An export from a follower verifies offline with the CA, and not once a byte is flipped.
    let bundle = tmp.path().join("audit.jsonl");
    let out = bundle.display().to_string();
    quiver(CLI, &nodes[2].endpoint, &["audit", "export", "--out", &out]).ok();
    let ok = verify_bundle(&leader, &bundle, &ca).ok().stdout;
    assert!(
        ok.contains(&format!("{count} record(s) from node 3")),
        "{ok}"
    );
    let text = std::fs::read_to_string(&bundle).unwrap();
    let flipped = tmp.path().join("flipped.jsonl");
    std::fs::write(
        &flipped,
        text.replacen(REASON, "offline-eval-passed-7f3b", 1),
    )
    .unwrap();
    let e = verify_bundle(&leader, &flipped, &ca).err();
    assert!(
        e.contains(&format!("audit record {stage_seq} was altered")),
        "{e}"
    );
    let mut header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    header["count"] = (count - 1).into();
    let forged = tmp.path().join("forged.jsonl");
    let rest: Vec<&str> = text.lines().skip(1).take(count as usize - 1).collect();
    std::fs::write(&forged, format!("{header}\n{}\n", rest.join("\n"))).unwrap();
    let e = verify_bundle(&leader, &forged, &ca).err();
    assert!(e.contains("signature does not verify"), "{e}");

    // Another cluster's CA: its bundles do not verify with this CA, nor this one's with it.
    let other = NodeProcess::start(NODE, &tmp.path().join("other-1")).unwrap();
    let other_ca = ca_for(&other.endpoint).unwrap();
    let other_bundle = tmp.path().join("other.jsonl");
    let other_out = other_bundle.display().to_string();
    quiver(
        CLI,
        &other.endpoint,
        &["audit", "export", "--out", &other_out],
    )
    .ok();
    verify_bundle(&leader, &other_bundle, &other_ca).ok();
    let e = verify_bundle(&leader, &other_bundle, &ca).err();
    assert!(e.contains("not a node certificate of this CA"), "{e}");
    let e = verify_bundle(&leader, &bundle, &other_ca).err();
    assert!(e.contains("not a node certificate of this CA"), "{e}");
    other.stop().unwrap();

    // A record altered on a stopped node's disk is named offline.
    let stopped = nodes.pop().unwrap();
    let dir = stopped.data_dir.clone();
    stopped.stop().unwrap();
    let (intact, stderr) = offline_audit_verify(NODE, &dir);
    assert!(intact, "{stderr}");
    let altered = alter_state_files(&dir, REASON.as_bytes(), b"offline-eval-passed-7f3b");
    assert!(altered > 0, "the reason is in the state env");
    let (intact, stderr) = offline_audit_verify(NODE, &dir);
    assert!(!intact);
    assert!(
        stderr.contains(&format!("broken at record {stage_seq}")) && stderr.contains("altered"),
        "{stderr}"
    );

    // Restarted, the node serves, but its chain is reported broken there, and it will not sign.
    let restarted = NodeProcess::join(
        NODE,
        &tmp.path().join("node-1"),
        &founder_peer,
        3,
        &dir,
        &[],
    )
    .unwrap();
    let e = quiver(CLI, &restarted.endpoint, &["audit", "verify"]).err();
    assert!(
        e.contains(&format!("broken at record {stage_seq} (altered)")),
        "{e}"
    );
    let out = tmp.path().join("refused.jsonl").display().to_string();
    let e = quiver(
        CLI,
        &restarted.endpoint,
        &["audit", "export", "--out", &out],
    )
    .err();
    assert!(
        e.contains("will not sign") && e.contains(&format!("record {stage_seq}")),
        "{e}"
    );
    assert!(
        audit_verify(&nodes[0].endpoint)["count"].as_u64().is_some(),
        "the others verify"
    );
    restarted.stop().unwrap();
    for node in nodes {
        node.stop().unwrap();
    }
}
