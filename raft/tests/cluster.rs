//! Multi-node clusters over the real peer transport: tonic on 127.0.0.1 with mutual TLS, each
//! node on a port-0 listener, certificates from a throwaway CA made with rcgen.
//!
//! Every wait is bounded ([`WAIT`]) and driven by openraft's metrics, never by sleeping. The
//! tests run one at a time (`SERIAL`): each starts several nodes that fsync and heartbeat every
//! 100 ms, and running them all at once on a small CI machine would make elections flap.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{all_pairs, expected_pairs, key, set, value, KvApp, KvCommand, KvResponse, WAIT};
use quiver_raft::proto::raft_peer_client::RaftPeerClient;
use quiver_raft::proto::Json;
use quiver_raft::{
    MembershipError, NodeId, PeerTls, RaftNode, RaftNodeConfig, WriteError, PEER_TLS_SERVER_NAME,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

type Node = RaftNode<KvApp>;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// Certificates

/// A throwaway certificate authority.
struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A node certificate: SAN DNS = PEER_TLS_SERVER_NAME, usable as server and as client.
    /// Returns (cert PEM, key PEM).
    fn issue(&self, common_name: &str) -> (String, String) {
        let mut params =
            CertificateParams::new(vec![PEER_TLS_SERVER_NAME.to_string()]).expect("node params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("node key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign node cert");
        (cert.pem(), key.serialize_pem())
    }

    fn peer_tls(&self, common_name: &str) -> PeerTls {
        let (cert_pem, key_pem) = self.issue(common_name);
        PeerTls {
            ca_cert_pem: self.cert_pem.clone(),
            cert_pem,
            key_pem,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster harness

async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    (listener, addr)
}

/// Nodes of one cluster, each with its own data dir under one temp dir.
struct Cluster {
    ca: Ca,
    _root: TempDir,
    root: PathBuf,
    tweak: fn(&mut RaftNodeConfig),
    nodes: BTreeMap<NodeId, Node>,
    addrs: BTreeMap<NodeId, String>,
}

fn no_tweak(_: &mut RaftNodeConfig) {}

impl Cluster {
    /// Node 1 initialises; nodes 2..=n join through node 1.
    async fn start(n: NodeId, tweak: fn(&mut RaftNodeConfig)) -> Cluster {
        let root = tempfile::tempdir().expect("tempdir");
        let mut cluster = Cluster {
            ca: Ca::new("quiver test cluster CA"),
            root: root.path().to_path_buf(),
            _root: root,
            tweak,
            nodes: BTreeMap::new(),
            addrs: BTreeMap::new(),
        };
        for id in 1..=n {
            let join = (id > 1).then(|| cluster.addrs[&1].clone());
            let (listener, addr) = bind().await;
            let cfg = cluster.config(id, &addr, join);
            let node = RaftNode::start_with_listener(cfg, listener)
                .await
                .unwrap_or_else(|e| panic!("start node {id}: {e:#}"));
            cluster.nodes.insert(id, node);
            cluster.addrs.insert(id, addr);
        }
        let ids: Vec<NodeId> = (1..=n).collect();
        for node in cluster.nodes.values() {
            wait_voters(node, &ids).await;
        }
        cluster
    }

    fn config(&self, id: NodeId, addr: &str, join: Option<String>) -> RaftNodeConfig {
        let mut cfg =
            RaftNodeConfig::new(id, self.root.join(format!("node-{id}")), addr.to_string());
        cfg.tls = Some(self.ca.peer_tls(&format!("node-{id}")));
        cfg.join = join;
        (self.tweak)(&mut cfg);
        cfg
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    /// Wait until every running node names the same leader; returns it.
    async fn leader(&self) -> NodeId {
        let first = self.nodes.values().next().expect("a node");
        let leader = first.wait_for_leader(WAIT).await.expect("a leader");
        for node in self.nodes.values() {
            node.raft()
                .wait(Some(WAIT))
                .metrics(|m| m.current_leader == Some(leader), "same leader")
                .await
                .unwrap_or_else(|e| {
                    panic!("node {} agrees on leader {leader}: {e}", node.node_id())
                });
        }
        leader
    }

    fn followers(&self, leader: NodeId) -> Vec<NodeId> {
        self.nodes
            .keys()
            .copied()
            .filter(|id| *id != leader)
            .collect()
    }

    async fn stop(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("running node");
        node.shutdown().await.expect("shutdown");
    }

    async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

/// Wait until `node`'s membership is exactly the uniform voter set `want`.
async fn wait_voters(node: &Node, want: &[NodeId]) {
    let want: BTreeSet<NodeId> = want.iter().copied().collect();
    node.raft()
        .wait(Some(WAIT))
        .metrics(
            |m| {
                let membership = m.membership_config.membership();
                membership.get_joint_config().len() == 1
                    && membership.voter_ids().collect::<BTreeSet<_>>() == want
                    && membership.nodes().count() == want.len()
            },
            "voter set",
        )
        .await
        .unwrap_or_else(|e| panic!("node {} has voters {want:?}: {e}", node.node_id()));
}

fn voters(node: &Node) -> BTreeSet<NodeId> {
    node.metrics()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

/// A barrier, then all pairs: a linearizable read of the whole state.
async fn read_all(node: &Node) -> Vec<(String, String)> {
    node.linearizable_barrier()
        .await
        .unwrap_or_else(|e| panic!("barrier on node {}: {e}", node.node_id()));
    all_pairs(node).expect("read")
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_forward_writes_and_serve_linearizable_reads_on_followers() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, no_tweak).await;
    let leader = cluster.leader().await;
    let followers = cluster.followers(leader);
    let (f1, f2) = (cluster.node(followers[0]), cluster.node(followers[1]));

    // Status: three voters, exactly one leader, replication progress fetched from the leader.
    let mut leaders = 0;
    for node in cluster.nodes.values() {
        let status = node.cluster_status().await.expect("status");
        assert_eq!(status.node_id, node.node_id());
        assert_eq!(status.leader_id, Some(leader));
        assert_eq!(status.members.len(), 3, "{status:?}");
        assert!(status.members.iter().all(|m| m.voter), "{status:?}");
        assert!(
            status.members.iter().all(|m| m.matched_index.is_some()),
            "progress known on node {}: {status:?}",
            node.node_id()
        );
        let addrs: Vec<&str> = status.members.iter().map(|m| m.addr.as_str()).collect();
        let want: Vec<&str> = cluster.addrs.values().map(String::as_str).collect();
        assert_eq!(addrs, want);
        if status.state == "Leader" {
            leaders += 1;
        }
    }
    assert_eq!(leaders, 1, "exactly one node reports itself leader");
    assert_eq!(
        f1.leader_addr(),
        Some((leader, cluster.addrs[&leader].clone()))
    );

    // A write sent to a follower is forwarded and returns the applied response.
    let resp = f1.write(set(0)).await.expect("write via follower");
    assert_eq!(resp, KvResponse { previous: None });
    let resp = f1
        .write(KvCommand::Set {
            key: key(0),
            value: "second".into(),
        })
        .await
        .expect("overwrite via follower");
    assert_eq!(
        resp.previous,
        Some(value(0)),
        "the app's response comes back"
    );

    // The other follower reads it after a barrier (ReadIndex from the leader).
    f2.linearizable_barrier()
        .await
        .expect("barrier on follower");
    let got = f2
        .read(|app, rtxn| app.get(rtxn, &key(0)))
        .expect("read on follower");
    assert_eq!(got.as_deref(), Some("second"));

    // Leadership transfer, asked of a follower (forwarded to the leader).
    let new_leader = f2
        .transfer_leadership(Some(followers[0]))
        .await
        .expect("transfer leadership");
    assert_ne!(new_leader, leader);
    let agreed = cluster.leader().await;
    assert_ne!(agreed, leader, "leadership moved");
    // The old leader is now a follower and forwards.
    let resp = cluster
        .node(leader)
        .write(set(1))
        .await
        .expect("write via the old leader");
    assert_eq!(resp.previous, None);
    for node in cluster.nodes.values() {
        assert_eq!(
            read_all(node).await,
            vec![(key(0), "second".to_string()), (key(1), value(1))]
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_and_old_leader_rejoins_from_disk() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, no_tweak).await;
    for i in 0..10 {
        cluster.node(1).write(set(i)).await.expect("write");
    }
    let old = cluster.leader().await;
    cluster.stop(old).await;

    // The remaining two elect a new leader.
    let survivors = cluster.followers(old);
    for id in &survivors {
        cluster
            .node(*id)
            .raft()
            .wait(Some(WAIT))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != old),
                "a new leader",
            )
            .await
            .expect("new leader elected");
    }
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old);
    // Writes are accepted through either survivor.
    for (n, id) in survivors.iter().enumerate() {
        for i in 0..5 {
            let k = 10 + n * 5 + i;
            cluster
                .node(*id)
                .write(set(k))
                .await
                .expect("write after failover");
        }
    }

    // The old leader restarts from its data dir, on its advertised address, and follows.
    let addr = cluster.addrs[&old].clone();
    let listener = TcpListener::bind(&addr)
        .await
        .expect("rebind the old address");
    let cfg = cluster.config(old, &addr, None);
    let node = RaftNode::start_with_listener(cfg, listener)
        .await
        .expect("restart old leader");
    cluster.nodes.insert(old, node);
    let restarted = cluster.node(old);
    restarted
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.current_leader.is_some() && m.current_leader != Some(old),
            "old leader follows",
        )
        .await
        .expect("old leader follows the new one");
    let leader = cluster.leader().await;
    assert_ne!(leader, old);
    for node in cluster.nodes.values() {
        assert_eq!(
            read_all(node).await,
            expected_pairs(20),
            "node {}",
            node.node_id()
        );
    }
    // And it takes part: a write through it commits everywhere.
    restarted
        .write(set(20))
        .await
        .expect("write via restarted node");
    for node in cluster.nodes.values() {
        assert_eq!(read_all(node).await, expected_pairs(21));
    }
    cluster.shutdown().await;
}

/// The active log segment of node `id` (the newest `.wal` file in its log dir).
fn active_segment(cluster: &Cluster, id: NodeId) -> PathBuf {
    let dir = cluster
        .root
        .join(format!("node-{id}"))
        .join(quiver_raft::LOG_DIR_NAME);
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("list the log dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    segments.pop().expect("a segment")
}

/// A byte flipped in the middle of a follower's active log segment (not a torn write): the
/// follower refuses to start instead of cutting its log there, the other two keep every
/// acknowledged entry and accept writes, and the recovery the error names (remove the node,
/// clear its data dir, join again) brings it back with everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_damaged_log_refuses_to_start_and_rejoins_empty_losing_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, no_tweak).await;
    for i in 0..30 {
        cluster.node(1).write(set(i)).await.expect("write");
    }
    let leader = cluster.leader().await;
    let damaged = cluster.followers(leader)[0];
    let addr = cluster.addrs[&damaged].clone();
    cluster.stop(damaged).await;
    let segment = active_segment(&cluster, damaged);
    let mut bytes = std::fs::read(&segment).expect("read the segment");
    let written = bytes.iter().rposition(|b| *b != 0).expect("records") + 1;
    bytes[written / 2] ^= 0x01;
    std::fs::write(&segment, bytes).expect("write the segment");

    let listener = TcpListener::bind(&addr).await.expect("rebind");
    let err = match RaftNode::<KvApp>::start_with_listener(
        cluster.config(damaged, &addr, None),
        listener,
    )
    .await
    {
        Ok(_) => panic!("node {damaged} started on a damaged log"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("is damaged"), "{err}");

    let survivor = cluster.followers(damaged)[0];
    for i in 30..35 {
        cluster
            .node(survivor)
            .write(set(i))
            .await
            .expect("write without the damaged node");
    }
    for node in cluster.nodes.values() {
        assert_eq!(read_all(node).await, expected_pairs(35));
    }

    cluster
        .node(survivor)
        .remove_member(damaged)
        .await
        .expect("remove the damaged node");
    std::fs::remove_dir_all(cluster.root.join(format!("node-{damaged}"))).expect("clear it");
    let listener = TcpListener::bind(&addr).await.expect("rebind");
    let join = Some(cluster.addrs[&survivor].clone());
    let node = RaftNode::start_with_listener(cluster.config(damaged, &addr, join), listener)
        .await
        .expect("rejoin with an empty data dir");
    cluster.nodes.insert(damaged, node);
    let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
    for node in cluster.nodes.values() {
        wait_voters(node, &ids).await;
    }
    cluster
        .node(damaged)
        .write(set(35))
        .await
        .expect("write through the rejoined node");
    for node in cluster.nodes.values() {
        assert_eq!(read_all(node).await, expected_pairs(36));
    }
    cluster.shutdown().await;
}

/// A new leader whose followers lack a backlog of large entries (100 KB each, 4 MB in all, as
/// commands a client padded to the limit would make) sends it in AppendEntries of at most
/// `APPEND_ENTRIES_BYTES_MAX`: each is answered within the heartbeat that openraft allows it,
/// where one message with the whole backlog timed out on every retry and the cluster stopped
/// taking writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_replicates_a_backlog_of_large_entries_in_bounded_messages() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, no_tweak).await;
    let leader = cluster.leader().await;
    let behind = cluster.followers(leader)[0];
    let addr = cluster.addrs[&behind].clone();
    cluster.stop(behind).await;
    let big = "v".repeat(100_000);
    for i in 0..40 {
        cluster
            .node(leader)
            .write(KvCommand::Set {
                key: key(i),
                value: big.clone(),
            })
            .await
            .expect("write a large entry");
    }
    // The follower comes back 40 entries behind; then the leader hands over to the other one,
    // which must send it the backlog.
    let listener = TcpListener::bind(&addr).await.expect("rebind");
    let node = RaftNode::start_with_listener(cluster.config(behind, &addr, None), listener)
        .await
        .expect("restart the follower");
    cluster.nodes.insert(behind, node);
    let other = cluster
        .followers(leader)
        .into_iter()
        .find(|id| *id != behind)
        .expect("a third node");
    cluster
        .node(leader)
        .transfer_leadership(Some(other))
        .await
        .expect("hand over");
    cluster
        .node(behind)
        .write(set(40))
        .await
        .expect("a write through the follower that was behind");
    for node in cluster.nodes.values() {
        let pairs = read_all(node).await;
        assert_eq!(pairs.len(), 41, "node {}", node.node_id());
    }
    cluster.shutdown().await;
}

/// Quiver sends the heartbeats itself (openraft's are off, its interval being the replication
/// timeout): an idle cluster must keep its leader, and followers must keep hearing from it, for
/// many election timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cluster_keeps_its_leader_on_quiver_s_heartbeats() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, no_tweak).await;
    let leader = cluster.leader().await;
    let term = cluster.node(leader).metrics().current_term;
    let quiet = Duration::from_millis(10 * quiver_raft::ELECTION_TIMEOUT_MAX_MS);
    // Waiting for what must not happen: a new term or another leader within `quiet`.
    let changes = futures::future::join_all(cluster.nodes.values().map(|node| async move {
        node.raft()
            .wait(Some(quiet))
            .metrics(
                |m| m.current_term != term || m.current_leader != Some(leader),
                "a new term or leader",
            )
            .await
    }))
    .await;
    for (node, changed) in cluster.nodes.values().zip(changes) {
        assert!(
            changed.is_err(),
            "node {}: an election in an idle cluster: {:?}",
            node.node_id(),
            node.metrics()
        );
    }
    cluster.shutdown().await;
}

fn small_snapshots(cfg: &mut RaftNodeConfig) {
    cfg.snapshot_logs_since_last = 20;
    cfg.logs_to_keep_after_snapshot = 5;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_member_catches_up_by_snapshot() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, small_snapshots).await;
    for i in 0..100 {
        cluster.node(2).write(set(i)).await.expect("write");
    }
    let leader = cluster.leader().await;
    // The leader's log no longer starts at 1: a newcomer cannot be fed from it.
    let m = cluster
        .node(leader)
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= 20),
            "leader purged its log",
        )
        .await
        .expect("leader purges");
    let purged = m.purged.expect("purged").index;

    let (listener, addr) = bind().await;
    let cfg = cluster.config(4, &addr, Some(cluster.addrs[&3].clone()));
    let node = RaftNode::start_with_listener(cfg, listener)
        .await
        .expect("node 4 joins");
    cluster.nodes.insert(4, node);
    cluster.addrs.insert(4, addr);
    for node in cluster.nodes.values() {
        wait_voters(node, &[1, 2, 3, 4]).await;
    }
    let newcomer = cluster.node(4);
    assert_eq!(read_all(newcomer).await, expected_pairs(100));
    let m = newcomer.metrics();
    let snapshot = m.snapshot.expect("node 4 has a snapshot");
    assert!(
        snapshot.index >= purged,
        "node 4's snapshot {snapshot} covers what the leader had purged ({purged})"
    );
    assert!(
        m.purged.is_some_and(|p| p.index > 0),
        "node 4's log starts after 1: {m:?}"
    );
    // It keeps up with new writes from the log.
    newcomer.write(set(100)).await.expect("write via node 4");
    for node in cluster.nodes.values() {
        assert_eq!(read_all(node).await, expected_pairs(101));
    }
    cluster.shutdown().await;
}

