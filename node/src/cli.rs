//! The `quiver-node` command line: `serve` runs one node, `up` runs a local
//! cluster on loopback for trying Quiver out, `cert issue` makes a node
//! certificate for a node that will join.

use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::node::{Node, NodeConfig};
use crate::server::serve;
use crate::tls::{default_ca_dir, default_tls_dir, ClusterCa, NodeCert};

#[derive(Parser, Debug)]
#[command(name = "quiver-node", version, about = "Quiver registry node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node: its data lives in --data-dir, its API on --listen.
    Serve(ServeArgs),
    /// Run a local cluster on loopback with data under --data-dir, until Ctrl-C.
    Up {
        #[arg(long, default_value = ".quiver")]
        data_dir: PathBuf,
        /// API port of node 1; node i uses PORT+i-1, its Raft port that +100 and
        /// its QUIC port that +200. 0 picks free ports (kept across restarts).
        #[arg(long, default_value_t = 7400)]
        port: u16,
        /// Number of nodes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
        nodes: u16,
    },
    /// Certificates of the cluster's CA.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Remove chunks no version refers to (left by interrupted uploads). Run it
    /// while the node is stopped; it prints what it removed.
    Gc {
        #[arg(long)]
        data_dir: PathBuf,
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Cluster benchmarks: each starts its own local cluster in --scratch-dir
    /// and prints figures beside baselines measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Registrations/s and latency with 1, 16, 64 clients: one node vs N nodes.
    Metadata {
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<u32>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        duration: u64,
        #[arg(long, default_value_t = 3)]
        nodes: u16,
        #[command(flatten)]
        common: BenchArgs,
    },
    /// Time to READY (W copies) and to full replication of one version on 3
    /// nodes, against raw write+fsync of as many copies to the same disk.
    Distribution {
        /// Bytes: 1GiB, 256MiB, …
        #[arg(long, default_value = "1GiB", value_parser = quiver_client::cli::parse_size)]
        size: u64,
        #[command(flatten)]
        common: BenchArgs,
    },
    /// SIGKILL the leader of a 3-process cluster repeatedly; time to the first
    /// acknowledged write through a survivor.
    Failover {
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
        drills: u64,
        #[command(flatten)]
        common: BenchArgs,
    },
}

#[derive(Args, Debug, Clone)]
struct BenchArgs {
    /// Where the benchmark clusters keep their data (the disk under test).
    #[arg(long, default_value = ".")]
    scratch_dir: PathBuf,
    #[arg(long, default_value = "table")]
    output: String,
}

fn print_report<T: Serialize>(output: &str, report: &T, table: String) -> anyhow::Result<()> {
    match output {
        "json" => println!("{}", serde_json::to_string_pretty(report)?),
        "table" => print!("{table}"),
        other => bail!("--output {other:?}: use table or json"),
    }
    Ok(())
}

