//! The audit hash chain: what a record holds, listing, and verification of the stored chain.

use quiver_audit::AuditBreak;

use super::*;
use crate::state::{AuditFilter, AUDIT_SCAN_ROWS_MAX};

fn stage(model: &str, number: u64, reason: &str) -> Op {
    Op::SetStage {
        model: model.into(),
        number,
        stage: Stage::Staging,
        reason: reason.into(),
        override_signature: false,
    }
}

/// Two models, a version each, and a stage change with a reason: four records.
fn audited() -> Fixture {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(create_version("reco", b"one"));
    f.apply(create_model("rank"));
    f.apply(stage("reco", 1, "offline eval passed"));
    f
}

/// Overwrites the stored bytes of record `seq` (as a hand on the disk would).
fn overwrite(f: &Fixture, seq: u64, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut wtxn = f.env.write_txn().unwrap();
    let key = seq.to_be_bytes();
    let bytes = f
        .app
        .tables
        .audit
        .get(&wtxn, &key)
        .unwrap()
        .unwrap()
        .to_vec();
    let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    edit(&mut value);
    let bytes = serde_json::to_vec(&value).unwrap();
    f.app.tables.audit.put(&mut wtxn, &key, &bytes).unwrap();
    wtxn.commit().unwrap();
}

fn verify(f: &Fixture) -> Result<quiver_audit::ChainHead, AuditBreak> {
    f.read(|app, txn| app.verify_audit(txn).unwrap())
}

#[test]
fn audit_log_is_a_hash_chain_of_accepted_mutations() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(create_model("reco")); // rejected: not audited
    f.apply(create_version("reco", b"one"));
    let log = f.read(|app, txn| app.audit_log(txn).unwrap());
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].kind, "create_model");
    assert_eq!(log[0].model, "reco");
    assert_eq!(log[1].subject, "reco/1");
    assert_eq!(log[1].log_index, 3);
    assert_eq!(log[1].prev_hash, log[0].hash);
    assert_eq!(log[0].principal, "alice");
    assert!(!log[0].authenticated);
    assert_eq!(quiver_audit::verify_chain(&log).unwrap().count, 2);
}

#[test]
fn a_stage_change_records_its_reason() {
    let f = audited();
    let log = f.read(|app, txn| app.audit_log(txn).unwrap());
    let last = log.last().unwrap();
    assert_eq!(
        (
            last.kind.as_str(),
            last.subject.as_str(),
            last.reason.as_str()
        ),
        ("set_stage", "reco/1", "offline eval passed")
    );
    assert_eq!(last.detail, "");
    assert_eq!(log[0].reason, "");
}

#[test]
fn an_intact_store_verifies_to_its_head() {
    let f = audited();
    let head = verify(&f).unwrap();
    let stored = f.read(|app, txn| app.audit_head(txn).unwrap());
    assert_eq!(head, stored);
    assert_eq!(head.count, 4);
}

#[test]
fn a_record_altered_in_the_store_is_named() {
    let f = audited();
    overwrite(&f, 4, |v| v["reason"] = "approved by nobody".into());
    let e = verify(&f).unwrap_err();
    assert!(matches!(e, AuditBreak::Altered { seq: 4, .. }), "{e}");
}

#[test]
fn a_record_altered_and_resealed_breaks_its_successor() {
    let f = audited();
    let mut forged = f.read(|app, txn| app.audit_log(txn).unwrap())[1].clone();
    forged.principal = "mallory".into();
    let forged = forged.sealed();
    overwrite(&f, 2, |v| *v = serde_json::to_value(&forged).unwrap());
    let e = verify(&f).unwrap_err();
    assert!(matches!(e, AuditBreak::BrokenLink { seq: 3, .. }), "{e}");
}

