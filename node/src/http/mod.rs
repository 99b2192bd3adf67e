//! A node's HTTP surface, beside its gRPC API: Prometheus `GET /metrics`, the MLflow-compatible
//! REST API (`mlflow`) and the web UI (`ui`). One router, served on the node's HTTP listener.

pub mod api_port;
pub mod mlflow;
pub mod ui;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::node::Node;

/// Every HTTP route a node answers.
pub fn router(node: Arc<Node>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        // A browser pointed at a node's address lands on the UI.
        .route(
            "/",
            axum::routing::get(|| async { axum::response::Redirect::to("/ui/models") }),
        )
        .with_state(node.clone())
        .merge(mlflow::router(node.clone()))
        .merge(ui::router(node))
}

/// Prometheus text exposition of the node's metrics.
async fn scrape(
    axum::extract::State(node): axum::extract::State<Arc<Node>>,
) -> impl axum::response::IntoResponse {
    let text = node.metrics.render(&node.metrics_snapshot());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// Serves [`router`] on `listener`, plaintext, until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(node))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serve HTTP")
}
