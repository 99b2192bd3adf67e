//! Who may do what, end to end: a real 3-node cluster, driven by the real CLI through the leader
//! and through a follower. Every refused request (no token, a revoked token, an expired token,
//! a malformed one, a role one step too low, a role in another namespace) answers with the right
//! error and changes nothing: the state digests of all nodes stay equal to what they were.
//!
//! Waiting is on a condition with a deadline, never a fixed sleep.

use std::time::{Duration, Instant};

use quiver_tests::{
    quiver, quiver_as, register_version, token_for, write_random_file, NodeProcess,
};

const NODE: &str = env!("CARGO_BIN_EXE_e2e-quiver-node");
const CLI: &str = env!("CARGO_BIN_EXE_e2e-quiver");
const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `check` every 50 ms until it holds, or panics naming `what` at the deadline.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A token for `principal`, created by the admin through `ep`.
fn token(ep: &str, principal: &str, expires_in: &str) -> String {
    let out = quiver(
        CLI,
        ep,
        &[
            "token",
            "create",
            "--principal",
            principal,
            "--expires-in",
            expires_in,
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    out["token"].as_str().expect("the token").to_string()
}

/// Every node's state digest (they are equal once every node applied the same log).
fn digests(nodes: &[NodeProcess]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| {
            quiver(CLI, &n.endpoint, &["status", "--output", "json"])
                .ok()
                .json()["state_digest"]
                .as_str()
                .expect("a digest")
                .to_string()
        })
        .collect()
}

#[test]
fn every_role_boundary_holds_through_the_leader_and_a_follower_and_refusals_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let founder = NodeProcess::start(NODE, &tmp.path().join("node-1")).unwrap();
    let founder_peer = founder
        .peer_addr
        .clone()
        .expect("serve prints its peer address");
    let mut nodes = vec![founder];
    for id in 2..=3 {
        let data = tmp.path().join(format!("node-{id}"));
        let node = NodeProcess::join(
            NODE,
            &tmp.path().join("node-1"),
            &founder_peer,
            id,
            &data,
            &[],
        )
        .unwrap();
        nodes.push(node);
    }
    let leader = nodes[0].endpoint.clone();
    let follower = nodes[2].endpoint.clone();
    assert!(
        token_for(&follower).is_some(),
        "the joiner knows the admin token"
    );

    // The admin sets the scene: a model in namespace `search` with one version, and principals
    // with each role.
    quiver(
        CLI,
        &leader,
        &["model", "create", "reco", "--namespace", "search"],
    )
    .ok();
    let weights = tmp.path().join("w.bin");
    write_random_file(&weights, 64 << 10, 1).unwrap();
    register_version(CLI, &leader, "reco", &[&weights]).ok();
    for (principal, role, scope) in [
        ("rita", "reader", "search"),
        ("reg", "registrant", "search"),
        ("appr", "approver", "search"),
        ("ads-admin", "admin", "ads"),
    ] {
        quiver(
            CLI,
            &leader,
            &["role", "grant", principal, role, "--namespace", scope],
        )
        .ok();
    }
    let reader = token(&leader, "rita", "90d");
    let registrant = token(&leader, "reg", "90d");
    let approver = token(&leader, "appr", "90d");
    let other_admin = token(&leader, "ads-admin", "90d");
    let revoked = token(&leader, "appr", "90d");
    let revoked_id = revoked.split('_').nth(1).unwrap().to_string();
    quiver(CLI, &leader, &["token", "revoke", &revoked_id]).ok();
    let expiring = token(&leader, "appr", "1s");
    // The expired token is refused once a second has passed on the node's clock.
    wait_until("the short-lived token expires", || {
        let run = quiver_as(CLI, &follower, Some(&expiring), &["whoami"]);
        run.status != 0 && run.stderr.contains("expired")
    });

    wait_until("every node applied the setup", || {
        let d = digests(&nodes);
        d.iter().all(|x| *x == d[0])
    });
    let before = digests(&nodes)[0].clone();

    let file = weights.display().to_string();
    let register = [
        "version",
        "register",
        "reco",
        "--artifact",
        file.as_str(),
        "--data-snapshot",
        "s",
        "--code-commit",
        "c",
        "--run-id",
        "r",
    ];
    let set_alias = ["alias", "set", "reco", "champion", "1"];
    let promote = ["stage", "set", "reco/1", "production", "--reason", "r"];
    let create_token = ["token", "create", "--principal", "mallory"];
    let grant = ["role", "grant", "mallory", "admin", "--cluster"];
    let remove = ["cluster", "remove", "3"];
    let read = ["version", "list", "reco"];
    // (credentials, request, what the refusal must say)
    let refused: Vec<(Option<&str>, &[&str], &str)> = vec![
        (None, &set_alias, "unauthenticated"),
        (None, &read, "unauthenticated"),
        (Some("qvr_nonsense"), &read, "malformed"),
        (Some(&revoked), &set_alias, "revoked"),
        (Some(&expiring), &set_alias, "expired"),
        // One step too low for each action.
        (Some(&reader), &register, "needs the registrant role"),
        (Some(&registrant), &set_alias, "needs the approver role"),
        (Some(&registrant), &promote, "needs the approver role"),
        (
            Some(&approver),
            &create_token,
            "needs the admin role in the cluster",
        ),
        (
            Some(&approver),
            &grant,
            "needs the admin role in the cluster",
        ),
        (
            Some(&approver),
            &remove,
            "needs the admin role in the cluster",
        ),
        // An admin of another namespace holds nothing in this one.
        (
            Some(&other_admin),
            &read,
            "needs the reader role in namespace 'search'",
        ),
        (Some(&other_admin), &set_alias, "needs the approver role"),
    ];
    for ep in [&leader, &follower] {
        for (token, args, says) in &refused {
            let run = quiver_as(CLI, ep, *token, args);
            assert_ne!(
                run.status, 0,
                "{args:?} with {token:?} through {ep} succeeded"
            );
            assert!(
                run.stderr.contains(says),
                "{args:?} with {token:?} through {ep}: {:?} does not say {says:?}",
                run.stderr
            );
        }
    }
    let after = digests(&nodes);
    assert!(
        after.iter().all(|d| *d == before),
        "a refused request changed the state: {before} before, {after:?} after"
    );

    // The role that is enough works, through the follower too.
    quiver_as(CLI, &follower, Some(&reader), &read).ok();
    quiver_as(CLI, &follower, Some(&approver), &set_alias).ok();
    let shown = quiver_as(
        CLI,
        &follower,
        Some(&reader),
        &["alias", "get", "reco", "champion", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(
        shown["updated_by"], "appr",
        "history names the principal: {shown}"
    );
    let me = quiver_as(
        CLI,
        &follower,
        Some(&registrant),
        &["whoami", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(me["principal"], "reg");
    assert_eq!(me["roles"][0]["role"], "registrant");
}