/// Call `Status` on `addr` with a hand-built client; `Ok` if the node answered.
async fn raw_status(addr: &str, scheme: &str, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    RaftPeerClient::new(channel)
        .status(Json {
            json: b"{}".to_vec(),
        })
        .await
        .map(|_| ())
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_certificates_can_neither_join_nor_call() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, no_tweak).await;
    let entry = cluster.addrs[&1].clone();
    let foreign = Ca::new("some other CA");

    // A node whose CA and certificate are both foreign: the handshake fails, it cannot join.
    let (listener, addr) = bind().await;
    let mut cfg = cluster.config(9, &addr, Some(entry.clone()));
    cfg.tls = Some(foreign.peer_tls("node-9"));
    let started = Instant::now();
    let err = RaftNode::<KvApp>::start_with_listener(cfg, listener)
        .await
        .err()
        .expect("a foreign node cannot join");
    let msg = format!("{err:#}");
    println!("foreign node: {msg}");
    assert!(msg.contains("cannot join the cluster through"), "{msg}");
    assert!(started.elapsed() < WAIT, "fails promptly");

    // A certificate from a foreign CA next to the cluster's CA is refused before any RPC.
    let (listener, addr) = bind().await;
    let mut cfg = cluster.config(9, &addr, Some(entry.clone()));
    let (cert_pem, key_pem) = foreign.issue("node-9");
    cfg.tls = Some(PeerTls {
        ca_cert_pem: cluster.ca.cert_pem.clone(),
        cert_pem,
        key_pem,
    });
    let err = RaftNode::<KvApp>::start_with_listener(cfg, listener)
        .await
        .err()
        .expect("a foreign certificate is refused");
    assert!(format!("{err:#}").contains("cert_pem"), "{err:#}");

    // The membership is unchanged.
    for node in cluster.nodes.values() {
        wait_voters(node, &[1, 2]).await;
    }
    let status = cluster.node(2).cluster_status().await.expect("status");
    assert_eq!(
        status.members.iter().map(|m| m.node_id).collect::<Vec<_>>(),
        vec![1, 2]
    );

    // At the RPC level: the server requires a client certificate from the cluster CA.
    let ca = Certificate::from_pem(&cluster.ca.cert_pem);
    let tls = |identity: Option<(String, String)>| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .domain_name(PEER_TLS_SERVER_NAME);
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        tls
    };
    raw_status(
        &entry,
        "https",
        Some(tls(Some(cluster.ca.issue("operator")))),
    )
    .await
    .expect("a cluster certificate is accepted");
    let refused = raw_status(&entry, "https", Some(tls(Some(foreign.issue("intruder"))))).await;
    assert!(refused.is_err(), "a foreign client certificate is refused");
    let refused = raw_status(&entry, "https", Some(tls(None))).await;
    assert!(
        refused.is_err(),
        "a client without a certificate is refused"
    );
    let refused = raw_status(&entry, "http", None).await;
    assert!(refused.is_err(), "plaintext is refused");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_node_id_is_refused_and_same_address_is_idempotent() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, no_tweak).await;
    let leader = cluster.leader().await;
    let f = cluster.followers(leader)[0];
    let f_addr = cluster.addrs[&f].clone();
    let entry = cluster.addrs[&leader].clone();

    // A second node with f's id, at another address, cannot join.
    let (listener, addr) = bind().await;
    let cfg = RaftNodeConfig {
        data_dir: cluster.root.join("impostor"),
        ..cluster.config(f, &addr, Some(entry.clone()))
    };
    let err = RaftNode::<KvApp>::start_with_listener(cfg, listener)
        .await
        .err()
        .expect("duplicate id refused");
    match err.downcast_ref::<MembershipError>() {
        Some(
            e @ MembershipError::DuplicateId {
                node_id,
                existing_addr,
            },
        ) => {
            assert_eq!((*node_id, existing_addr), (f, &f_addr));
            assert_eq!(
                e.to_string(),
                format!("node id {f} is already a member at {f_addr}; pick another --node-id")
            );
        }
        other => panic!("want DuplicateId, got {other:?} ({err:#})"),
    }

    // The same through the API, on every node; the same id at the same address is a no-op.
    for node in cluster.nodes.values() {
        match node.add_member(f, addr.clone()).await {
            Err(MembershipError::DuplicateId { node_id, .. }) => assert_eq!(node_id, f),
            other => panic!("want DuplicateId, got {other:?}"),
        }
        node.add_member(f, f_addr.clone())
            .await
            .expect("idempotent");
    }
    for node in cluster.nodes.values() {
        wait_voters(node, &[1, 2, 3]).await;
    }

    // f restarts from its data dir with a join address: it resumes, nothing to do.
    cluster.stop(f).await;
    let restart = |cluster: &Cluster| cluster.config(f, &f_addr, Some(entry.clone()));
    let listener = TcpListener::bind(&f_addr).await.expect("rebind");
    let node = Node::start_with_listener(restart(&cluster), listener)
        .await
        .expect("restart with a join address");
    node.shutdown().await.expect("shutdown");

    // But a node with f's id and address and empty storage is not taken for f.
    let listener = TcpListener::bind(&f_addr).await.expect("rebind");
    let cfg = RaftNodeConfig {
        data_dir: cluster.root.join("wiped"),
        ..restart(&cluster)
    };
    let err = RaftNode::<KvApp>::start_with_listener(cfg, listener)
        .await
        .err()
        .expect("a wiped voter is refused");
    assert!(format!("{err:#}").contains("empty storage"), "{err:#}");

    let listener = TcpListener::bind(&f_addr).await.expect("rebind");
    let node = RaftNode::start_with_listener(restart(&cluster), listener)
        .await
        .expect("restart");
    cluster.nodes.insert(f, node);
    for node in cluster.nodes.values() {
        wait_voters(node, &[1, 2, 3]).await;
    }
    cluster.node(f).write(set(0)).await.expect("write via f");
    for node in cluster.nodes.values() {
        assert_eq!(read_all(node).await, expected_pairs(1));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_members_down_to_the_last_voter() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, no_tweak).await;
    let leader = cluster.leader().await;
    let followers = cluster.followers(leader);
    let (a, b) = (followers[0], followers[1]);

    // Remove follower a, asked of follower b (forwarded to the leader).
    cluster.node(b).remove_member(a).await.expect("remove a");
    for id in [leader, b] {
        wait_voters(cluster.node(id), &[leader, b]).await;
    }
    cluster.stop(a).await;
    let status = cluster.node(leader).cluster_status().await.expect("status");
    assert_eq!(status.members.len(), 2, "{status:?}");
    assert!(status.members.iter().all(|m| m.voter));
    match cluster.node(leader).remove_member(a).await {
        Err(MembershipError::NotMember(id)) => assert_eq!(id, a),
        other => panic!("want NotMember, got {other:?}"),
    }

    // Remove b; then the leader is the last voter and cannot be removed.
    cluster
        .node(leader)
        .remove_member(b)
        .await
        .expect("remove b");
    wait_voters(cluster.node(leader), &[leader]).await;
    cluster.stop(b).await;
    match cluster.node(leader).remove_member(leader).await {
        Err(e @ MembershipError::LastVoter(_)) => assert_eq!(
            e.to_string(),
            format!(
                "refusing to remove node {leader}: it is the last voter, the cluster would have \
                 no one to decide"
            )
        ),
        other => panic!("want LastVoter, got {other:?}"),
    }
    assert_eq!(voters(cluster.node(leader)), BTreeSet::from([leader]));
    // A cluster of one still works.
    cluster.node(leader).write(set(0)).await.expect("write");
    assert_eq!(read_all(cluster.node(leader)).await, expected_pairs(1));
    cluster.shutdown().await;
}

