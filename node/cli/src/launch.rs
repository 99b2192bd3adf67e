//! Starting nodes from their command-line options: one node (`serve`), or a
//! cluster of nodes in this process on loopback (`up`, and the cluster
//! benchmarks). Shared by `cli` and `bench`, so neither imports the other.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use quiver_node::auth::PresentedToken;
use quiver_node::command::Op;
use quiver_node::domain::Actor;
use quiver_node::node::Consistency;
use quiver_node::server::{serve, ApiLimits};
use quiver_node::tls::{default_ca_dir, default_tls_dir, ClusterCa, NodeCert};
use quiver_node::{Node, NodeConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// `--disk-reserve-bytes` of `up`'s nodes (and `serve`'s default).
pub const DISK_RESERVE_BYTES_DEFAULT: u64 = 512 << 20;

#[derive(Args, Debug, Clone)]
pub(crate) struct ServeArgs {
    /// Where the Raft log, the state and the chunk store live.
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// Address of the client gRPC API. Port 0 picks a free port on first start
    /// and keeps it across restarts.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Address peers use for Raft (gRPC with mutual TLS). Port 0: as --listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    peer_listen: SocketAddr,
    /// UDP address of the QUIC chunk server (mutual TLS). Port 0: as --listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    quic_listen: SocketAddr,
    /// This node's id in the cluster (fixed for the life of its data dir).
    #[arg(long, default_value_t = 1)]
    node_id: u64,
    /// Peer address of any member, to join that cluster on first start
    /// (ignored once this node's data dir holds a cluster).
    #[arg(long)]
    join: Option<String>,
    /// Region label (nearest-node choice, replica placement).
    #[arg(long, default_value = "")]
    region: String,
    /// Zone label.
    #[arg(long, default_value = "")]
    zone: String,
    /// ca.pem, node.pem, node.key (default `<data-dir>/tls`). A founding node
    /// creates the cluster CA in `<data-dir>/tls/ca` and its own certificate.
    #[arg(long)]
    pub(crate) tls_dir: Option<PathBuf>,
    /// Copies of each chunk durable before a version is READY (default 2 with
    /// two or more nodes, else 1).
    #[arg(long)]
    write_quorum: Option<usize>,
    /// Take a Raft snapshot (and purge the log) every this many entries.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..))]
    snapshot_every: u64,
    /// Raft heartbeat interval in ms; elections start after 3–6 missed heartbeats. The default
    /// suits one data centre: for nodes in several regions use at least the largest round trip
    /// between two nodes (every node of a cluster should use the same value).
    #[arg(long, default_value_t = quiver_raft::HEARTBEAT_INTERVAL_MS,
          value_parser = clap::value_parser!(u64).range(10..=10_000))]
    heartbeat_ms: u64,
    /// Let `quiver cluster drill failover --mode kill` abort this process.
    #[arg(long)]
    enable_crash_drills: bool,
    /// Free space of the data disk that uploads must leave for the Raft log and the state
    /// (e.g. 512MiB, 2GiB; 0 turns the check off). Below it uploads are refused with an error
    /// that says so; reads and metadata changes go on.
    #[arg(long, default_value = "512MiB", value_parser = quiver_client::cli::parse_size)]
    disk_reserve_bytes: u64,
    /// Seconds an unreferenced chunk (left by an upload that never committed) is kept after its
    /// last write before this node removes it, checking once per period; 0 turns collection off
    /// while the node runs (`quiver-node gc` still works with the node stopped). An upload must
    /// finish within this time.
    #[arg(long, default_value_t = quiver_node::gc::CHUNK_GC_GRACE_DEFAULT.as_secs())]
    gc_grace_secs: u64,
    /// Let requests without a token read (models, versions, aliases, downloads, status) as
    /// `anonymous`. Off by default: they are refused as unauthenticated.
    #[arg(long)]
    allow_anonymous_reads: bool,
    /// Address of the Prometheus `GET /metrics` endpoint (plaintext HTTP: keep it on loopback
    /// or a private network). Off unless given; port 0 picks a free port.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

