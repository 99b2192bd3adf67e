//! A one-node cluster for this crate's tests: Raft on a temporary directory, chunks in memory,
//! no chunk peers, time as the test sets it, and a first admin `root` bootstrapped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quiver_raft::{RaftNode, RaftNodeConfig};
use quiver_transfer::{ChunkPeers, ChunkRef, FetchError, Hash, MemoryChunkSource};

use crate::auth::{self, PresentedToken};
use crate::command::Op;
use crate::domain::{Actor, NodeInfo};
use crate::env::{Clock, Env, RandomIds};
use crate::node::{CoreConfig, Node, PlantedNodeBugs};
use crate::replication::PlantedBugs;
use crate::state::RegistryApp;

/// Time as the test sets it.
pub struct TestClock(pub AtomicI64);

impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A node alone: no chunk peers.
#[derive(Clone)]
pub struct NoPeers;

impl ChunkPeers for NoPeers {
    async fn fetch_raw(&self, peer: SocketAddr, _chunk: &ChunkRef) -> Result<Vec<u8>, FetchError> {
        Err(FetchError::Connect {
            peer,
            detail: "no peers in this test".into(),
        })
    }

    async fn push(&self, peer: SocketAddr, _hash: &Hash, _data: &[u8]) -> Result<(), FetchError> {
        Err(FetchError::Connect {
            peer,
            detail: "no peers in this test".into(),
        })
    }
}

pub type TestNode = Node<MemoryChunkSource, NoPeers>;

/// A started one-node cluster.
pub struct OneNode {
    pub node: Arc<TestNode>,
    pub clock: Arc<TestClock>,
    /// The first admin, principal `root`, and its token.
    pub admin: Actor,
    pub root: PresentedToken,
    pub dir: tempfile::TempDir,
}

/// Starts a one-node cluster whose clock reads `start_ms`, with `root` its first admin.
pub async fn one_node(start_ms: i64) -> OneNode {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the peer listener");
    let addr = listener.local_addr().expect("peer address").to_string();
    let config = RaftNodeConfig::new(1, dir.path().join("raft"), addr.clone());
    let raft = RaftNode::<RegistryApp>::start_with_listener(config, listener)
        .await
        .expect("start raft");
    raft.wait_for_leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    let clock = Arc::new(TestClock(AtomicI64::new(start_ms)));
    let core = CoreConfig {
        info: NodeInfo {
            node_id: 1,
            api_addr: "127.0.0.1:1".into(),
            peer_addr: addr,
            quic_addr: "127.0.0.1:2".into(),
            region: "test".into(),
            zone: "test-a".into(),
        },
        data_dir: dir.path().to_path_buf(),
        write_quorum: None,
        scrub_bytes_per_pass: 0,
        crash_drills: false,
        disk_reserve_bytes: 0,
        chunk_gc_grace: None,
        allow_anonymous_reads: false,
        planted: PlantedBugs::default(),
        planted_node: PlantedNodeBugs::default(),
    };
    let env = Env {
        clock: clock.clone(),
        ids: Arc::new(RandomIds),
        chunks: MemoryChunkSource::default(),
        peers: NoPeers,
    };
    let node = Node::assemble(core, env, raft);
    let root = PresentedToken::random();
    node.propose(
        Actor {
            name: auth::node_principal(1),
            authenticated: true,
        },
        Op::Bootstrap {
            id: root.id.clone(),
            principal: "root".into(),
            secret_hash: root.secret_hash(),
        },
    )
    .await
    .expect("bootstrap the first admin");
    OneNode {
        node,
        clock,
        admin: Actor {
            name: "root".into(),
            authenticated: true,
        },
        root,
        dir,
    }
}
