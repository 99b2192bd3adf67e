//! quiver-client: the public contract of a Quiver node — the protobuf API,
//! the reference syntax, signature files, and the Rust SDK the `quiver` CLI
//! and its benchmarks are built on.

pub mod bench;
pub mod cli;
pub mod reference;
pub mod sdk;
pub mod signature;
pub mod wire;

/// Generated protobuf types and gRPC stubs (package `quiver.v1`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("quiver.v1");
}

#[cfg(test)]
pub(crate) mod fake_node;

pub use reference::{ParseRefError, Reference, VersionSelector};
pub use sdk::{actor_from_env, Client, ClientError, RegisterOptions};