/// A cluster of nodes in this process, on loopback: what `up` runs, and
/// what the cluster benchmarks measure.
pub struct LocalCluster {
    pub nodes: Vec<std::sync::Arc<Node>>,
    /// Where each node serves `GET /metrics`.
    pub metrics_addrs: Vec<SocketAddr>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl LocalCluster {
    /// Starts (or resumes) `nodes` nodes with data under `data_dir`: node 1
    /// founds the cluster (and its CA), the others join it. Port 0 picks free
    /// ports.
    pub async fn start(data_dir: &Path, port: u16, nodes: u16) -> anyhow::Result<LocalCluster> {
        let port_of = |i: u16, offset: u16| -> anyhow::Result<u16> {
            if port == 0 {
                return Ok(0);
            }
            port.checked_add(i - 1 + offset)
                .with_context(|| format!("--port {port} leaves no room for {nodes} nodes"))
        };
        let loopback = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut running = Vec::new();
        let mut founder_peer = None;
        let ca_dir = default_ca_dir(&data_dir.join("node-1"));
        for i in 1..=nodes {
            let node_dir = data_dir.join(format!("node-{i}"));
            if i > 1 && !NodeCert::exists(&default_tls_dir(&node_dir)) {
                ClusterCa::load(&ca_dir)
                    .context("load the local cluster's CA")?
                    .issue(u64::from(i))?
                    .write(&default_tls_dir(&node_dir))?;
            }
            let args = ServeArgs {
                data_dir: node_dir,
                listen: loopback(port_of(i, 0)?),
                peer_listen: loopback(port_of(i, 100)?),
                quic_listen: loopback(port_of(i, 200)?),
                node_id: u64::from(i),
                join: founder_peer.clone(),
                region: String::new(),
                zone: String::new(),
                tls_dir: None,
                write_quorum: None,
                snapshot_every: 10_000,
                heartbeat_ms: quiver_raft::HEARTBEAT_INTERVAL_MS,
                // Nodes of `up` share one process: a crash would take all down.
                enable_crash_drills: false,
                disk_reserve_bytes: DISK_RESERVE_BYTES_DEFAULT,
                gc_grace_secs: quiver_node::gc::CHUNK_GC_GRACE_DEFAULT.as_secs(),
                allow_anonymous_reads: false,
                metrics_listen: Some(loopback(port_of(i, 300)?)),
            };
            let (node, api, metrics) = start_node(args).await?;
            if i == 1 {
                founder_peer = Some(node.core.info.peer_addr.clone());
            }
            running.push((node, api, metrics));
        }
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let mut nodes = Vec::new();
        let mut metrics_addrs = Vec::new();
        for (node, api, metrics) in running {
            let mut stopped = stop.subscribe();
            nodes.push(node.clone());
            if let Some(listener) = &metrics {
                metrics_addrs.push(listener.local_addr()?);
            }
            tasks.push(tokio::spawn(serve_until(node, api, metrics, async move {
                let _ = stopped.changed().await;
            })));
        }
        Ok(LocalCluster {
            nodes,
            metrics_addrs,
            stop,
            tasks,
        })
    }

    /// The token of the cluster's first admin (kept by node 1, which founded it).
    pub fn admin_token(&self) -> anyhow::Result<String> {
        read_admin_token(&self.nodes[0].core.data_dir)
    }

    /// The cluster CA's certificate (PEM, kept by node 1), which clients verify nodes with.
    pub fn ca_pem(&self) -> anyhow::Result<String> {
        let path = ca_file(&self.nodes[0].core.data_dir);
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
    }

    /// An SDK client of node `index` (0-based), verifying it with the cluster CA, sending the
    /// first admin's token.
    pub async fn admin_client(&self, index: usize) -> anyhow::Result<quiver_client::Client> {
        let tls = quiver_client::sdk::ClientTls {
            ca_pem: Some(self.ca_pem()?),
            identity: None,
        };
        Ok(
            quiver_client::Client::connect_with(&self.endpoint(index), tls)
                .await?
                .with_token(Some(self.admin_token()?)),
        )
    }

    pub fn endpoint(&self, index: usize) -> String {
        format!(
            "{}://{}",
            quiver_node::access::API_SCHEME,
            self.nodes[index].core.info.api_addr
        )
    }

    /// Stops every node and waits for them.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        drop(self.nodes);
        for task in self.tasks {
            task.await.context("node task")??;
        }
        Ok(())
    }
}

