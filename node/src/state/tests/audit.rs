//! The audit hash chain.

use super::*;

#[test]
fn audit_log_is_a_hash_chain_of_accepted_mutations() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(create_model("reco")); // rejected: not audited
    f.apply(create_version("reco", b"one"));
    let log = f.read(|app, txn| app.audit_log(txn).unwrap());
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].kind, "create_model");
    assert_eq!(log[1].subject, "reco/1");
    assert_eq!(log[1].prev_hash, log[0].hash);
    assert_eq!(log[0].actor.name, "alice");
}
