//! Request-id deduplication (decision 0009).

use super::*;
use crate::state::{REQUEST_IDS_KEPT_ENTRIES, REQUEST_ID_BYTES_MAX};

#[test]
fn a_request_applied_twice_answers_twice_as_the_first_time_and_changes_nothing() {
    let mut f = fixture();
    let first = f.apply_request(Some("r1"), create_model("reco"));
    assert!(matches!(first, Response::Model(_)), "{first:?}");
    let created = version(f.apply_request(Some("r2"), create_version("reco", b"one")));
    let before = f.digest();
    // The retried copies reach the log later: same answers, no new version, no rejection.
    let again = f.apply_request(Some("r2"), create_version("reco", b"one"));
    assert_eq!(version(again).number, created.number);
    assert!(matches!(
        f.apply_request(Some("r1"), create_model("reco")),
        Response::Model(_)
    ));
    assert_eq!(f.digest(), before, "a retried copy changes nothing");
    let kept = f.read(|app, txn| app.tables.requests.get(txn, b"r2").unwrap().unwrap().len());
    assert!(kept < 100, "a version is remembered by name ({kept} bytes)");
    // A rejection is remembered as well: the retry is rejected the same way.
    let rejected_once = rejected(f.apply_request(Some("r3"), create_model("reco")));
    assert_eq!(
        rejected(f.apply_request(Some("r3"), create_model("reco"))),
        rejected_once
    );
    // Without an id every copy applies: the second is a duplicate of the first.
    assert!(matches!(
        rejected(f.apply(create_version("reco", b"one"))),
        DomainError::DuplicateBundle { .. }
    ));
}

#[test]
fn request_ids_are_forgotten_after_the_kept_number_of_entries() {
    let mut f = fixture();
    f.apply_request(Some("old"), create_model("reco"));
    let kept = |f: &Fixture, id: &str| {
        f.read(|app, txn| app.answered(txn, &RequestId(id.into())).unwrap())
            .is_some()
    };
    assert!(kept(&f, "old"));
    // Just inside the window: still there.
    f.index = REQUEST_IDS_KEPT_ENTRIES;
    f.apply_request(Some("new"), create_model("other"));
    assert!(kept(&f, "old"));
    // One entry later the first id falls out of the window; the newer one stays.
    f.apply(create_model("third"));
    assert!(!kept(&f, "old"));
    assert!(kept(&f, "new"));
    assert_eq!(
        f.read(|app, txn| app.tables.request_log.len(txn).unwrap()),
        1,
        "only the newer id's log row remains"
    );
}

/// Regression (found by `properties::apply_never_fails_and_replays_to_the_same_digest`): an empty
/// request id reached LMDB as a key and failed with MDB_BAD_VALSIZE, a storage error that stops
/// Raft on every node. Ids that cannot be keys are rejected, and nothing is written.
#[test]
fn a_request_id_that_cannot_be_a_key_is_rejected_and_changes_nothing() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    let before = f.digest();
    let too_long = "r".repeat(REQUEST_ID_BYTES_MAX + 1);
    let far_too_long = "r".repeat(600);
    for id in ["", too_long.as_str(), far_too_long.as_str()] {
        match rejected(f.apply_request(Some(id), create_model("other"))) {
            DomainError::Invalid { field, message } => {
                assert_eq!(field, "request_id");
                assert!(message.contains("use 1-128 bytes"), "{message}");
            }
            other => panic!("expected an invalid request_id, got {other:?}"),
        }
        assert_eq!(f.digest(), before, "id of {} bytes", id.len());
    }
    // The longest id allowed is remembered and answers its retry.
    let longest = "r".repeat(REQUEST_ID_BYTES_MAX);
    let first = f.apply_request(Some(&longest), create_model("other"));
    assert!(matches!(first, Response::Model(_)), "{first:?}");
    let again = f.apply_request(Some(&longest), create_model("other"));
    assert!(matches!(again, Response::Model(_)), "{again:?}");
}