/// The addresses a node bound on its first start, reused when it is
/// restarted with port 0 so peers and clients can still reach it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct BoundAddrs {
    api: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    quic: Option<SocketAddr>,
}

const BOUND_ADDRS_FILE: &str = "bound-addrs.json";

fn pick(requested: SocketAddr, remembered: Option<SocketAddr>) -> SocketAddr {
    match remembered {
        Some(addr) if requested.port() == 0 => addr,
        _ => requested,
    }
}

fn load_bound(data_dir: &Path) -> anyhow::Result<BoundAddrs> {
    let path = data_dir.join(BOUND_ADDRS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BoundAddrs::default()),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

fn save_bound(data_dir: &Path, bound: &BoundAddrs) -> anyhow::Result<()> {
    let path = data_dir.join(BOUND_ADDRS_FILE);
    let tmp = data_dir.join(format!("{BOUND_ADDRS_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(bound)?)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("listen for {what} on {addr} (is another node running there? pick another port)")
    })
}

/// Loads this node's certificate, or — for a founding node — creates the
/// cluster CA and issues its own.
fn node_cert(args: &ServeArgs) -> anyhow::Result<NodeCert> {
    let tls_dir = args
        .tls_dir
        .clone()
        .unwrap_or_else(|| default_tls_dir(&args.data_dir));
    if NodeCert::exists(&tls_dir) {
        return NodeCert::load(&tls_dir);
    }
    if args.join.is_some() {
        bail!(
            "no node certificate in {dir}: a joining node needs one signed by the cluster CA; on the \
             founding node's machine run `quiver-node cert issue --ca-dir <its data dir>/tls/ca \
             --node-id {id} --out {dir}`",
            dir = tls_dir.display(),
            id = args.node_id
        );
    }
    let cluster_id = blake3::hash(
        format!(
            "{}:{}:{:?}",
            std::process::id(),
            args.data_dir.display(),
            std::time::SystemTime::now()
        )
        .as_bytes(),
    )
    .to_hex()[..16]
        .to_string();
    let ca = ClusterCa::create(&default_ca_dir(&args.data_dir), &cluster_id)?;
    let cert = ca.issue(args.node_id)?;
    cert.write(&tls_dir)?;
    tracing::info!(ca_dir = %default_ca_dir(&args.data_dir).display(), "created the cluster CA");
    Ok(cert)
}

/// A node opened, with its API listener and, if asked for, its metrics listener.
pub(crate) type Started = (std::sync::Arc<Node>, TcpListener, Option<TcpListener>);

pub(crate) async fn start_node(args: ServeArgs) -> anyhow::Result<Started> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create data dir {}", args.data_dir.display()))?;
    let remembered = load_bound(&args.data_dir)?;
    let api = bind(pick(args.listen, remembered.api), "the client API").await?;
    let peer = bind(pick(args.peer_listen, remembered.peer), "Raft peers").await?;
    let api_addr = api.local_addr()?;
    let peer_addr = peer.local_addr()?;
    let quic_listen = pick(args.quic_listen, remembered.quic);
    // Remember the ports at once: a node killed while joining must come back
    // on the same addresses its peers were told about.
    save_bound(
        &args.data_dir,
        &BoundAddrs {
            api: Some(api_addr),
            peer: Some(peer_addr),
            quic: remembered.quic,
        },
    )?;
    let tls = node_cert(&args)?;
    let tls_dir = args
        .tls_dir
        .clone()
        .unwrap_or_else(|| default_tls_dir(&args.data_dir));
    let node = Node::open(
        NodeConfig {
            node_id: args.node_id,
            data_dir: args.data_dir.clone(),
            api_addr: api_addr.to_string(),
            peer_addr: peer_addr.to_string(),
            quic_listen,
            region: args.region.clone(),
            zone: args.zone.clone(),
            join: args.join.clone(),
            tls,
            write_quorum: args.write_quorum,
            snapshot_every: args.snapshot_every,
            heartbeat_ms: args.heartbeat_ms,
            crash_drills: args.enable_crash_drills,
            disk_reserve_bytes: args.disk_reserve_bytes,
            chunk_gc_grace: (args.gc_grace_secs > 0)
                .then(|| std::time::Duration::from_secs(args.gc_grace_secs)),
            allow_anonymous_reads: args.allow_anonymous_reads,
        },
        peer,
    )
    .await
    .with_context(|| format!("open node {} in {}", args.node_id, args.data_dir.display()))?;
    // `quiver-node cert rotate` writes a renewed certificate there.
    node.watch_certificate(tls_dir, quiver_node::peer_certs::CERT_RELOAD_INTERVAL);
    save_bound(
        &args.data_dir,
        &BoundAddrs {
            api: Some(api_addr),
            peer: Some(peer_addr),
            quic: Some(node.quic_addr()),
        },
    )?;
    if default_ca_dir(&args.data_dir).exists() {
        bootstrap_access(&node, &args.data_dir).await?;
    }
    tracing::info!(
        node_id = args.node_id,
        %api_addr,
        %peer_addr,
        quic_addr = %node.quic_addr(),
        data_dir = %args.data_dir.display(),
        "node ready"
    );
    let metrics = match args.metrics_listen {
        Some(addr) => Some(bind(addr, "the metrics endpoint").await?),
        None => None,
    };
    Ok((node, api, metrics))
}

