//! Serving a node's gRPC API on a listener until a shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quiver_api::proto::audit_server::AuditServer;
use quiver_api::proto::deployments_server::DeploymentsServer;
use quiver_api::proto::governance_server::GovernanceServer;
use quiver_api::proto::lineage_server::LineageServer;
use quiver_api::proto::watch_server::WatchServer;
use quiver_api::proto::{
    access_server::AccessServer, admin_server::AdminServer, lifecycle_server::LifecycleServer,
    models_server::ModelsServer, versions_server::VersionsServer,
};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::node::Node;
use crate::service::{
    access::AccessService, admin::AdminService, audit::AuditService, deploy::DeployService,
    governance::GovernanceService, lifecycle::LifecycleService, lineage::LineageService,
    models::ModelsService, versions::VersionsService, watch::WatchService,
};

/// Largest gRPC message either side accepts: one chunk plus framing.
pub const MESSAGE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// HTTP/2 flow-control windows: large enough that one upload or download
/// stream is not throttled by round trips at loopback or LAN speeds.
const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// Requests (HTTP/2 streams) one client connection may have open at once; the next is refused
/// by HTTP/2 itself (`RST_STREAM` with `REFUSED_STREAM`) until one ends. A client that honours
/// the limit the server announces (tonic's, so the SDK's) does not send it: it waits for a
/// stream to end. Uploads have a tighter bound of their own (`upload_slots`).
pub const API_STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// A connection idle this long is pinged, and closed if the ping is not answered within
/// [`API_KEEPALIVE_TIMEOUT`]: a vanished client does not hold its streams forever.
pub const API_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const API_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// An upload whose client sends nothing for this long is abandoned (`DEADLINE_EXCEEDED`).
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A download whose client reads nothing for this long is abandoned (`DEADLINE_EXCEEDED`).
pub const DOWNLOAD_SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// The limits the API puts on its clients' connections and streams. Production serves with
/// [`ApiLimits::default`], the named constants above; tests pass shorter durations so that the
/// same code reaches its edges in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// [`API_STREAMS_PER_CONNECTION_MAX`].
    pub streams_per_connection_max: u32,
    /// [`API_KEEPALIVE_INTERVAL`]: the interval of the HTTP/2 ping, which the client's own
    /// HTTP/2 code answers, so it finds a host that vanished as well as a process that hangs
    /// or stops reading. (A plaintext listener, in tests of the service layer, also sets it as
    /// the TCP keepalive interval.)
    pub keepalive_interval: Duration,
    /// [`API_KEEPALIVE_TIMEOUT`].
    pub keepalive_timeout: Duration,
    /// [`UPLOAD_IDLE_TIMEOUT`].
    pub upload_idle_timeout: Duration,
    /// [`DOWNLOAD_SEND_TIMEOUT`].
    pub download_send_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            streams_per_connection_max: API_STREAMS_PER_CONNECTION_MAX,
            keepalive_interval: API_KEEPALIVE_INTERVAL,
            keepalive_timeout: API_KEEPALIVE_TIMEOUT,
            upload_idle_timeout: UPLOAD_IDLE_TIMEOUT,
            download_send_timeout: DOWNLOAD_SEND_TIMEOUT,
        }
    }
}

