//! Node certificates at every peer path (decision 0017), over three real nodes on loopback
//! (Raft over gRPC, chunks over QUIC, both with mutual TLS): a certificate from another CA,
//! an expired one and a removed node's are refused for Raft RPCs, forwarding, joining and
//! chunk fetches; a request naming a sender other than its certificate's node is refused; and
//! a node's certificate renewed while it runs is used for new connections while the cluster
//! keeps serving. No test sleeps to synchronise: each polls what it waits for, within `BOUND`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::raft::VoteRequest;
use openraft::Vote;
use quiver_node::command::Op;
use quiver_node::domain::{Actor, RiskTier};
use quiver_node::node::Consistency;
use quiver_node::tls::{default_tls_dir, ClusterCa, NodeCert};
use quiver_node::{Node, NodeConfig};
use quiver_raft::proto::raft_peer_client::RaftPeerClient;
use quiver_raft::proto::{Json, RaftRequest};
use quiver_raft::PEER_TLS_SERVER_NAME;
use quiver_transfer::{ChunkRef, Hash, PeerClient, QuicTls};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// The longest any test waits for what it expects before it fails.
const BOUND: Duration = Duration::from_secs(30);

fn actor() -> Actor {
    Actor {
        name: "ops".into(),
        authenticated: true,
    }
}

fn create_model(name: &str) -> Op {
    Op::CreateModel {
        name: name.into(),
        namespace: "team".into(),
        description: String::new(),
        risk_tier: RiskTier::Low,
        tags: BTreeMap::new(),
    }
}

/// Three nodes on loopback under one CA; node 1 founded the cluster.
struct Cluster {
    nodes: Vec<Arc<Node>>,
    ca: ClusterCa,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with(|ca, id| ca.issue(id)).await
    }

    /// Three nodes, node `id` with the certificate `issue(ca, id)` makes.
    async fn start_with(issue: impl Fn(&ClusterCa, u64) -> anyhow::Result<NodeCert>) -> Cluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = ClusterCa::create(&dir.path().join("ca"), "peer-certs").expect("a cluster CA");
        let mut nodes: Vec<Arc<Node>> = Vec::new();
        for id in 1..=3u64 {
            let data_dir = dir.path().join(format!("node-{id}"));
            issue(&ca, id)
                .expect("a node certificate")
                .write(&default_tls_dir(&data_dir))
                .expect("write it");
            let tls = NodeCert::load(&default_tls_dir(&data_dir)).expect("load it");
            let peer = TcpListener::bind("127.0.0.1:0").await.expect("bind peer");
            let node = Node::open(
                NodeConfig {
                    node_id: id,
                    data_dir,
                    api_addr: "127.0.0.1:1".into(),
                    peer_addr: peer.local_addr().expect("peer address").to_string(),
                    quic_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                    region: "test".into(),
                    zone: String::new(),
                    join: nodes.first().map(|n| n.core.info.peer_addr.clone()),
                    tls,
                    write_quorum: None,
                    snapshot_every: 10_000,
                    heartbeat_ms: quiver_raft::HEARTBEAT_INTERVAL_MS,
                    crash_drills: false,
                    disk_reserve_bytes: 0,
                    chunk_gc_grace: None,
                    allow_anonymous_reads: false,
                },
                peer,
            )
            .await
            .unwrap_or_else(|e| panic!("start node {id}: {e:#}"));
            nodes.push(node);
        }
        // `ops`, whose writes these tests make, is the cluster's admin: a write refused here is
        // refused for its certificate, never for its role.
        let token = quiver_node::auth::PresentedToken::random();
        nodes[0]
            .propose(
                Actor {
                    name: quiver_node::auth::node_principal(1),
                    authenticated: true,
                },
                Op::Bootstrap {
                    id: token.id.clone(),
                    principal: actor().name,
                    secret_hash: token.secret_hash(),
                },
            )
            .await
            .expect("bootstrap ops as the cluster's admin");
        // Every node checks a write's role against its own applied state: wait until each has
        // applied the bootstrap, so that no test's first write races it through a follower.
        let deadline = Instant::now() + BOUND;
        for node in &nodes {
            while !node
                .read(Consistency::Stale, |app, txn| app.any_grant(txn))
                .await
                .expect("read the grants")
            {
                assert!(
                    Instant::now() < deadline,
                    "a node never applied the bootstrap"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Cluster { nodes, ca, dir }
    }

    fn node(&self, id: u64) -> &Arc<Node> {
        &self.nodes[id as usize - 1]
    }

    fn tls_dir(&self, id: u64) -> PathBuf {
        default_tls_dir(&self.dir.path().join(format!("node-{id}")))
    }

    /// A chunk held by node `id`'s store.
    fn put_chunk(&self, id: u64, data: &[u8]) -> ChunkRef {
        let hash = Hash::of(data);
        self.node(id)
            .chunks
            .put(&hash, data)
            .expect("store a chunk");
        ChunkRef {
            hash,
            size_bytes: data.len() as u32,
        }
    }

    async fn stop(self) {
        for node in self.nodes.iter().rev() {
            let _ = node.shutdown().await;
        }
    }
}

/// A raw peer RPC client presenting `cert` to node `to`'s peer port.
async fn peer_client(cluster: &Cluster, to: u64, cert: &NodeCert) -> RaftPeerClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cluster.ca_pem()))
        .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem))
        .domain_name(PEER_TLS_SERVER_NAME);
    let addr = &cluster.node(to).core.info.peer_addr;
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .expect("an endpoint")
        .connect_timeout(Duration::from_secs(2))
        .tls_config(tls)
        .expect("client TLS")
        .connect_lazy();
    RaftPeerClient::new(channel)
}

