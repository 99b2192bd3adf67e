//! `quiver-node bench tls-floor`: what TLS alone adds to one unary gRPC round trip on this
//! machine, with nothing of Quiver's in the call. Two tonic servers in this process serve
//! gRPC's health service on loopback, one plaintext and one behind the node's own TLS: the
//! client API's rustls configuration (`PeerTls::api_server_config`, a certificate from a fresh
//! cluster CA) and its handshake loop (`quiver_raft::tls_incoming`); one client calls each in
//! turn, alternating rounds. It is the
//! floor under the access benchmark (`tests/bench/access_overhead.py`): what a registry read
//! pays for TLS before it checks anything.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures::Stream;
use quiver_raft::{PeerIdentity, PeerTls};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::Connected;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Server};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The most calls per round and rounds the command takes.
pub const CALLS_MAX: usize = 1_000_000;
pub const ROUNDS_MAX: usize = 100;

#[derive(Clone, Debug)]
pub struct TlsFloorOptions {
    /// Calls per round, on each server.
    pub calls: usize,
    /// Rounds, alternating which server goes first.
    pub rounds: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct TlsFloorReport {
    pub calls: usize,
    pub rounds: usize,
    /// Medians of the rounds' p50s, µs.
    pub plaintext_us_p50: f64,
    pub tls_us_p50: f64,
    /// TLS minus plaintext, µs, and as a share of plaintext (percent).
    pub tls_added_us: f64,
    pub tls_added_pct: f64,
    /// Each round's p50, µs.
    pub plaintext_rounds_us: Vec<f64>,
    pub tls_rounds_us: Vec<f64>,
}

pub async fn tls_floor(options: &TlsFloorOptions) -> anyhow::Result<TlsFloorReport> {
    if !(1..=CALLS_MAX).contains(&options.calls) || !(1..=ROUNDS_MAX).contains(&options.rounds) {
        anyhow::bail!("--calls must be 1 to {CALLS_MAX} and --rounds 1 to {ROUNDS_MAX}");
    }
    let ca_dir = tempfile::tempdir().context("a temporary directory for the CA")?;
    let ca = quiver_node::tls::ClusterCa::create(ca_dir.path(), "tls-floor")?;
    let cert = ca.issue(1)?;
    let tls = PeerTls {
        ca_cert_pem: cert.ca_cert_pem.clone(),
        cert_pem: String::new(),
        key_pem: String::new(),
    };
    let config =
        tls.api_server_config(Arc::new(PeerIdentity::new(&cert.cert_pem, &cert.key_pem)?))?;

    let plain_listener = TcpListener::bind("127.0.0.1:0").await?;
    let plain_addr = plain_listener.local_addr()?;
    let tls_listener = TcpListener::bind("127.0.0.1:0").await?;
    let tls_addr = tls_listener.local_addr()?;
    let (tls_incoming, handshaking) =
        quiver_raft::tls_incoming("tls-floor server", 1, tls_listener, config);
    let tasks = [
        spawn_health(tokio_stream::wrappers::TcpListenerStream::new(
            plain_listener,
        )),
        spawn_health(tls_incoming),
        handshaking,
    ];
    let result = async {
        let plain = Endpoint::from_shared(format!("http://{plain_addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        let tls = Endpoint::from_shared(format!("https://{tls_addr}"))?
            .tcp_nodelay(true)
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&cert.ca_cert_pem))
                    .domain_name(quiver_node::tls::PEER_TLS_SERVER_NAME),
            )?
            .connect()
            .await?;
        // Warm both connections up before anything counts.
        let warm = options.calls.min(2_000);
        p50_us(plain.clone(), warm).await?;
        p50_us(tls.clone(), warm).await?;
        let (mut plain_rounds, mut tls_rounds) = (Vec::new(), Vec::new());
        for round in 0..options.rounds {
            if round % 2 == 0 {
                plain_rounds.push(p50_us(plain.clone(), options.calls).await?);
                tls_rounds.push(p50_us(tls.clone(), options.calls).await?);
            } else {
                tls_rounds.push(p50_us(tls.clone(), options.calls).await?);
                plain_rounds.push(p50_us(plain.clone(), options.calls).await?);
            }
        }
        anyhow::Ok((plain_rounds, tls_rounds))
    }
    .await;
    for task in tasks {
        task.abort();
    }
    let (plaintext_rounds_us, tls_rounds_us) = result?;
    let plaintext_us_p50 = median(&plaintext_rounds_us);
    let tls_us_p50 = median(&tls_rounds_us);
    Ok(TlsFloorReport {
        calls: options.calls,
        rounds: options.rounds,
        plaintext_us_p50,
        tls_us_p50,
        tls_added_us: tls_us_p50 - plaintext_us_p50,
        tls_added_pct: (tls_us_p50 / plaintext_us_p50 - 1.0) * 100.0,
        plaintext_rounds_us,
        tls_rounds_us,
    })
}

pub fn table(r: &TlsFloorReport) -> String {
    format!(
        "unary gRPC health check, 1 client, {} rounds of {} calls (medians of the rounds' \
         p50s)\nplaintext  {:8.1} µs\nTLS        {:8.1} µs\nTLS adds   {:+8.1} µs ({:+.1}%)\n",
        r.rounds, r.calls, r.plaintext_us_p50, r.tls_us_p50, r.tls_added_us, r.tls_added_pct
    )
}

/// Serves gRPC's health service on the connections `incoming` yields, until aborted.
fn spawn_health<S, IO, E>(incoming: S) -> JoinHandle<()>
where
    S: Stream<Item = Result<IO, E>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (_reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        let _ = Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    })
}

/// `calls` sequential health checks on `channel`: their p50, µs.
async fn p50_us(channel: Channel, calls: usize) -> anyhow::Result<f64> {
    let mut client = HealthClient::new(channel);
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .context("health check")?;
        latencies.push(start.elapsed());
    }
    latencies.sort_unstable();
    Ok(latencies[latencies.len() / 2].as_secs_f64() * 1e6)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}
