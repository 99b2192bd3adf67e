//! The `quiver-node` command line: `serve` runs one node, `up` runs a local
//! cluster on loopback for trying Quiver out.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use crate::node::{Node, NodeConfig};
use crate::server::serve;

#[derive(Parser, Debug)]
#[command(name = "quiver-node", version, about = "Quiver registry node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node: its data lives in --data-dir, its API on --listen.
    Serve {
        /// Where the Raft log, the state and the chunk store live.
        #[arg(long)]
        data_dir: PathBuf,
        /// Address of the gRPC API (port 0 picks a free port; the chosen one is printed).
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: SocketAddr,
        /// This node's id in the cluster (fixed for the life of its data dir).
        #[arg(long, default_value_t = 1)]
        node_id: u64,
    },
    /// Run a local cluster on loopback with data under --data-dir, until Ctrl-C.
    Up {
        #[arg(long, default_value = ".quiver")]
        data_dir: PathBuf,
        /// Port of the first node's API.
        #[arg(long, default_value_t = 7400)]
        port: u16,
        /// Number of nodes (one until clustering lands).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1))]
        nodes: u16,
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
        Command::Serve {
            data_dir,
            listen,
            node_id,
        } => run_node(node_id, data_dir, listen).await,
        Command::Up {
            data_dir,
            port,
            nodes: _,
        } => {
            let listen: SocketAddr = ([127, 0, 0, 1], port).into();
            run_node(1, data_dir.join("node-1"), listen).await
        }
    }
}

async fn run_node(node_id: u64, data_dir: PathBuf, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("listen on {listen} (is another node running there? pick another port)")
    })?;
    let addr = listener.local_addr().context("read the bound address")?;
    let node = Node::open(NodeConfig {
        node_id,
        data_dir: data_dir.clone(),
        advertise_addr: addr.to_string(),
    })
    .await
    .with_context(|| format!("open node {node_id} in {}", data_dir.display()))?;
    tracing::info!(node_id, %addr, data_dir = %data_dir.display(), "node ready");
    println!("export QUIVER_ENDPOINT=http://{addr}");
    serve(node, listener, shutdown_signal()).await?;
    tracing::info!(node_id, "node stopped");
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