async fn bench(command: BenchCommand) -> anyhow::Result<()> {
    use quiver_client::cli::table;
    match command {
        BenchCommand::Metadata {
            clients,
            duration,
            nodes,
            common,
        } => {
            let rows = crate::bench::metadata(
                &common.scratch_dir,
                &clients,
                std::time::Duration::from_secs(duration),
                nodes,
            )
            .await?;
            let single = |c: u32| rows.iter().find(|r| r.nodes == 1 && r.clients == c);
            let cells: Vec<Vec<String>> = rows
                .iter()
                .filter(|r| r.nodes == nodes)
                .map(|r| {
                    let base = single(r.clients);
                    vec![
                        r.clients.to_string(),
                        format!("{:.0}/s", r.registrations_per_s),
                        format!("{:.2} ms", r.latency_ms_p50),
                        format!("{:.2} ms", r.latency_ms_p99),
                        base.map_or("-".into(), |b| format!("{:.0}/s", b.registrations_per_s)),
                        base.map_or("-".into(), |b| format!("{:.2} ms", b.latency_ms_p99)),
                        base.map_or("-".into(), |b| {
                            format!("{:.2}", r.registrations_per_s / b.registrations_per_s)
                        }),
                    ]
                })
                .collect();
            let text = table(
                &[
                    "CLIENTS",
                    &format!("{nodes}-NODE REG/S"),
                    "P50",
                    "P99",
                    "1-NODE REG/S",
                    "1-NODE P99",
                    "RATIO",
                ],
                &cells,
            );
            print_report(&common.output, &rows, text)
        }
        BenchCommand::Distribution { size, common } => {
            let r = crate::bench::distribution(&common.scratch_dir, size).await?;
            let text = table(
                &["FIGURE", "SECONDS", "BASELINE (RAW WRITE+FSYNC)", "RATIO"],
                &[
                    vec![
                        format!("READY ({} copies)", r.write_quorum),
                        format!("{:.2}", r.ready_s),
                        format!(
                            "{:.2} s for {} copies",
                            r.raw_write_quorum_copies_s, r.write_quorum
                        ),
                        format!("{:.2}", r.ready_to_raw_ratio),
                    ],
                    vec![
                        format!("fully replicated ({} copies)", r.nodes),
                        format!("{:.2}", r.fully_replicated_s),
                        format!("{:.2} s for {} copies", r.raw_write_all_copies_s, r.nodes),
                        format!("{:.2}", r.replicated_to_raw_ratio),
                    ],
                    vec![
                        "CPU s, upload to fully replicated (all threads)".into(),
                        format!("{:.2}", r.replication_cpu_s),
                        format!(
                            "{:.2} s for {} copies",
                            r.raw_write_all_copies_cpu_s, r.nodes
                        ),
                        format!(
                            "{:.2}",
                            r.replication_cpu_s / r.raw_write_all_copies_cpu_s.max(1e-9)
                        ),
                    ],
                ],
            );
            print_report(&common.output, &r, text)
        }
        BenchCommand::Failover { drills, common } => {
            let r = crate::bench::failover(&common.scratch_dir, drills as usize).await?;
            let text = table(
                &["DRILLS", "P50", "P99", "MAX", "ACKED", "LOST"],
                &[vec![
                    r.drills.to_string(),
                    format!("{:.0} ms", r.p50_ms),
                    format!("{:.0} ms", r.p99_ms),
                    format!("{:.0} ms", r.max_ms),
                    r.writes_acknowledged.to_string(),
                    r.writes_lost.to_string(),
                ]],
            );
            print_report(&common.output, &r, text)
        }
    }
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// Issue a certificate for a node that will join, signed by the cluster CA.
    Issue {
        /// The cluster CA: `<data dir of the founding node>/tls/ca`.
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        node_id: u64,
        /// Where to write ca.pem, node.pem and node.key (the joining node's --tls-dir,
        /// by default `<its data dir>/tls`).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug, Clone)]
struct ServeArgs {
    /// Where the Raft log, the state and the chunk store live.
    #[arg(long)]
    data_dir: PathBuf,
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
    tls_dir: Option<PathBuf>,
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
}

/// Entry point shared by the `quiver-node` binary and the end-to-end tests.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let (node, api) = start_node(args).await?;
            println!("peer_addr={}", node.config.peer_addr);
            println!("export QUIVER_ENDPOINT=http://{}", node.config.api_addr);
            serve_until(node, api, shutdown_signal()).await
        }
        Command::Up {
            data_dir,
            port,
            nodes,
        } => up(data_dir, port, nodes).await,
        Command::Bench(command) => bench(command).await,
        Command::Gc { data_dir, dry_run } => {
            let report = crate::gc::collect(&data_dir, dry_run)?;
            println!(
                "{} {} unreferenced chunk(s), {} bytes; kept {} referenced (including by {} \
                 log entries not yet applied)",
                if dry_run { "would remove" } else { "removed" },
                report.removed_chunks,
                report.removed_bytes,
                report.kept_chunks,
                report.unapplied_entries
            );
            Ok(())
        }
        Command::Cert(CertCommand::Issue {
            ca_dir,
            node_id,
            out,
        }) => {
            let ca = ClusterCa::load(&ca_dir)
                .with_context(|| format!("load the cluster CA from {}", ca_dir.display()))?;
            ca.issue(node_id)?.write(&out)?;
            println!(
                "issued a certificate for node {node_id} into {}",
                out.display()
            );
            Ok(())
        }
    }
}

async fn up(data_dir: PathBuf, port: u16, nodes: u16) -> anyhow::Result<()> {
    let cluster = LocalCluster::start(&data_dir, port, nodes).await?;
    for node in &cluster.nodes {
        println!("export QUIVER_ENDPOINT=http://{}", node.config.api_addr);
    }
    eprintln!(
        "quiver: {} node(s) running, data under {}; Ctrl-C stops them",
        cluster.nodes.len(),
        data_dir.display()
    );
    shutdown_signal().await;
    cluster.stop().await
}

/// A cluster of nodes in this process, on loopback: what `up` runs, and
/// what the cluster benchmarks measure.
pub struct LocalCluster {
    pub nodes: Vec<std::sync::Arc<Node>>,
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
            };
            let (node, api) = start_node(args).await?;
            if i == 1 {
                founder_peer = Some(node.config.peer_addr.clone());
            }
            running.push((node, api));
        }
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let mut nodes = Vec::new();
        for (node, api) in running {
            let mut stopped = stop.subscribe();
            nodes.push(node.clone());
            tasks.push(tokio::spawn(serve_until(node, api, async move {
                let _ = stopped.changed().await;
            })));
        }
        Ok(LocalCluster { nodes, stop, tasks })
    }

    pub fn endpoint(&self, index: usize) -> String {
        format!("http://{}", self.nodes[index].config.api_addr)
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

async fn start_node(args: ServeArgs) -> anyhow::Result<(std::sync::Arc<Node>, TcpListener)> {
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
        },
        peer,
    )
    .await
    .with_context(|| format!("open node {} in {}", args.node_id, args.data_dir.display()))?;
    save_bound(
        &args.data_dir,
        &BoundAddrs {
            api: Some(api_addr),
            peer: Some(peer_addr),
            quic: Some(node.quic_addr()),
        },
    )?;
    tracing::info!(
        node_id = args.node_id,
        %api_addr,
        %peer_addr,
        quic_addr = %node.quic_addr(),
        data_dir = %args.data_dir.display(),
        "node ready"
    );
    Ok((node, api))
}

async fn serve_until(
    node: std::sync::Arc<Node>,
    api: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let id = node.config.node_id;
    serve(node, api, shutdown).await?;
    tracing::info!(node_id = id, "node stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
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
