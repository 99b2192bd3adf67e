//! The `quiver-node` command line: `serve` runs one node, `up` runs a local
//! cluster on loopback for trying Quiver out, `cert issue` makes a node
//! certificate for a node that will join, `cert rotate` renews one in place.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use quiver_node::tls::ClusterCa;
use serde::Serialize;

/// Where `up` puts the cluster CA's certificate in its data directory (`.quiver/ca.pem` by default).
const CA_FILE: &str = "ca.pem";

use crate::launch::{
    serve_until, shutdown_signal, start_node, LocalCluster, ServeArgs, ADMIN_TOKEN_FILE,
};

#[derive(Parser, Debug)]
#[command(name = "quiver-node", version, about = "Quiver registry node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node: its data lives in --data-dir, its API on --listen.
    Serve(Box<ServeArgs>),
    /// Run a local cluster on loopback with data under --data-dir, until Ctrl-C.
    Up {
        #[arg(long, default_value = ".quiver")]
        data_dir: PathBuf,
        /// API port of node 1; node i uses PORT+i-1, its Raft port that +100, its QUIC port
        /// that +200 and its Prometheus `/metrics` that +300. 0 picks free ports (kept across
        /// restarts, except the metrics port).
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
    /// The audit log of a stopped node.
    #[command(subcommand)]
    Audit(AuditCommand),
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
    /// Lineage impact queries over a seeded graph (a state seeded directly, no cluster), beside
    /// a point read of one version from the same state.
    Lineage {
        /// Versions in the graph (100 per model).
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        versions: u64,
        /// Edges in the graph: 4 per version from registration, the rest explicit.
        #[arg(long, default_value_t = 1_000_000)]
        edges: u64,
        /// Impact queries (and as many point reads).
        #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        queries: u64,
        #[arg(long, default_value_t = 47)]
        seed: u64,
        #[command(flatten)]
        common: BenchArgs,
    },
    /// Catalog searches (`quiver model search`) over a seeded catalog (a state seeded
    /// directly, no cluster), beside a point read of one model from the same state.
    Search {
        /// Models in the catalog (one version each).
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        models: u64,
        /// Searches (and as many point reads), cycling through the query shapes.
        #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        queries: u64,
        #[arg(long, default_value_t = 47)]
        seed: u64,
        #[command(flatten)]
        common: BenchArgs,
    },
    /// What TLS alone adds to one unary gRPC round trip here: tonic's health service on
    /// loopback, plaintext beside TLS 1.3 (rustls, a certificate from a fresh cluster CA),
    /// alternating rounds, nothing of Quiver's in the call. The floor under what the client
    /// API's TLS can cost a registry read (tests/bench/access_overhead.py).
    TlsFloor {
        /// Calls per round, on each server.
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        calls: u64,
        /// Rounds, alternating which server goes first.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=100))]
        rounds: u64,
        #[arg(long, default_value = "table")]
        output: String,
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
        BenchCommand::Lineage {
            versions,
            edges,
            queries,
            seed,
            common,
        } => {
            let options = crate::bench_lineage::LineageOptions {
                versions,
                edges,
                queries: queries as usize,
                seed,
            };
            let r = tokio::task::spawn_blocking(move || {
                crate::bench_lineage::lineage(&common.scratch_dir, &options).map(|r| (r, common))
            })
            .await??;
            let (r, common) = r;
            let text = crate::bench_lineage::point_read_table(
                format!(
                    "impact, {} versions / {} edges (mean {:.0} entities, {:.0} versions; most {} \
                     entities; {} truncated)",
                    r.versions,
                    r.edges,
                    r.impact_nodes_mean,
                    r.impact_versions_mean,
                    r.impact_nodes_max,
                    r.impact_truncated
                ),
                [
                    r.impact_ms_p50,
                    r.impact_ms_p99,
                    r.point_read_ms_p50,
                    r.point_read_ms_p99,
                    r.p99_ratio,
                ],
            );
            print_report(&common.output, &r, text)
        }
        BenchCommand::TlsFloor {
            calls,
            rounds,
            output,
        } => {
            let options = crate::bench_tls::TlsFloorOptions {
                calls: calls as usize,
                rounds: rounds as usize,
            };
            let r = crate::bench_tls::tls_floor(&options).await?;
            print_report(&output, &r, crate::bench_tls::table(&r))
        }
        BenchCommand::Search {
            models,
            queries,
            seed,
            common,
        } => {
            let options = crate::bench_search::SearchOptions {
                models,
                queries: queries as usize,
                seed,
            };
            let (r, common) = tokio::task::spawn_blocking(move || {
                crate::bench_search::search(&common.scratch_dir, &options).map(|r| (r, common))
            })
            .await??;
            let text = crate::bench_lineage::point_read_table(
                format!(
                    "model search, {} models (mean {:.1} hits; slowest: {}, p99 {:.3} ms)",
                    r.models, r.hits_mean, r.slowest_shape, r.slowest_shape_ms_p99
                ),
                [
                    r.search_ms_p50,
                    r.search_ms_p99,
                    r.point_read_ms_p50,
                    r.point_read_ms_p99,
                    r.p99_ratio,
                ],
            );
            print_report(&common.output, &r, text)
        }
    }
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Verify the audit chain in a stopped node's data dir: prints its length and head, or fails
    /// naming the first altered, missing or unlinked record.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// Issue a certificate signed by the cluster CA: for a node that will join (--node-id), or
    /// for a client (--client NAME), which authenticates as principal NAME (grant it roles with
    /// `quiver role grant`) when it sends no token: `quiver --cert NAME.pem --key NAME.key …`.
    Issue {
        /// The cluster CA: `<data dir of the founding node>/tls/ca`.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The node the certificate is for.
        #[arg(long, required_unless_present = "client", conflicts_with = "client")]
        node_id: Option<u64>,
        /// The principal a client certificate authenticates (the rules of model names).
        #[arg(long)]
        client: Option<String>,
        /// Where to write the files: for a node ca.pem, node.pem and node.key (the joining
        /// node's --tls-dir, by default `<its data dir>/tls`); for a client ca.pem, NAME.pem
        /// and NAME.key.
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid (renew it before with `cert rotate`).
        #[arg(long, default_value_t = quiver_node::tls::CERT_VALID_DAYS_DEFAULT)]
        valid_days: u32,
        /// A host name or address remote HTTPS clients reach the node by (repeat for more, at
        /// most 16), beside quiver.cluster, localhost, 127.0.0.1 and ::1, which every node
        /// certificate names. Node certificates only.
        #[arg(long = "name", value_name = "HOST", conflicts_with = "client")]
        names: Vec<String>,
    },
    /// Renew a node's certificate: a new key pair and validity period, the same node id and
    /// CA, written over the old files in its TLS directory. A running node starts using it
    /// for new connections within 10 seconds, without a restart.
    Rotate {
        /// The cluster CA: `<data dir of the founding node>/tls/ca`.
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        node_id: u64,
        /// The node's TLS directory (its --tls-dir, by default `<its data dir>/tls`).
        #[arg(long)]
        tls_dir: PathBuf,
        /// Days the renewed certificate is valid.
        #[arg(long, default_value_t = quiver_node::tls::CERT_VALID_DAYS_DEFAULT)]
        valid_days: u32,
        /// A host name or address remote HTTPS clients reach the node by (repeat for more);
        /// give every name the renewed certificate is to keep.
        #[arg(long = "name", value_name = "HOST")]
        names: Vec<String>,
    },
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
            let data_dir = args.data_dir.clone();
            let ca_file = args
                .tls_dir
                .clone()
                .unwrap_or_else(|| quiver_node::tls::default_tls_dir(&data_dir))
                .join("ca.pem");
            let (node, api, metrics) = start_node(*args).await?;
            println!("peer_addr={}", node.core.info.peer_addr);
            if let Some(listener) = &metrics {
                println!("metrics=http://{}/metrics", listener.local_addr()?);
            }
            let token_file = data_dir.join(ADMIN_TOKEN_FILE);
            if token_file.exists() {
                println!(
                    "export QUIVER_TOKEN_FILE={}",
                    absolute(&token_file).display()
                );
            }
            // Clients verify this node's certificate with the cluster CA's.
            println!("export QUIVER_CA={}", absolute(&ca_file).display());
            println!(
                "export QUIVER_ENDPOINT={}://{}",
                quiver_node::access::API_SCHEME,
                node.core.info.api_addr
            );
            serve_until(node, api, metrics, shutdown_signal()).await
        }
        Command::Up {
            data_dir,
            port,
            nodes,
        } => up(data_dir, port, nodes).await,
        Command::Bench(command) => bench(command).await,
        Command::Audit(AuditCommand::Verify { data_dir }) => {
            match quiver_node::audit::verify_data_dir(&data_dir)? {
                Ok(head) => {
                    println!(
                        "audit chain intact: {} record(s), head {}",
                        head.count,
                        if head.hash.is_empty() {
                            "(none)"
                        } else {
                            &head.hash
                        }
                    );
                    Ok(())
                }
                Err(e) => anyhow::bail!(
                    "audit chain of {} broken at record {}: {e}",
                    data_dir.display(),
                    e.seq()
                ),
            }
        }
        Command::Gc { data_dir, dry_run } => {
            let report = quiver_node::gc::collect(&data_dir, dry_run)?;
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
            client,
            out,
            valid_days,
            names,
        }) => {
            let ca = ClusterCa::load(&ca_dir)
                .with_context(|| format!("load the cluster CA from {}", ca_dir.display()))?;
            let Some(node_id) = node_id else {
                let name = client.unwrap_or_default();
                let (cert, key) = ca.issue_client(&name, valid_days)?.write(&out, &name)?;
                println!(
                    "issued a client certificate for {name}, valid {valid_days} days: {} and {} \
                     (with the CA's certificate beside them). Grant {name} a role \
                     (`quiver role grant {name} ROLE --namespace NS`) and connect with \
                     `quiver --cert {} --key {} …`",
                    cert.display(),
                    key.display(),
                    cert.display(),
                    key.display()
                );
                return Ok(());
            };
            ca.issue_named(node_id, valid_days, &names)?.write(&out)?;
            println!(
                "issued a certificate for node {node_id}, valid {valid_days} days, for {}, into {}",
                quiver_node::tls::NODE_CERT_NAMES
                    .iter()
                    .map(|n| n.to_string())
                    .chain(names.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(", "),
                out.display()
            );
            Ok(())
        }
        Command::Cert(CertCommand::Rotate {
            ca_dir,
            node_id,
            tls_dir,
            valid_days,
            names,
        }) => {
            let ca = ClusterCa::load(&ca_dir)
                .with_context(|| format!("load the cluster CA from {}", ca_dir.display()))?;
            ca.issue_named(node_id, valid_days, &names)?
                .replace(&tls_dir)
                .with_context(|| format!("renew the certificate in {}", tls_dir.display()))?;
            println!(
                "renewed the certificate of node {node_id}, valid {valid_days} days, in {}; a \
                 running node uses it for new connections within {}s",
                tls_dir.display(),
                quiver_node::peer_certs::CERT_RELOAD_INTERVAL.as_secs()
            );
            Ok(())
        }
    }
}

