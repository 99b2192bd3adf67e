//! The client API over TLS, end to end: a real node and the real CLI. Clients verify the node
//! with the cluster CA and nothing else; a client certificate issued by `quiver-node cert issue
//! --client NAME` authenticates principal NAME, which holds what an admin grants it; a node's
//! certificate, an expired client certificate and one from another CA authenticate no one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use quiver_node::tls::ClusterCa;
use quiver_tests::{ca_for, quiver, quiver_as, NodeProcess};

const NODE: &str = env!("CARGO_BIN_EXE_e2e-quiver-node");
const CLI: &str = env!("CARGO_BIN_EXE_e2e-quiver");

/// `quiver-node cert issue --client NAME` into `out`: the command's run.
fn issue_client(ca_dir: &Path, name: &str, out: &Path) -> std::process::Output {
    Command::new(NODE)
        .args(["cert", "issue", "--client", name, "--ca-dir"])
        .arg(ca_dir)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run quiver-node cert issue")
}

/// `quiver ARGS…` with the client certificate `name` in `dir` and no token.
fn quiver_with_cert(ep: &str, dir: &Path, name: &str, args: &[&str]) -> quiver_tests::CliRun {
    let cert = dir.join(format!("{name}.pem")).display().to_string();
    let key = dir.join(format!("{name}.key")).display().to_string();
    let mut all = vec!["--cert", cert.as_str(), "--key", key.as_str()];
    all.extend_from_slice(args);
    quiver_as(CLI, ep, None, &all)
}

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn clients_verify_the_node_with_the_cluster_ca_and_client_certificates_authenticate_their_principal(
) {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(NODE, &dir.path().join("n1")).unwrap();
    let ep = node.endpoint.clone();
    assert!(ep.starts_with("https://"), "the node serves TLS: {ep}");
    let ca_dir = dir.path().join("n1").join("tls").join("ca");
    let certs = dir.path().join("certs");

    // Plaintext to a TLS node fails, and so does trusting another cluster's CA; the error says
    // what to point at the cluster CA.
    let plain = ep.replacen("https://", "http://", 1);
    let refused = quiver(CLI, &plain, &["model", "list"]).err();
    assert!(
        refused.contains(&ep) && refused.contains("TLS only"),
        "{refused}"
    );
    let other_ca = ClusterCa::create(&dir.path().join("other-ca"), "other").unwrap();
    let foreign = other_ca.issue(1).unwrap();
    let foreign_ca = write(dir.path(), "foreign-ca.pem", &foreign.ca_cert_pem);
    let refused = Command::new(CLI)
        .args(["model", "list"])
        .env("QUIVER_ENDPOINT", &ep)
        .env("QUIVER_CA", &foreign_ca)
        .env("QUIVER_TOKEN", node.token().unwrap())
        .env_remove("QUIVER_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("TLS handshake") && stderr.contains("QUIVER_CA"),
        "{stderr}"
    );
    // Without any CA, the CLI says where to find one.
    let no_ca = Command::new(CLI)
        .args(["model", "list"])
        .env("QUIVER_ENDPOINT", &ep)
        .env_remove("QUIVER_CA")
        .env("QUIVER_TOKEN", node.token().unwrap())
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&no_ca.stderr);
    assert!(
        !no_ca.status.success() && stderr.contains("--ca"),
        "{stderr}"
    );

    // A client certificate for alice: authenticated as alice, with no role yet.
    let issued = issue_client(&ca_dir, "alice", &certs);
    assert!(issued.status.success(), "{issued:?}");
    let me = quiver_with_cert(&ep, &certs, "alice", &["whoami", "--output", "json"])
        .ok()
        .json();
    assert_eq!(me["principal"], "alice");
    assert_eq!(me["authenticated"], true);
    assert_eq!(me["roles"].as_array().map(Vec::len), Some(0));
    let denied = quiver_with_cert(
        &ep,
        &certs,
        "alice",
        &["model", "create", "reco", "--namespace", "search"],
    )
    .err();
    assert!(
        denied.contains("permission denied") && denied.contains("alice"),
        "{denied}"
    );
    quiver(
        CLI,
        &ep,
        &[
            "role",
            "grant",
            "alice",
            "registrant",
            "--namespace",
            "search",
        ],
    )
    .ok();
    quiver_with_cert(
        &ep,
        &certs,
        "alice",
        &["model", "create", "reco", "--namespace", "search"],
    )
    .ok();
    let history = quiver(CLI, &ep, &["model", "show", "reco", "--output", "json"])
        .ok()
        .json();
    assert!(
        history.to_string().contains("alice"),
        "the model records alice as its creator: {history}"
    );
    // Revoking the role takes it away from the certificate at once.
    quiver(
        CLI,
        &ep,
        &["role", "revoke", "alice", "--namespace", "search"],
    )
    .ok();
    let denied = quiver_with_cert(
        &ep,
        &certs,
        "alice",
        &["model", "create", "reco2", "--namespace", "search"],
    )
    .err();
    assert!(denied.contains("permission denied"), "{denied}");

    // A node's certificate is no client credential, even though the cluster CA signed it.
    let node_tls = dir.path().join("n1").join("tls");
    std::fs::copy(node_tls.join("node.pem"), certs.join("node1.pem")).unwrap();
    std::fs::copy(node_tls.join("node.key"), certs.join("node1.key")).unwrap();
    let refused = quiver_with_cert(&ep, &certs, "node1", &["whoami"]).err();
    assert!(
        refused.contains("unauthenticated") && refused.contains("not a client credential"),
        "{refused}"
    );

    // An expired client certificate, and one from another CA, fail the handshake.
    let ca = ClusterCa::load(&ca_dir).unwrap();
    let day = Duration::from_secs(86_400);
    let expired = ca
        .issue_client_valid("bob", SystemTime::now() - 3 * day, SystemTime::now() - day)
        .unwrap();
    expired.write(&certs, "bob").unwrap();
    quiver_with_cert(&ep, &certs, "bob", &["whoami"]).err();
    let carol = other_ca.issue_client("carol", 1).unwrap();
    std::fs::write(certs.join("carol.pem"), &carol.cert_pem).unwrap();
    std::fs::write(certs.join("carol.key"), &carol.key_pem).unwrap();
    quiver_with_cert(&ep, &certs, "carol", &["whoami"]).err();
    // The node is still serving, with its CA file where the harness found it.
    assert!(ca_for(&ep).is_some());
    quiver(CLI, &ep, &["whoami"]).ok();
}

