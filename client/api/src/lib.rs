//! quiver-api: the public contract of a Quiver node — the protobuf API
//! (`quiver.v1`, client stubs and server traits), the reference syntax, the
//! manifest's wire form and model signatures as plain data (`schema`:
//! compatibility and request validation). Pure contract: no SDK, no CLI, no benchmarks,
//! so a server links it without the tools (`quiver-client` holds those).

pub mod reference;
pub mod schema;
pub mod search;
pub mod wire;

/// Generated protobuf types and gRPC stubs (package `quiver.v1`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("quiver.v1");
}

pub use reference::{ParseRefError, Reference, VersionSelector};