/// `path` from the filesystem root, for a line a user copies into another shell.
fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

async fn up(data_dir: PathBuf, port: u16, nodes: u16) -> anyhow::Result<()> {
    let cluster = LocalCluster::start(&data_dir, port, nodes).await?;
    // The CLI finds the first admin's token in `./.quiver/admin.token` (up's default data dir),
    // or wherever QUIVER_TOKEN_FILE says.
    let token_file = data_dir.join(ADMIN_TOKEN_FILE);
    let founder_token = data_dir.join("node-1").join(ADMIN_TOKEN_FILE);
    let token = std::fs::read_to_string(&founder_token).with_context(|| {
        format!(
            "read the first admin's token in {}",
            founder_token.display()
        )
    })?;
    if std::fs::read_to_string(&token_file).ok().as_deref() != Some(token.as_str()) {
        let _ = std::fs::remove_file(&token_file);
        quiver_node::tls::write_private(&token_file, &token)?;
    }
    println!(
        "export QUIVER_TOKEN_FILE={}",
        absolute(&token_file).display()
    );
    // The CLI finds the cluster CA's certificate, which it verifies the nodes with, in
    // `./.quiver/ca.pem`, or wherever QUIVER_CA says.
    let ca_file = data_dir.join(CA_FILE);
    let ca = cluster.ca_pem()?;
    if std::fs::read_to_string(&ca_file).ok().as_deref() != Some(ca.as_str()) {
        let _ = std::fs::remove_file(&ca_file);
        quiver_node::tls::write_private(&ca_file, &ca)?;
    }
    println!("export QUIVER_CA={}", absolute(&ca_file).display());
    for node in &cluster.nodes {
        println!(
            "export QUIVER_ENDPOINT={}://{}",
            quiver_node::access::API_SCHEME,
            node.core.info.api_addr
        );
    }
    eprintln!(
        "quiver: {} node(s) running, data under {}; Ctrl-C stops them",
        cluster.nodes.len(),
        data_dir.display()
    );
    for addr in &cluster.metrics_addrs {
        eprintln!("quiver: Prometheus metrics at http://{addr}/metrics");
    }
    if let Some(node) = cluster.nodes.first() {
        // The API port answers plaintext HTTP from this host: the MLflow client and a browser.
        let addr = node.core.info.api_addr.clone();
        eprintln!(
            "quiver: web UI at http://{addr}/ (sign in with the token in {})",
            absolute(&token_file).display()
        );
        eprintln!(
            "quiver: MLflow clients: export MLFLOW_TRACKING_URI=http://{addr} \
             MLFLOW_TRACKING_TOKEN=$(cat {})",
            absolute(&token_file).display()
        );
    }
    // A node whose consensus stopped on a fault has stopped serving; the cluster stops with it
    // and the command fails with the cause, rather than run on with a dead node.
    let nodes = cluster.nodes.clone();
    let fault = async move {
        let watches = nodes.iter().map(|node| {
            Box::pin(async move { (node.node_id(), node.raft.stopped_by_fault().await) })
        });
        futures::future::select_all(watches).await.0
    };
    tokio::select! {
        () = shutdown_signal() => cluster.stop().await,
        (id, why) = fault => {
            let _ = cluster.stop().await;
            anyhow::bail!(
                "node {id} stopped: its consensus stopped ({why}); the local cluster is stopped \
                 too; fix the cause (a full or failing disk under {}?) and run `up` again",
                data_dir.display()
            )
        }
    }
}
