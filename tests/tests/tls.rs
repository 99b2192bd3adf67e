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

/// The API port serves TLS (gRPC) to everyone and plaintext HTTP (the node's HTTP routes: the
/// MLflow API, the UI, `/metrics`) to clients on its own host, told apart by their first byte;
/// neither disturbs the other, and garbage on either gets nothing served.
#[test]
fn the_api_port_serves_grpc_over_tls_and_plaintext_http_to_its_own_host() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(NODE, &dir.path().join("n1")).unwrap();
    let ep = node.endpoint.clone();
    let addr = ep.trim_start_matches("https://").to_string();
    quiver(CLI, &ep, &["model", "create", "reco"]).ok();

    let (status, body) = quiver_tests::http_get(&addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("quiver_raft_applied_index"), "{body}");
    assert_eq!(quiver_tests::http_get(&addr, "/no/such/route").0, 404);

    // Hostile first bytes: an HTTP/2 preface, NUL bytes, a truncated TLS record, a request line
    // of 100 kB. Each gets an error or a closed connection, within the bound.
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100_000));
    let probes: [&[u8]; 4] = [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\0\0\0\0\0\0\0\0",
        b"\x16\x03\x01\x00",
        long.as_bytes(),
    ];
    for probe in probes {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let _ = stream.write_all(probe);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        // The HTTP/2 preface is answered in HTTP/2 (a SETTINGS frame first): plaintext HTTP/2
        // reaches the HTTP routes too, never the gRPC services.
        let settings_first = answer.len() >= 9 && answer[3] == 0x04;
        assert!(
            answer.is_empty()
                || text.starts_with("HTTP/1.1 4")
                || (probe.starts_with(b"PRI") && settings_first),
            "a probe of {} bytes got: {text:.200}",
            probe.len()
        );
    }

    // gRPC over TLS goes on as before, and so does plaintext HTTP.
    quiver(CLI, &ep, &["model", "create", "after"]).ok();
    let listed = quiver(CLI, &ep, &["model", "list", "--output", "json"])
        .ok()
        .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    assert_eq!(quiver_tests::http_get(&addr, "/metrics").0, 200);
}

/// `GET path` over HTTPS (HTTP/1.1) to the node at `addr`, verifying its certificate for `name`
/// with the CA in `ca_pem`, as a browser or the MLflow client reaching the node by that name
/// would: the answer's status, or why the connection failed.
fn https_get_as(addr: &str, name: &str, ca_pem: &str, path: &str) -> Result<u16, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::io::{Read, Write};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("the CA in PEM"))
        .expect("a usable CA");
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = ServerName::try_from(name.to_string()).expect("a valid name");
    let connection =
        rustls::ClientConnection::new(config.into(), server_name).map_err(|e| e.to_string())?;
    let tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    match tls.read_to_end(&mut answer) {
        Ok(_) => {}
        // A server that closes without close_notify still answered.
        Err(e) if !answer.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.to_string()),
    }
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {text:.200}"))
}

/// `quiver-node cert rotate --name` gives a running node's certificate the names remote HTTPS
/// clients reach it by; a name that is neither a DNS name nor an address is refused and the
/// certificate stays as it was.
#[test]
fn a_node_certificate_rotated_with_names_verifies_for_https_clients_by_those_names() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(NODE, &dir.path().join("n1")).unwrap();
    let addr = node.endpoint.trim_start_matches("https://").to_string();
    let tls_dir = node.data_dir.join("tls");
    let ca_pem = std::fs::read_to_string(tls_dir.join("ca.pem")).unwrap();
    let info = "/api/3.0/mlflow/server-info";
    assert_eq!(https_get_as(&addr, "127.0.0.1", &ca_pem, info), Ok(200));
    assert!(https_get_as(&addr, "registry.test", &ca_pem, info).is_err());

    let rotate = |names: &[&str]| {
        let mut command = Command::new(NODE);
        command
            .args(["cert", "rotate", "--node-id", "1", "--ca-dir"])
            .arg(tls_dir.join("ca"))
            .arg("--tls-dir")
            .arg(&tls_dir);
        for name in names {
            command.args(["--name", name]);
        }
        command.output().expect("run quiver-node cert rotate")
    };
    let before = std::fs::read(tls_dir.join("node.pem")).unwrap();
    let long = "a".repeat(300);
    for bad in [
        "",
        "bad name",
        "../x",
        "*.test",
        "ünï.test",
        "host:7400",
        long.as_str(),
    ] {
        let run = rotate(&["registry.test", bad]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{bad:?} was accepted");
        assert!(stderr.contains("--name"), "{bad:?}: {stderr}");
        assert_eq!(
            std::fs::read(tls_dir.join("node.pem")).unwrap(),
            before,
            "{bad:?}"
        );
    }

    let run = rotate(&["registry.test", "10.9.8.7"]);
    assert!(run.status.success(), "{run:?}");
    // The running node takes the renewed certificate within its reload interval.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match https_get_as(&addr, "registry.test", &ca_pem, info) {
            Ok(status) => {
                assert_eq!(status, 200);
                break;
            }
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("the node never served the renewed certificate: {e}")
            }
            // Polled, not waited for: each try is a fresh handshake.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    assert_eq!(https_get_as(&addr, "10.9.8.7", &ca_pem, info), Ok(200));
    assert_eq!(
        https_get_as(&addr, "quiver.cluster", &ca_pem, info),
        Ok(200)
    );
    assert!(https_get_as(&addr, "other.test", &ca_pem, info).is_err());
    // gRPC clients, which verify quiver.cluster, go on as before.
    quiver(CLI, &node.endpoint, &["model", "create", "named"]).ok();
}
