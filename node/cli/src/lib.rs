//! quiver-node-cli: the `quiver-node` command line over the quiver-node
//! library — `serve`, `up`, `cert`, `gc` and the cluster benchmarks. A crate
//! of its own so that the library servers link carries no CLI, no
//! benchmarks and no tools crate (the benchmarks drive clusters with the
//! SDK from quiver-client, and the tables come from its CLI helpers).
//!
//! `cli` parses and dispatches; `launch` starts nodes from their options
//! (one, or a local cluster); `bench` measures clusters it starts through
//! `launch`. Neither `cli` nor `bench` is imported by `launch`. `bench_lineage` measures a
//! state it seeds directly, without a cluster; `bench_tls` what TLS alone adds to a bare gRPC
//! call, without Quiver.

pub mod bench;
pub mod bench_lineage;
pub mod bench_search;
pub mod bench_tls;
pub mod cli;
pub mod launch;

pub use cli::main;
