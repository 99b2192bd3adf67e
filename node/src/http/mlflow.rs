//! The MLflow-compatible REST API (`/api/2.0/mlflow/...`, `/api/2.0/mlflow-artifacts/...`).

use std::sync::Arc;

use crate::node::Node;

/// The MLflow routes.
pub fn router(_node: Arc<Node>) -> axum::Router {
    axum::Router::new()
}