fn short_write_timeout(cfg: &mut RaftNodeConfig) {
    cfg.write_timeout = Duration::from_secs(1);
}

/// Generous allowance for scheduling on a loaded machine on top of `write_timeout`.
const TIMEOUT_SLACK: Duration = Duration::from_millis(1500);

async fn assert_no_quorum(node: &Node, timeout: Duration) -> String {
    let started = Instant::now();
    let result = node.write(set(99)).await;
    let elapsed = started.elapsed();
    let msg = match result {
        Err(WriteError::NoQuorum(msg)) => {
            println!("node {}: {msg}", node.node_id());
            msg
        }
        other => panic!("want NoQuorum, got {other:?}"),
    };
    assert!(
        elapsed >= timeout - Duration::from_millis(100) && elapsed < timeout + TIMEOUT_SLACK,
        "failed after {elapsed:?}"
    );
    let started = Instant::now();
    match node.linearizable_barrier().await {
        Err(WriteError::NoQuorum(_)) => {}
        other => panic!("barrier: want NoQuorum, got {other:?}"),
    }
    assert!(started.elapsed() < timeout + TIMEOUT_SLACK);
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_on_a_leader_without_quorum_fails_in_time() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, short_write_timeout).await;
    let leader = cluster.leader().await;
    cluster.node(leader).write(set(0)).await.expect("write");
    for id in cluster.followers(leader) {
        cluster.stop(id).await;
    }
    let msg = assert_no_quorum(cluster.node(leader), Duration::from_secs(1)).await;
    assert!(msg.contains("1 of 3 voters reachable"), "{msg}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_on_a_follower_without_quorum_fails_in_time() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, short_write_timeout).await;
    let leader = cluster.leader().await;
    let followers = cluster.followers(leader);
    cluster
        .node(followers[0])
        .write(set(0))
        .await
        .expect("write");
    cluster.stop(leader).await;
    cluster.stop(followers[1]).await;
    let msg = assert_no_quorum(cluster.node(followers[0]), Duration::from_secs(1)).await;
    assert!(msg.contains("of 3 voters reachable"), "{msg}");
    cluster.shutdown().await;
}

