//! Cluster benchmarks (`quiver-node bench …`): they start their own local
//! clusters (in this process, or as child processes when a node must be
//! SIGKILLed) in a scratch directory on the disk under test, and print each
//! figure beside a baseline measured in the same run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use quiver_client::bench::{percentile_ms, raw_write, registry, RegistryOptions, SeededReader};
use quiver_client::proto::{CreateModelRequest, UploadHeader, VersionMetadata};
use quiver_client::sdk::{ClientTls, UploadFile};
use quiver_client::Client;
use quiver_node::node::Consistency;
use quiver_node::tls::{default_ca_dir, ClusterCa};
use serde::Serialize;

use crate::launch::{ca_file, read_admin_token, LocalCluster};

/// How long a benchmark waits for a cluster to converge before giving up.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(10);

fn scratch(base: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let dir = base.join(format!("quiver-bench-{what}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

// -------------------------------------------------------------- metadata

#[derive(Debug, Serialize)]
pub struct MetadataRow {
    pub clients: u32,
    pub nodes: u16,
    pub registrations_per_s: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
}

/// Registrations of tiny versions per second with `clients` concurrent
/// clients, on a one-node cluster (the baseline) and an `nodes`-node one.
pub async fn metadata(
    scratch_base: &Path,
    clients: &[u32],
    duration: Duration,
    nodes: u16,
) -> anyhow::Result<Vec<MetadataRow>> {
    let mut rows = Vec::new();
    for cluster_size in [1, nodes] {
        let dir = scratch(scratch_base, &format!("metadata-{cluster_size}"))?;
        let cluster = LocalCluster::start(&dir, 0, cluster_size).await?;
        let client = cluster.admin_client(0).await?;
        for &c in clients {
            eprintln!("bench: {c} client(s) registering on {cluster_size} node(s)");
            let report = registry(
                &client,
                &RegistryOptions {
                    clients: c,
                    duration,
                    model: None,
                    register_only: true,
                },
                &|_| {},
            )
            .await?;
            let register = &report.figures[0];
            rows.push(MetadataRow {
                clients: c,
                nodes: cluster_size,
                registrations_per_s: register.per_s,
                latency_ms_p50: register.latency_ms_p50,
                latency_ms_p99: register.latency_ms_p99,
            });
        }
        cluster.stop().await?;
        std::fs::remove_dir_all(&dir).ok();
    }
    Ok(rows)
}

// ---------------------------------------------------------- distribution

#[derive(Debug, Serialize)]
pub struct DistributionReport {
    pub size_bytes: u64,
    pub nodes: u16,
    pub write_quorum: usize,
    pub raw_write_quorum_copies_s: f64,
    pub raw_write_all_copies_s: f64,
    pub ready_s: f64,
    pub fully_replicated_s: f64,
    pub ready_to_raw_ratio: f64,
    pub replicated_to_raw_ratio: f64,
    /// CPU time (user + system, every thread of this process: client and 3 nodes) from the
    /// start of the upload until the version was on every node.
    pub replication_cpu_s: f64,
    /// CPU time of the raw baseline's writes of all copies.
    pub raw_write_all_copies_cpu_s: f64,
}

/// CPU time (user + system) this process has used so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Time for a version of `size_bytes` to be READY (W copies durable) and to
/// be on every node of a 3-node loopback cluster, against the raw time to
/// write and fsync the same number of copies to the same disk.
pub async fn distribution(
    scratch_base: &Path,
    size_bytes: u64,
) -> anyhow::Result<DistributionReport> {
    const NODES: u16 = 3;
    const FILES: u64 = 4;
    let dir = scratch(scratch_base, "distribution")?;
    let raw = |copies: usize| -> anyhow::Result<f64> {
        let mut total = Duration::ZERO;
        for copy in 0..copies {
            total += raw_write(&dir, size_bytes, copy as u64 + 1)?;
        }
        Ok(total.as_secs_f64())
    };
    let cluster = LocalCluster::start(&dir.join("cluster"), 0, NODES).await?;
    let write_quorum = cluster.nodes[0]
        .chunk_sink()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .copies_required;
    eprintln!("bench: raw write + fsync of {write_quorum} and {NODES} copies");
    let raw_quorum = raw(write_quorum)?;
    let cpu_before_raw_all = process_cpu();
    let raw_all = raw(NODES as usize)?;
    let raw_all_cpu = process_cpu() - cpu_before_raw_all;

    let client = cluster.admin_client(0).await?;
    client
        .create_model(CreateModelRequest {
            name: "bench-distribution".into(),
            ..Default::default()
        })
        .await?;
    let per_file = size_bytes / FILES;
    let files = (0..FILES)
        .map(|i| {
            let size = if i == FILES - 1 {
                size_bytes - per_file * (FILES - 1)
            } else {
                per_file
            };
            UploadFile {
                path: format!("shard-{i}.bin"),
                mode: 0o644,
                size_bytes: size,
                reader: Box::new(SeededReader::new(1000 + i, size)),
            }
        })
        .collect();
    let header = UploadHeader {
        model: "bench-distribution".into(),
        metadata: Some(VersionMetadata {
            data_snapshot_id: "bench".into(),
            code_commit: "bench".into(),
            pipeline_run_id: "bench".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    eprintln!("bench: registering {size_bytes} bytes on a {NODES}-node cluster");
    let started = Instant::now();
    let cpu_before = process_cpu();
    let version = client.register_stream(header, files).await?;
    let ready = started.elapsed();
    let root = version.manifest_root.clone();
    let manifest = cluster.nodes[0]
        .read(Consistency::Stale, |app, txn| app.manifest(txn, &root))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let hashes: Vec<_> = manifest.chunk_hashes().collect();
    loop {
        let complete = cluster
            .nodes
            .iter()
            .all(|n| hashes.iter().all(|h| n.chunks.contains(h)));
        if complete {
            break;
        }
        if started.elapsed() > CONVERGE_TIMEOUT {
            bail!("the version was not on every node within {CONVERGE_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    let replicated = started.elapsed();
    let replication_cpu = process_cpu() - cpu_before;
    cluster.stop().await?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(DistributionReport {
        size_bytes,
        nodes: NODES,
        write_quorum,
        raw_write_quorum_copies_s: raw_quorum,
        raw_write_all_copies_s: raw_all,
        ready_s: ready.as_secs_f64(),
        fully_replicated_s: replicated.as_secs_f64(),
        ready_to_raw_ratio: ready.as_secs_f64() / raw_quorum,
        replicated_to_raw_ratio: replicated.as_secs_f64() / raw_all,
        replication_cpu_s: replication_cpu.as_secs_f64(),
        raw_write_all_copies_cpu_s: raw_all_cpu.as_secs_f64(),
    })
}

// -------------------------------------------------------------- failover

#[derive(Debug, Serialize)]
pub struct FailoverReport {
    pub drills: usize,
    pub kill_to_first_write_ms: Vec<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub writes_acknowledged: u64,
    pub writes_lost: u64,
}

/// Log filter for the benchmark's node processes (default `error`); each node's log goes to
/// `node-N.log` beside its data dir.
pub const BENCH_NODE_LOG_ENV: &str = "QUIVER_BENCH_NODE_LOG";

fn node_log(data_dir: &Path) -> anyhow::Result<Stdio> {
    let name = data_dir
        .file_name()
        .map(|n| format!("{}.log", n.to_string_lossy()))
        .unwrap_or_else(|| "node.log".into());
    let path = data_dir.with_file_name(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("open node log {}", path.display()))?;
    Ok(Stdio::from(file))
}

/// A `quiver-node serve` child process.
struct ChildNode {
    child: Child,
    endpoint: String,
    peer_addr: String,
}

fn spawn_node(
    exe: &Path,
    data_dir: &Path,
    node_id: u64,
    join: Option<&str>,
) -> anyhow::Result<ChildNode> {
    let mut cmd = Command::new(exe);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--node-id",
        &node_id.to_string(),
    ])
    .arg("--data-dir")
    .arg(data_dir)
    .env(
        "RUST_LOG",
        std::env::var(BENCH_NODE_LOG_ENV).unwrap_or_else(|_| "error".into()),
    )
    .stdout(Stdio::piped())
    .stderr(node_log(data_dir)?);
    if let Some(peer) = join {
        cmd.args(["--join", peer]);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {}", exe.display()))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut peer_addr = String::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .with_context(|| format!("node {node_id} did not start"))?;
        if let Some(p) = line.strip_prefix("peer_addr=") {
            peer_addr = p.to_string();
        } else if let Some(e) = line.strip_prefix("export QUIVER_ENDPOINT=") {
            return Ok(ChildNode {
                child,
                endpoint: e.to_string(),
                peer_addr,
            });
        }
    }
}

/// SIGKILLs the leader of a 3-process cluster `drills` times under a write
/// load, measuring kill → first acknowledged write through a survivor.
pub async fn failover(scratch_base: &Path, drills: usize) -> anyhow::Result<FailoverReport> {
    let exe = std::env::current_exe().context("find the quiver-node binary")?;
    let dir = scratch(scratch_base, "failover")?;
    let data = |id: u64| dir.join(format!("node-{id}"));
    let mut nodes = vec![spawn_node(&exe, &data(1), 1, None)?];
    let founder_peer = nodes[0].peer_addr.clone();
    for id in 2..=3u64 {
        ClusterCa::load(&default_ca_dir(&data(1)))?
            .issue(id)?
            .write(&data(id).join("tls"))?;
        nodes.push(spawn_node(&exe, &data(id), id, Some(&founder_peer))?);
    }
    let token = read_admin_token(&data(1))?;
    let tls = ClientTls::load(Some(&ca_file(&data(1))), None, None)?;
    let mut samples = Vec::new();
    let mut acknowledged = Vec::new();
    for drill in 0..drills {
        let leader = wait_for(|| healthy_leader(&nodes, &tls, &token)).await.with_context(|| {
            format!("drill {drill}: the cluster did not settle with one leader and every member caught up")
        })?;
        let survivor = (1..=3u64).find(|&id| id != leader).expect("three nodes");
        let writer = Client::connect_with(&nodes[survivor as usize - 1].endpoint, tls.clone())
            .await?
            .with_token(Some(token.clone()));
        let killed = &mut nodes[leader as usize - 1];
        let t0 = Instant::now();
        killed.child.kill()?;
        killed.child.wait()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let name = format!("failover-{drill:02}-{attempt:03}");
            let request = CreateModelRequest {
                name: name.clone(),
                ..Default::default()
            };
            if writer.create_model(request).await.is_ok() {
                samples.push(t0.elapsed());
                acknowledged.push(name);
                break;
            }
            if t0.elapsed() > CONVERGE_TIMEOUT {
                bail!("drill {drill}: no write succeeded within {CONVERGE_TIMEOUT:?}");
            }
        }
        eprintln!(
            "bench: drill {}/{drills}: leader {leader} killed, first write after {:.0} ms",
            drill + 1,
            samples.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        );
        let join = (leader != 1).then_some(founder_peer.as_str());
        nodes[leader as usize - 1] = spawn_node(&exe, &data(leader), leader, join)?;
    }
    let check = Client::connect_with(&nodes[0].endpoint, tls.clone())
        .await?
        .with_token(Some(token.clone()));
    let present: std::collections::BTreeSet<String> = check
        .list_all_models(
            "failover-",
            "",
            quiver_client::proto::ReadConsistency::Linearizable,
        )
        .await?
        .into_iter()
        .map(|m| m.name)
        .collect();
    let lost = acknowledged
        .iter()
        .filter(|n| !present.contains(*n))
        .count() as u64;
    for mut node in nodes {
        let _ = node.child.kill();
        let _ = node.child.wait();
    }
    if std::env::var_os(BENCH_NODE_LOG_ENV).is_none() {
        std::fs::remove_dir_all(&dir).ok();
    } else {
        eprintln!("bench: node logs kept in {}", dir.display());
    }
    let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    Ok(FailoverReport {
        drills,
        p50_ms: percentile_ms(&mut samples.clone(), 50.0),
        p99_ms: percentile_ms(&mut samples.clone(), 99.0),
        max_ms: ms.iter().cloned().fold(0.0, f64::max),
        kill_to_first_write_ms: ms,
        writes_acknowledged: acknowledged.len() as u64,
        writes_lost: lost,
    })
}

/// The leader, once every node names the same one, the leader confirms it itself, and every
/// member is a voter with no replication lag (so that a drill never starts while the node
/// restarted by the previous one is still catching up, nor kills a node that is not leader).
async fn healthy_leader(nodes: &[ChildNode], tls: &ClientTls, token: &str) -> Option<u64> {
    let mut named = None;
    for node in nodes {
        let status = Client::connect_with(&node.endpoint, tls.clone())
            .await
            .ok()?
            .with_token(Some(token.to_string()))
            .cluster_status()
            .await
            .ok()?;
        let leader = status.leader_id?;
        if named.is_some_and(|l| l != leader) {
            return None;
        }
        named = Some(leader);
        if status.node_id == leader
            && (status.members.len() != nodes.len()
                || status
                    .members
                    .iter()
                    .any(|m| !m.voter || m.lag.is_none_or(|lag| lag > 0)))
        {
            return None;
        }
    }
    named
}

async fn wait_for<T, F, Fut>(mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if started.elapsed() > CONVERGE_TIMEOUT {
            bail!("timed out after {CONVERGE_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}