impl Cluster {
    fn ca_pem(&self) -> String {
        NodeCert::load(&self.tls_dir(1))
            .expect("node 1's CA")
            .ca_cert_pem
    }
}

/// A Vote from candidate `candidate` to node `to`, for an old term: a node that takes it
/// answers (no) without disturbing the cluster.
async fn vote(
    client: &mut RaftPeerClient<Channel>,
    to: u64,
    candidate: u64,
) -> Result<(), tonic::Status> {
    let request = VoteRequest::<u64>::new(Vote::new(1, candidate), None);
    let json = serde_json::to_vec(&request).expect("encode a vote");
    client
        .vote(RaftRequest { target: to, json })
        .await
        .map(|_| ())
}

/// A write forwarded to the leader as a follower forwards it.
async fn forward(
    client: &mut RaftPeerClient<Channel>,
    node: &Node,
    op: Op,
) -> Result<(), tonic::Status> {
    let cmd = node.stamp(actor(), op);
    let json = serde_json::to_vec(&serde_json::json!({ "cmd": cmd, "timeout_ms": 5_000 }))
        .expect("encode a forward");
    let reply = client.forward(Json { json }).await?.into_inner().json;
    let result: serde_json::Value = serde_json::from_slice(&reply).expect("a JSON reply");
    match result.get("Ok") {
        Some(_) => Ok(()),
        None => Err(tonic::Status::aborted(format!(
            "the leader answered {result}"
        ))),
    }
}

/// Node `node_id`'s own request to join, at `addr`.
async fn add_member(
    client: &mut RaftPeerClient<Channel>,
    node_id: u64,
    addr: &str,
) -> Result<(), tonic::Status> {
    let json = serde_json::to_vec(&serde_json::json!({
        "node_id": node_id, "addr": addr, "forwarded": false, "fresh": false, "timeout_ms": 5_000
    }))
    .expect("encode a join");
    client.add_member(Json { json }).await.map(|_| ())
}

async fn status(client: &mut RaftPeerClient<Channel>) -> Result<(), tonic::Status> {
    client
        .status(Json {
            json: b"{}".to_vec(),
        })
        .await
        .map(|_| ())
}