/// The first admin's token in the founding node's `data_dir`.
pub fn read_admin_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    Ok(text.trim().to_string())
}

/// The cluster CA's certificate as a node started with its default TLS directory holds it.
pub fn ca_file(node_data_dir: &Path) -> PathBuf {
    default_tls_dir(node_data_dir).join("ca.pem")
}

/// Where the founding node keeps the token of the cluster's first admin.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The principal of the cluster's first admin.
pub const FIRST_ADMIN: &str = "admin";

/// On the founding node (the one holding the cluster CA), while no one holds a role: creates the
/// first admin's token (once, in `<data-dir>/admin.token`, owner-only) and proposes it with the
/// admin role cluster-wide. A crash in between finds the file and proposes the same token again.
async fn bootstrap_access(node: &Node, data_dir: &Path) -> anyhow::Result<()> {
    let any_grant = node
        .read(Consistency::Stale, |app, txn| app.any_grant(txn))
        .await?;
    if any_grant {
        return Ok(());
    }
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let token = if path.exists() {
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        PresentedToken::parse(text.trim())
            .with_context(|| format!("{} does not hold a token", path.display()))?
    } else {
        let token = PresentedToken::random();
        quiver_node::tls::write_private(&path, &format!("{token}\n"))?;
        token
    };
    let actor = Actor {
        name: quiver_node::auth::node_principal(node.node_id()),
        authenticated: true,
    };
    let op = Op::Bootstrap {
        id: token.id.clone(),
        principal: FIRST_ADMIN.into(),
        secret_hash: token.secret_hash(),
    };
    match node.propose(actor, op).await {
        Ok(_) => {
            tracing::info!(path = %path.display(), "created the cluster's first admin ({FIRST_ADMIN}); its token is in this file");
            Ok(())
        }
        // Another founding attempt got there first.
        Err(quiver_node::NodeError::Rejected(e)) => {
            tracing::warn!("access already bootstrapped: {e}");
            Ok(())
        }
        Err(e) => Err(e).context("bootstrap the cluster's first admin"),
    }
}

pub(crate) async fn serve_until(
    node: std::sync::Arc<Node>,
    api: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let id = node.node_id();
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let scrapes = metrics.map(|listener| {
        let mut stopped = stopped.clone();
        tokio::spawn(quiver_node::http::serve(
            node.clone(),
            listener,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ))
    });
    let served = serve(node, api, ApiLimits::default(), shutdown).await;
    stopping.send_replace(true);
    if let Some(task) = scrapes {
        if let Ok(Err(e)) = task.await {
            tracing::warn!(node_id = id, "metrics endpoint: {e:#}");
        }
    }
    served?;
    tracing::info!(node_id = id, "node stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