#[test]
fn issuing_a_client_certificate_refuses_hostile_names_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    ClusterCa::create(&ca_dir, "names").unwrap();
    let long = "a".repeat(10_000);
    let ca = ClusterCa::load(&ca_dir).unwrap();
    for name in [
        "",
        "a\0b",
        "../escape",
        "a/b",
        "node:1",
        long.as_str(),
        "\u{202e}evil",
        "équipe",
        " ",
        ".hidden",
    ] {
        assert!(ca.issue_client(name, 1).is_err(), "{name:?} was accepted");
        if name.contains('\0') {
            continue; // a process argument cannot carry NUL
        }
        let out = dir.path().join("out");
        let run = issue_client(&ca_dir, name, &out);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{name:?} was accepted");
        assert!(stderr.contains("--client"), "{name:?}: {stderr}");
        assert!(!out.exists(), "{name:?} wrote {}", out.display());
        assert!(!dir.path().join("escape.pem").exists());
    }
    // Out-of-range validity is refused too.
    assert!(ca.issue_client("ok", 0).is_err());
    assert!(ca.issue_client("ok", u32::MAX).is_err());
    // A name within the rules is fine, and a second issue does not overwrite it.
    let out = dir.path().join("out");
    let run = issue_client(&ca_dir, "ml-team_1.x", &out);
    assert!(run.status.success(), "{run:?}");
    assert!(out.join("ml-team_1.x.pem").exists() && out.join("ca.pem").exists());
    let again = issue_client(&ca_dir, "ml-team_1.x", &out);
    assert!(!again.status.success());
}
