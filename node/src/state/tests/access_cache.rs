//! The state machine keeps the access cache fresh: a write transaction that changes tokens,
//! grants or which models exist, and a snapshot import, make every entry read before it stale;
//! other writes leave the entries served.

use crate::access_cache::{read_facts, Wanted, Who};
use crate::auth::{Role, Scope};

use super::*;

/// Reads alice's grants and model `reco`'s namespace into the app's cache, as an access check
/// would on a miss.
fn remember_alice(f: &Fixture) -> Wanted<'static> {
    let wanted = Wanted {
        who: Who::Principal("alice"),
        grants: true,
        model: Some("reco"),
    };
    let (read_at, facts) = f.read(|app, txn| read_facts(app, txn, &wanted).unwrap());
    f.app.access_cache().remember(read_at, &wanted, &facts);
    wanted
}

fn grant_alice(role: Role) -> Op {
    Op::GrantRole {
        principal: "alice".into(),
        scope: Scope::Namespace("team".into()),
        role,
    }
}

#[test]
fn an_entry_is_served_across_other_writes_and_stale_after_an_access_change() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(grant_alice(Role::Reader));
    let wanted = remember_alice(&f);
    let cache = f.app.access_cache();
    let facts = cache.look_up(&wanted).expect("cached");
    assert_eq!(facts.grants.len(), 1);
    assert_eq!(facts.namespace.as_deref(), Some("team"));
    // Writes that change no access keep it.
    f.apply(create_version("reco", b"one"));
    f.apply(Op::SetAlias {
        model: "reco".into(),
        alias: "live".into(),
        number: 1,
    });
    assert!(cache.look_up(&wanted).is_some(), "kept across other writes");
    // Each access change makes it stale; read again, it is served with the change.
    f.apply(grant_alice(Role::Approver));
    assert!(cache.look_up(&wanted).is_none(), "stale after a grant");
    let wanted = remember_alice(&f);
    assert_eq!(
        cache.look_up(&wanted).expect("cached").grants[0].role,
        Role::Approver
    );
    f.apply(Op::RevokeRole {
        principal: "alice".into(),
        scope: Scope::Namespace("team".into()),
    });
    assert!(cache.look_up(&wanted).is_none(), "stale after a revocation");
    let wanted = remember_alice(&f);
    assert!(cache.look_up(&wanted).expect("cached").grants.is_empty());
    f.apply(create_model("other"));
    assert!(cache.look_up(&wanted).is_none(), "stale after a new model");
}

#[test]
fn a_rejected_access_command_is_noted_and_the_cache_serves_again_after_the_next_commit() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    let wanted = remember_alice(&f);
    let cache = f.app.access_cache();
    // Revoking a role nobody holds is rejected; it was noted all the same.
    assert!(matches!(
        f.apply(Op::RevokeRole {
            principal: "alice".into(),
            scope: Scope::Cluster,
        }),
        Response::Rejected(_)
    ));
    assert!(cache.look_up(&wanted).is_none());
    // Here its transaction wrote nothing, so LMDB did not commit that id (in a node every apply
    // transaction writes the applied index): what is read now is from before it, and is not
    // served, until a later transaction commits.
    let wanted = remember_alice(&f);
    assert!(cache.look_up(&wanted).is_none());
    f.apply(create_version("reco", b"one"));
    let wanted = remember_alice(&f);
    assert_eq!(
        cache.look_up(&wanted).expect("cached").namespace.as_deref(),
        Some("team")
    );
}

#[test]
fn an_imported_snapshot_makes_every_entry_stale() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(grant_alice(Role::Reader));
    let snapshot = {
        let mut out = Vec::new();
        f.read(|app, txn| app.export(txn, &mut out).unwrap());
        out
    };
    let mut g = fixture();
    g.apply(create_model("reco"));
    let wanted = remember_alice(&g);
    let cache = g.app.access_cache();
    assert!(cache.look_up(&wanted).expect("cached").grants.is_empty());
    let mut wtxn = g.env.write_txn().unwrap();
    g.app.import(&mut wtxn, &mut &snapshot[..]).unwrap();
    wtxn.commit().unwrap();
    assert!(cache.look_up(&wanted).is_none(), "stale after the import");
    let wanted = remember_alice(&g);
    assert_eq!(cache.look_up(&wanted).expect("cached").grants.len(), 1);
}
