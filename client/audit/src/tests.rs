//! [`verify_chain`] against every kind of break.

use super::*;

fn chain(n: u64) -> Vec<AuditRecord> {
    let mut out: Vec<AuditRecord> = Vec::new();
    for seq in 1..=n {
        let prev_hash = out.last().map(|r| r.hash.clone()).unwrap_or_default();
        out.push(
            AuditRecord {
                seq,
                log_index: seq + 3,
                at_ms: 1_000 + seq as i64,
                principal: "admin".into(),
                authenticated: true,
                kind: "set_stage".into(),
                model: "reco".into(),
                subject: format!("reco/{seq}"),
                reason: format!("reason {seq}"),
                detail: String::new(),
                prev_hash,
                hash: String::new(),
            }
            .sealed(),
        );
    }
    out
}

#[test]
fn an_intact_chain_verifies_to_its_head() {
    let records = chain(4);
    let head = verify_chain(&records).unwrap();
    assert_eq!(head.count, 4);
    assert_eq!(head.hash, records[3].hash);
    assert_eq!(verify_chain(&[]).unwrap(), ChainHead::default());
}

#[test]
fn every_field_is_covered_by_the_hash() {
    let base = chain(1).remove(0);
    let edits: Vec<fn(&mut AuditRecord)> = vec![
        |r| r.log_index += 1,
        |r| r.at_ms += 1,
        |r| r.principal.push('x'),
        |r| r.authenticated = false,
        |r| r.kind.push('x'),
        |r| r.model.push('x'),
        |r| r.subject.push('x'),
        |r| r.reason.push('x'),
        |r| r.detail.push('x'),
    ];
    for (i, edit) in edits.into_iter().enumerate() {
        let mut r = base.clone();
        edit(&mut r);
        assert!(
            matches!(verify_chain(&[r]), Err(AuditBreak::Altered { seq: 1, .. })),
            "edit {i} was not detected"
        );
    }
}

#[test]
fn fields_are_not_confused_across_their_boundaries() {
    let mut a = chain(1).remove(0);
    let mut b = a.clone();
    a.model = "ab".into();
    a.subject = "c".into();
    b.model = "a".into();
    b.subject = "bc".into();
    assert_ne!(record_hash(&a), record_hash(&b));
}

#[test]
fn an_altered_record_is_named() {
    let mut records = chain(5);
    records[2].reason = "forged".into();
    let e = verify_chain(&records).unwrap_err();
    assert!(matches!(e, AuditBreak::Altered { seq: 3, .. }), "{e}");
    assert_eq!((e.seq(), e.kind()), (3, "altered"));
}

#[test]
fn a_missing_record_is_named() {
    let mut records = chain(5);
    records.remove(1);
    let e = verify_chain(&records).unwrap_err();
    assert_eq!(
        e,
        AuditBreak::Missing {
            seq: 2,
            next_found: Some(3)
        }
    );
}

#[test]
fn a_resealed_record_breaks_the_next_link() {
    // Altering a record and recomputing its hash leaves it self-consistent; its successor
    // then names a hash that is no longer there.
    let mut records = chain(5);
    records[1].reason = "forged".into();
    records[1] = records[1].clone().sealed();
    let e = verify_chain(&records).unwrap_err();
    assert!(matches!(e, AuditBreak::BrokenLink { seq: 3, .. }), "{e}");
}

#[test]
fn a_first_record_must_link_to_nothing() {
    let mut records = chain(2);
    records[0].prev_hash = "00".into();
    records[0] = records[0].clone().sealed();
    let e = verify_chain(&records).unwrap_err();
    assert!(matches!(e, AuditBreak::BrokenLink { seq: 1, .. }), "{e}");
}

#[test]
fn a_repeated_record_is_out_of_order() {
    let mut records = chain(3);
    records.insert(2, records[1].clone());
    let e = verify_chain(&records).unwrap_err();
    assert_eq!(
        e,
        AuditBreak::OutOfOrder {
            seq: 2,
            expected: 3
        }
    );
}

#[test]
fn a_truncated_or_extended_chain_does_not_meet_its_claimed_head() {
    let records = chain(4);
    let mut v = ChainVerifier::new();
    for r in &records[..3] {
        v.push(r).unwrap();
    }
    let e = v.clone().finish(4, &records[3].hash).unwrap_err();
    assert_eq!(
        e,
        AuditBreak::Missing {
            seq: 4,
            next_found: None
        }
    );
    let e = v.clone().finish(2, &records[1].hash).unwrap_err();
    assert!(matches!(e, AuditBreak::HeadMismatch { seq: 3, .. }), "{e}");
    assert_eq!(v.finish(3, &records[2].hash).unwrap().count, 3);
}

#[test]
fn a_record_round_trips_through_json_and_keeps_its_hash() {
    let r = chain(1).remove(0);
    let text = serde_json::to_string(&r).unwrap();
    let back: AuditRecord = serde_json::from_str(&text).unwrap();
    assert_eq!(back, r);
    assert_eq!(record_hash(&back), r.hash);
}

#[test]
fn the_statement_changes_with_each_field() {
    let base = bundle_statement(1, 2, 3, "aa");
    assert_ne!(base, bundle_statement(9, 2, 3, "aa"));
    assert_ne!(base, bundle_statement(1, 9, 3, "aa"));
    assert_ne!(base, bundle_statement(1, 2, 9, "aa"));
    assert_ne!(base, bundle_statement(1, 2, 3, "ab"));
}
