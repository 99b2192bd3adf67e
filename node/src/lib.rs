//! quiver-node: the registry — domain types, the replicated state machine,
//! the gRPC services and the node that ties them to Raft and the chunk store.
//! The `quiver-node` binary (commands, local clusters, benchmarks) is the
//! `quiver-node-cli` crate in `cli/`, so this library links no tools.

pub mod access;
pub mod access_cache;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod command;
pub mod controller;
pub mod deploy;
pub mod domain;
pub mod download;
pub mod env;
pub mod error;
pub mod gc;
pub mod governance;
pub mod http;
pub mod in_flight;
pub mod ingest;
pub mod lineage;
pub mod logged_model;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod peer_certs;
pub mod replication;
pub mod server;
pub mod service;
pub mod state;
#[cfg(test)]
mod test_node;
pub mod tls;
pub mod upload_slots;
pub mod watch;
pub mod watch_feed;

pub use env::Env;
pub use error::NodeError;
pub use node::{CoreConfig, Node, NodeConfig};