fn quic_tls(cluster: &Cluster, cert: &NodeCert) -> QuicTls {
    QuicTls {
        ca_cert_pem: cluster.ca_pem(),
        cert_pem: cert.cert_pem.clone(),
        key_pem: cert.key_pem.clone(),
    }
}

/// Fetches `chunk` from node `from` presenting `cert`.
async fn fetch(
    cluster: &Cluster,
    from: u64,
    cert: &NodeCert,
    chunk: &ChunkRef,
) -> Result<(), String> {
    let client = PeerClient::new(&quic_tls(cluster, cert)).map_err(|e| e.to_string())?;
    let got = tokio::time::timeout(BOUND, client.fetch(cluster.node(from).quic_addr(), chunk))
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    assert_eq!(Hash::of(&got), chunk.hash);
    Ok(())
}

async fn model_exists(node: &Node, name: &str) -> bool {
    let name = name.to_string();
    node.read(Consistency::Linearizable, move |app, txn| {
        Ok(app.get_model(txn, &name).is_ok())
    })
    .await
    .expect("a linearizable read")
}

fn refused(result: Result<(), tonic::Status>, what: &str) {
    match result {
        Ok(()) => panic!("{what}: accepted"),
        Err(status) => assert_ne!(status.code(), Code::Ok, "{what}"),
    }
}

fn denied(result: Result<(), tonic::Status>, what: &str) {
    match result {
        Ok(()) => panic!("{what}: accepted"),
        Err(status) => assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{what}: {}",
            status.message()
        ),
    }
}