#[test]
fn a_record_removed_from_the_store_is_named() {
    let f = audited();
    let mut wtxn = f.env.write_txn().unwrap();
    f.app
        .tables
        .audit
        .delete(&mut wtxn, &2u64.to_be_bytes())
        .unwrap();
    wtxn.commit().unwrap();
    assert_eq!(
        verify(&f).unwrap_err(),
        AuditBreak::Missing {
            seq: 2,
            next_found: Some(3)
        }
    );
    // The last one too: the head in `meta` still counts it.
    let f = audited();
    let mut wtxn = f.env.write_txn().unwrap();
    f.app
        .tables
        .audit
        .delete(&mut wtxn, &4u64.to_be_bytes())
        .unwrap();
    wtxn.commit().unwrap();
    assert_eq!(
        verify(&f).unwrap_err(),
        AuditBreak::Missing {
            seq: 4,
            next_found: None
        }
    );
}

#[test]
fn unreadable_bytes_are_a_break_not_an_error() {
    let f = audited();
    let mut wtxn = f.env.write_txn().unwrap();
    f.app
        .tables
        .audit
        .put(&mut wtxn, &3u64.to_be_bytes(), b"{not json")
        .unwrap();
    wtxn.commit().unwrap();
    assert!(matches!(
        verify(&f).unwrap_err(),
        AuditBreak::Unreadable { seq: 3, .. }
    ));
}

#[test]
fn listing_filters_by_model_and_time_and_pages() {
    let f = audited();
    let list = |model: &str, since_ms: i64, size: usize, after: u64| {
        let filter = AuditFilter {
            model: model.into(),
            since_ms,
        };
        f.read(|app, txn| app.list_audit(txn, &filter, size, after).unwrap())
    };
    let seqs =
        |page: &crate::state::AuditPage| page.records.iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&list("", i64::MIN, 0, 0)), vec![1, 2, 3, 4]);
    assert_eq!(seqs(&list("reco", i64::MIN, 0, 0)), vec![1, 2, 4]);
    assert_eq!(seqs(&list("", 1_003, 0, 0)), vec![3, 4]);
    assert_eq!(seqs(&list("", i64::MAX, 0, 0)), Vec::<u64>::new());
    assert_eq!(seqs(&list("nothing", i64::MIN, 0, 0)), Vec::<u64>::new());
    let first = list("reco", i64::MIN, 2, 0);
    assert_eq!((seqs(&first), first.next_after), (vec![1, 2], Some(2)));
    let second = list("reco", i64::MIN, 2, 2);
    assert_eq!((seqs(&second), second.next_after), (vec![4], None));
    assert_eq!(seqs(&list("", i64::MIN, 0, u64::MAX)), Vec::<u64>::new());
}

#[test]
fn a_listing_reads_a_bounded_number_of_rows() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    // Many records of no model, applied in one transaction (one sync, not thousands).
    let mut wtxn = f.env.write_txn().unwrap();
    for n in 0..AUDIT_SCAN_ROWS_MAX as u64 + 5 {
        f.index += 1;
        let cmd = Command {
            actor: actor("alice"),
            at_ms: 2_000,
            request_id: None,
            op: Op::UpsertNode(NodeInfo {
                node_id: 1 + n % 2,
                api_addr: "127.0.0.1:7001".into(),
                peer_addr: "127.0.0.1:7002".into(),
                quic_addr: "127.0.0.1:7003".into(),
                region: "eu-west".into(),
                zone: "eu-west-a".into(),
            }),
        };
        f.app.apply(&mut wtxn, f.index, &cmd).unwrap();
    }
    wtxn.commit().unwrap();
    f.apply(create_version("reco", b"late"));
    let filter = AuditFilter {
        model: "reco".into(),
        since_ms: i64::MIN,
    };
    let page = f.read(|app, txn| app.list_audit(txn, &filter, 10, 0).unwrap());
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.next_after, Some(AUDIT_SCAN_ROWS_MAX as u64));
    let rest = f.read(|app, txn| {
        app.list_audit(txn, &filter, 10, page.next_after.unwrap())
            .unwrap()
    });
    assert_eq!(rest.records.last().unwrap().kind, "create_version");
    assert_eq!(rest.next_after, None);
}