/// A duration as a limit's message shows it: whole seconds, or milliseconds below that.
pub fn shown_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Serves the API on `listener`, within `limits`, until `shutdown` resolves, then stops the
/// node's Raft member.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    limits: ApiLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // A node whose consensus stopped on a fault would answer reads from frozen state: it stops
    // serving instead, and the caller exits non-zero with the cause.
    let fault = Arc::new(std::sync::Mutex::new(None::<String>));
    // Set when shutdown begins: open watches end, so the graceful shutdown need not wait.
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let closing_http = closing_rx.clone();
    let shutdown = {
        let (node, fault) = (node.clone(), fault.clone());
        async move {
            tokio::select! {
                () = shutdown => {}
                why = node.raft.stopped_by_fault() => {
                    tracing::error!(node_id = node.node_id(), "consensus stopped: {why}");
                    *fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                }
            }
            closing.send_replace(true);
        }
    };
    let versions = VersionsServer::new(VersionsService {
        node: node.clone(),
        limits,
    })
    .max_decoding_message_size(MESSAGE_BYTES_MAX)
    .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let router = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        .max_concurrent_streams(Some(limits.streams_per_connection_max))
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .tcp_keepalive(Some(limits.keepalive_interval))
        .layer(tower::layer::layer_fn({
            let metrics = node.metrics.clone();
            move |inner| Timed {
                inner,
                metrics: metrics.clone(),
            }
        }))
        .add_service(ModelsServer::new(ModelsService { node: node.clone() }))
        .add_service(versions)
        .add_service(LifecycleServer::new(LifecycleService {
            node: node.clone(),
        }))
        .add_service(AdminServer::new(AdminService { node: node.clone() }))
        .add_service(AccessServer::new(AccessService { node: node.clone() }))
        .add_service(AuditServer::new(AuditService { node: node.clone() }))
        .add_service(GovernanceServer::new(GovernanceService {
            node: node.clone(),
        }))
        .add_service(LineageServer::new(LineageService { node: node.clone() }))
        .add_service(DeploymentsServer::new(DeployService { node: node.clone() }))
        .add_service(WatchServer::new(WatchService {
            node: node.clone(),
            closing: closing_rx,
            send_timeout: limits.download_send_timeout,
        }));
    let api_tls = match crate::access::INSECURE_BASELINE {
        false => node.api_tls(),
        true => {
            let local = listener.local_addr().context("the API port's address")?;
            anyhow::ensure!(
                local.ip().is_loopback(),
                "this build is the insecure benchmark baseline (no TLS, no access checks): it \
                 serves on loopback only, not on {local}"
            );
            tracing::warn!(
                "INSECURE BENCHMARK BASELINE BUILD: the client API on {local} is plaintext and \
                 checks no credentials; use it only to measure what TLS and access checks cost"
            );
            None
        }
    };
    match api_tls {
        Some(config) => {
            let config = config.context("the client API's TLS configuration")?;
            // TLS for gRPC, and plaintext HTTP (the MLflow API, the UI) from this host only.
            let port = crate::http::api_port::sort_connections(listener, node.node_id())
                .context("the API port's address")?;
            let (handshaken, handshaking) =
                quiver_raft::tls_incoming_from("API server", node.node_id(), port.tls, config);
            let tls = crate::http::api_port::sort_by_alpn(handshaken, port.http.local());
            let app = crate::http::router(node.clone());
            let http = tokio::spawn(serve_http(port.http, app.clone(), closing_http.clone()));
            let https = tokio::spawn(serve_http(tls.https, app, closing_http));
            let served = router
                .serve_with_incoming_shutdown(tls.grpc, shutdown)
                .await;
            // The sorting task owns the listener: the port is free once it is gone.
            port.sorting.abort();
            let _ = port.sorting.await;
            handshaking.abort();
            tls.sorting.abort();
            for task in [http, https] {
                task.abort();
                let _ = task.await;
            }
            served.context("serve gRPC")?;
        }
        // A node without certificates of its own (tests of the service layer).
        None => router
            .serve_with_incoming_shutdown(
                // Nagle plus delayed ACKs adds ~40 ms to small responses.
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
            .context("serve gRPC")?,
    }
    let stopped = node.shutdown().await;
    let fault = fault.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(why) = fault {
        anyhow::bail!(
            "node {} stopped serving: its consensus stopped ({why}); fix the cause (a full or \
             failing disk?) and start it again: it resumes from its data directory",
            node.node_id()
        );
    }
    stopped.context("stop raft")
}

/// Serves the node's HTTP routes on `listener` until `closing` turns true.
async fn serve_http<L>(
    listener: L,
    app: axum::Router,
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = closing.wait_for(|c| *c).await;
        })
        .await
}

/// Every API request, timed into the node's metrics (`quiver_rpc_requests_total`,
/// `quiver_rpc_latency_ms`) with the gRPC status its response starts with (an error is
/// answered at once, its status in the headers; a success carries its status in the trailers,
/// so it counts as `0`).
#[derive(Clone)]
struct Timed<S> {
    inner: S,
    metrics: Arc<crate::metrics::NodeMetrics>,
}

type Http<B> = tonic::codegen::http::Request<B>;

impl<S, B, RB> tower::Service<Http<B>> for Timed<S>
where
    S: tower::Service<Http<B>, Response = tonic::codegen::http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Http<B>) -> Self::Future {
        let method = request.uri().path().to_string();
        let metrics = self.metrics.clone();
        let started = std::time::Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            let code = match &answer {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0")
                    .to_string(),
                Err(_) => "transport".to_string(),
            };
            metrics.rpc(&method, &code, started.elapsed());
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_is_shown_in_seconds_or_in_milliseconds_below_a_whole_second() {
        assert_eq!(shown_duration(UPLOAD_IDLE_TIMEOUT), "60s");
        assert_eq!(shown_duration(Duration::from_millis(300)), "300ms");
        assert_eq!(shown_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(shown_duration(Duration::ZERO), "0ms");
    }
}