fn secs_ago(secs: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_can_neither_join_forward_vote_nor_fetch() {
    let cluster = Cluster::start().await;
    let chunk = cluster.put_chunk(1, b"held by node one");
    let other = ClusterCa::create(&cluster.dir.path().join("other-ca"), "other").expect("a CA");
    // It names a member and the client trusts the cluster CA: only the server's check of the
    // client certificate's issuer stands in the way.
    let foreign = other.issue(2).expect("a certificate under another CA");
    let leader = cluster
        .node(1)
        .raft
        .wait_for_leader(BOUND)
        .await
        .expect("a leader");

    let mut client = peer_client(&cluster, leader, &foreign).await;
    refused(vote(&mut client, leader, 2).await, "vote");
    refused(
        forward(&mut client, cluster.node(2), create_model("foreign")).await,
        "forward",
    );
    refused(
        add_member(&mut client, 2, &cluster.node(2).core.info.peer_addr).await,
        "join",
    );
    assert!(fetch(&cluster, 1, &foreign, &chunk).await.is_err(), "fetch");
    assert!(!model_exists(cluster.node(1), "foreign").await);
    // The same requests with node 2's own certificate are served.
    let own = NodeCert::load(&cluster.tls_dir(2)).expect("node 2's certificate");
    fetch(&cluster, 1, &own, &chunk)
        .await
        .expect("fetch with a member's certificate");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_on_raft_and_quic() {
    let cluster = Cluster::start().await;
    let chunk = cluster.put_chunk(1, b"held by node one, again");
    let expired = cluster
        .ca
        .issue_valid(2, secs_ago(2 * 86_400), secs_ago(86_400))
        .expect("an expired certificate of a member");
    let leader = cluster
        .node(1)
        .raft
        .wait_for_leader(BOUND)
        .await
        .expect("a leader");
    let mut client = peer_client(&cluster, leader, &expired).await;
    refused(status(&mut client).await, "status");
    refused(vote(&mut client, leader, 2).await, "vote");
    refused(
        forward(&mut client, cluster.node(2), create_model("expired")).await,
        "forward",
    );
    assert!(fetch(&cluster, 1, &expired, &chunk).await.is_err(), "fetch");
    assert!(!model_exists(cluster.node(1), "expired").await);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_nodes_certificate_can_neither_vote_forward_join_nor_fetch() {
    let cluster = Cluster::start().await;
    let chunk = cluster.put_chunk(1, b"held by node one, once more");
    let old = NodeCert::load(&cluster.tls_dir(3)).expect("node 3's certificate");
    // Before its removal node 3's certificate is served.
    let mut before = peer_client(&cluster, 1, &old).await;
    status(&mut before)
        .await
        .expect("a member's status request");
    fetch(&cluster, 1, &old, &chunk)
        .await
        .expect("a member's fetch");

    cluster
        .node(1)
        .remove_member(actor(), 3)
        .await
        .expect("remove node 3");
    // Every remaining node learns of the removal from its applied state.
    let deadline = Instant::now() + BOUND;
    for id in [1, 2] {
        let node = cluster.node(id);
        loop {
            let removed = node
                .read(Consistency::Stale, |app, txn| app.removed_nodes(txn))
                .await
                .expect("read");
            let gate_knows = node
                .peer_access()
                .expect("a gate")
                .removed()
                .contains_key(&3);
            if removed.contains_key(&3) && gate_knows {
                break;
            }
            assert!(Instant::now() < deadline, "node {id} never refused node 3");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let leader = cluster
        .node(1)
        .raft
        .wait_for_leader(BOUND)
        .await
        .expect("a leader");
    for id in [1, 2] {
        let mut client = peer_client(&cluster, id, &old).await;
        denied(vote(&mut client, id, 3).await, "vote");
        denied(status(&mut client).await, "status");
        let addr = cluster.node(3).core.info.peer_addr.clone();
        denied(add_member(&mut client, 3, &addr).await, "join");
    }
    let mut client = peer_client(&cluster, leader, &old).await;
    denied(
        forward(&mut client, cluster.node(1), create_model("removed")).await,
        "forward",
    );
    let fetched = fetch(&cluster, 1, &old, &chunk).await;
    assert!(fetched.is_err(), "fetch: {fetched:?}");
    // Node 3 itself, still running, cannot write through the cluster or join again.
    assert!(cluster
        .node(3)
        .propose(actor(), create_model("from-three"))
        .await
        .is_err());
    assert!(cluster
        .node(3)
        .raft
        .join(&cluster.node(1).core.info.peer_addr)
        .await
        .is_err());
    assert!(!model_exists(cluster.node(1), "removed").await);
    assert!(!model_exists(cluster.node(1), "from-three").await);
    assert!(
        cluster
            .node(1)
            .raft
            .metrics()
            .membership_config
            .membership()
            .get_node(&3)
            .is_none(),
        "node 3 did not get back in"
    );

    // A certificate issued after the removal is a new one: node 3 may be let back with it.
    let removed_at_ms = cluster
        .node(1)
        .read(Consistency::Stale, |app, txn| app.removed_nodes(txn))
        .await
        .expect("read")[&3];
    let after = UNIX_EPOCH + Duration::from_millis(removed_at_ms as u64 + 1_000);
    let renewed = cluster
        .ca
        .issue_valid(3, after, after + Duration::from_secs(86_400))
        .expect("a certificate issued after the removal");
    let deadline = Instant::now() + BOUND;
    loop {
        // Valid from the next whole second after the removal: poll until it is.
        let mut client = peer_client(&cluster, 1, &renewed).await;
        match status(&mut client).await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "the renewed certificate: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_must_name_the_node_its_certificate_names() {
    let cluster = Cluster::start().await;
    let two = NodeCert::load(&cluster.tls_dir(2)).expect("node 2's certificate");
    let mut client = peer_client(&cluster, 1, &two).await;
    // Node 2 standing for election as itself is answered; as node 3 it is refused.
    vote(&mut client, 1, 2)
        .await
        .expect("node 2's own vote request");
    denied(vote(&mut client, 1, 3).await, "a vote request for node 3");
    // Node 2 may ask to join for itself (it is already a member: answered), not for node 7.
    add_member(&mut client, 2, &cluster.node(2).core.info.peer_addr)
        .await
        .expect("node 2's own join");
    denied(
        add_member(&mut client, 7, "127.0.0.1:9").await,
        "a join for node 7",
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_used_for_new_connections_while_the_cluster_serves() {
    // Node 2 starts with a certificate that expires soon after the cluster is up.
    let soon = SystemTime::now() + Duration::from_secs(12);
    let cluster = Cluster::start_with(|ca, id| match id {
        2 => ca.issue_valid(2, secs_ago(60), soon),
        _ => ca.issue(id),
    })
    .await;
    let dir = cluster.tls_dir(2);
    for (i, id) in [1u64, 2, 3].into_iter().enumerate() {
        cluster
            .node(id)
            .propose(actor(), create_model(&format!("before-{i}")))
            .await
            .expect("a write before the rotation");
    }
    // Renewed the way `cert rotate` does it, and picked up by the running node.
    let renewed = cluster.ca.issue(2).expect("a renewed certificate");
    renewed.replace(&dir).expect("rotate");
    assert!(!cluster
        .node(1)
        .reload_certificate(&cluster.tls_dir(1))
        .expect("unchanged"));
    assert!(cluster.node(2).reload_certificate(&dir).expect("reload"));
    assert!(!cluster
        .node(2)
        .reload_certificate(&dir)
        .expect("reload once"));
    assert_eq!(
        cluster.node(2).certificate_pem(),
        Some(renewed.cert_pem.clone())
    );
    // New connections to node 2 see the renewed certificate.
    assert_eq!(
        server_cert(&cluster, 2).await,
        pem_der(&renewed.cert_pem),
        "node 2's peer port presents the renewed certificate"
    );

    // Once the first certificate has expired, its peers refuse every request made with it:
    // writes and reads through node 2 (forwarded, read index) and its chunk fetches keep
    // working only because node 2 connects with the renewed one.
    let deadline = Instant::now() + BOUND;
    while SystemTime::now() <= soon + Duration::from_secs(1) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let chunk = cluster.put_chunk(1, b"fetched by node two after its rotation");
    for i in 0..3 {
        let name = format!("after-{i}");
        cluster
            .node(2)
            .propose(actor(), create_model(&name))
            .await
            .expect("a write through node 2 after its first certificate expired");
        for id in [1u64, 2, 3] {
            assert!(model_exists(cluster.node(id), &name).await, "node {id}");
        }
    }
    let deadline = Instant::now() + BOUND;
    loop {
        // A pooled connection made with the expired certificate is closed at its next
        // request; the next one is made with the renewed certificate.
        match cluster
            .node(2)
            .peers
            .fetch(cluster.node(1).quic_addr(), &chunk)
            .await
        {
            Ok(data) => {
                assert_eq!(Hash::of(&data), chunk.hash);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "node 2's fetch: {e}"),
        }
    }
    cluster.stop().await;
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a certificate")
        .to_vec()
}

/// The certificate node `id`'s peer port presents to a new connection (made with node 1's).
async fn server_cert(cluster: &Cluster, id: u64) -> Vec<u8> {
    let ca = cluster.ca_pem();
    let client = NodeCert::load(&cluster.tls_dir(1)).expect("node 1's certificate");
    let addr = cluster.node(id).core.info.peer_addr.clone();
    tokio::task::spawn_blocking(move || {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.as_bytes()).expect("CA"))
            .expect("a root");
        let chain = vec![CertificateDer::from_pem_slice(client.cert_pem.as_bytes()).expect("cert")];
        let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).expect("key");
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client config");
        let name = ServerName::try_from(PEER_TLS_SERVER_NAME).expect("a name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("connection");
        let mut tcp = std::net::TcpStream::connect(&addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).expect("handshake");
        }
        conn.peer_certificates().expect("a server certificate")[0].to_vec()
    })
    .await
    .expect("the handshake task")
}
