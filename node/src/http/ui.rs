//! The web UI: server-rendered pages.

use std::sync::Arc;

use crate::node::Node;

/// The UI's routes.
pub fn router(_node: Arc<Node>) -> axum::Router {
    axum::Router::new()
}
