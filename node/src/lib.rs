//! quiver-node: the registry — domain types, the replicated state machine,
//! the gRPC services and the node that ties them to Raft and the chunk store.

pub mod bench;
pub mod cli;
pub mod command;
pub mod domain;
pub mod env;
pub mod gc;
pub mod launch;
pub mod node;
pub mod replication;
pub mod server;
pub mod service;
pub mod state;
pub mod tls;

pub use node::{Node, NodeConfig};
