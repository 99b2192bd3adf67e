//! quiver-client: the public contract of a Quiver node — the protobuf API,
//! the reference syntax, and the Rust SDK the `quiver` CLI is built on.

pub mod reference;

/// Generated protobuf types and gRPC stubs (package `quiver.v1`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("quiver.v1");
}

pub use reference::{ParseRefError, Reference, VersionSelector};