#[test]
fn peer_tls_validation_names_the_problem() {
    let ca = Ca::new("quiver test cluster CA");
    ca.peer_tls("node-1")
        .validate()
        .expect("a proper node certificate");

    let issue = |san: &str, usages: Vec<ExtendedKeyUsagePurpose>| {
        let mut params = CertificateParams::new(vec![san.to_string()]).expect("params");
        params.extended_key_usages = usages;
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca.issuer).expect("sign");
        PeerTls {
            ca_cert_pem: ca.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    };
    let both = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let err = issue("node-1.example", both.clone())
        .validate()
        .unwrap_err();
    assert!(format!("{err:#}").contains(PEER_TLS_SERVER_NAME), "{err:#}");
    let err = issue(
        PEER_TLS_SERVER_NAME,
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )
    .validate()
    .unwrap_err();
    assert!(format!("{err:#}").contains("clientAuth"), "{err:#}");

    let mut wrong_key = ca.peer_tls("node-1");
    wrong_key.key_pem = ca.peer_tls("node-2").key_pem;
    let err = wrong_key.validate().unwrap_err();
    assert!(format!("{err:#}").contains("does not belong"), "{err:#}");
    let mut garbage = ca.peer_tls("node-1");
    garbage.ca_cert_pem = "not a pem".into();
    assert!(garbage.validate().is_err());
    // Debug never shows the key.
    let debug = format!("{:?}", ca.peer_tls("node-1"));
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
}

/// The node crate awaits these in tonic handlers and spawned tasks: they must be `Send`.
#[allow(dead_code)]
fn public_futures_are_send(node: &Node, listener: TcpListener) {
    fn send<T: Send>(_: T) {}
    send(node.write(set(0)));
    send(node.linearizable_barrier());
    send(node.add_member(2, String::new()));
    send(node.remove_member(2));
    send(node.cluster_status());
    send(node.transfer_leadership(None));
    send(node.step_down());
    send(node.shutdown());
    send(RaftNode::<KvApp>::start_with_listener(
        RaftNodeConfig::new(1, PathBuf::new(), String::new()),
        listener,
    ));
}
