//! `UpsertNode` and `RemoveNode`: the cluster's members as the registry knows them.

use super::{Applied, Write};
use crate::command::Response;
use crate::domain::{validate_name, DomainError, NodeInfo};
use crate::state::tables::{encode, removed_node_key};
use crate::state::AppResult;

/// A node announces (or updates) how to reach it and where it is.
pub(super) fn upsert_node(w: &mut Write<'_, '_>, info: &NodeInfo) -> AppResult<Applied> {
    for (field, value) in [
        ("api_addr", &info.api_addr),
        ("peer_addr", &info.peer_addr),
        ("quic_addr", &info.quic_addr),
    ] {
        if value.parse::<std::net::SocketAddr>().is_err() {
            return Err(DomainError::invalid(
                format!("node.{field}"),
                format!("{value:?} is not a host:port socket address"),
            )
            .into());
        }
    }
    for (field, value) in [("region", &info.region), ("zone", &info.zone)] {
        if !value.is_empty() {
            validate_name(&format!("node.{field}"), value)?;
        }
    }
    w.app
        .tables
        .nodes
        .put(w.wtxn, &info.node_id.to_be_bytes(), &encode(info)?)?;
    Ok((
        Response::Node(info.clone()),
        format!("node {}", info.node_id),
    ))
}

/// A node leaves the table, and the time of its removal is kept: its peers refuse its
/// certificates issued before then (decision 0017), whether or not it comes back.
pub(super) fn remove_node(w: &mut Write<'_, '_>, node_id: u64) -> AppResult<Applied> {
    let info = w.app.get_node(w.wtxn, node_id)?;
    w.app.tables.nodes.delete(w.wtxn, &node_id.to_be_bytes())?;
    w.app
        .tables
        .meta
        .put(w.wtxn, &removed_node_key(node_id), &w.at_ms.to_be_bytes())?;
    Ok((Response::Node(info), format!("node {node_id}")))
}
