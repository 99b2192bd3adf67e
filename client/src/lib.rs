//! quiver-client: the tools over a Quiver node's public contract — the Rust
//! SDK, signature files, and the `quiver` CLI and its benchmarks. The
//! contract itself (protobuf API, reference syntax, wire conversions) is the
//! `quiver-api` crate, re-exported here so SDK users need one dependency.

pub mod agent;
pub mod audit_bundle;
pub mod bench;
pub mod cli;
pub mod sdk;
pub mod signature;

pub use quiver_api::{proto, reference, wire};

#[cfg(test)]
pub(crate) mod fake_node;

pub use reference::{ParseRefError, Reference, VersionSelector};
pub use sdk::{token_from_env, Client, ClientError, RegisterOptions};
