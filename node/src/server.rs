//! Serving a node's gRPC API on a listener until a shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quiver_api::proto::{
    admin_server::AdminServer, lifecycle_server::LifecycleServer, models_server::ModelsServer,
    versions_server::VersionsServer,
};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::node::Node;
use crate::service::{
    admin::AdminService, lifecycle::LifecycleService, models::ModelsService,
    versions::VersionsService,
};

/// Largest gRPC message either side accepts: one chunk plus framing.
pub const MESSAGE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// HTTP/2 flow-control windows: large enough that one upload or download
/// stream is not throttled by round trips at loopback or LAN speeds.
const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// Requests (HTTP/2 streams) one client connection may have open at once; the next is refused
/// by HTTP/2 itself (REFUSED_STREAM) until one ends. Uploads have a tighter bound of their own
/// (`upload_slots`).
pub const API_STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// A connection idle this long is pinged, and closed if the ping is not answered within
/// [`API_KEEPALIVE_TIMEOUT`]: a vanished client does not hold its streams forever.
pub const API_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const API_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// An upload whose client sends nothing for this long is abandoned (`DEADLINE_EXCEEDED`).
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A download whose client reads nothing for this long is abandoned.
pub const DOWNLOAD_SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves the API on `listener` until `shutdown` resolves, then stops the
/// node's Raft member.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // A node whose consensus stopped on a fault would answer reads from frozen state: it stops
    // serving instead, and the caller exits non-zero with the cause.
    let fault = Arc::new(std::sync::Mutex::new(None::<String>));
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
        }
    };
    let versions = VersionsServer::new(VersionsService { node: node.clone() })
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        .max_concurrent_streams(Some(API_STREAMS_PER_CONNECTION_MAX))
        .http2_keepalive_interval(Some(API_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(API_KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(API_KEEPALIVE_INTERVAL))
        .add_service(ModelsServer::new(ModelsService { node: node.clone() }))
        .add_service(versions)
        .add_service(LifecycleServer::new(LifecycleService {
            node: node.clone(),
        }))
        .add_service(AdminServer::new(AdminService { node: node.clone() }))
        .serve_with_incoming_shutdown(
            // Nagle plus delayed ACKs adds ~40 ms to small responses.
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .context("serve gRPC")?;
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
