//! quiver-sim: the deterministic cluster simulator.
//!
//! It runs a whole Quiver cluster — real `quiver_node::Node`s (the node's orchestration over
//! openraft on the heed stores and the registry state machine) — and its clients in one process,
//! on one thread, under virtual time, from a seed; it injects faults, checks invariants (and the
//! clients' history for linearizability) and reports figures.
//!
//! Why this shape: the code under test is the production code, built with `Node::assemble` over
//! the simulator's environment (decision 0014): its clock, request ids, chunk stores and chunk
//! network, and `SimTransport` in place of the gRPC peer transport. What is simulated is only the
//! environment, and every source of nondeterminism in it is drawn from
//! the seed: tokio's scheduler (a `current_thread` runtime with `rng_seed` and paused time),
//! openraft's election timeouts (`quiver_raft::seed_thread_rng`), the network's latencies and
//! losses, the fault schedule and the clients' choices. Same seed, same binary: same trace.
//!
//! Pure parts, unit-tested on their own: fault schedules ([`schedule`]), the link model
//! ([`net::LinkModel`]), the pipelines' op generation ([`workload`]), the invariant checkers
//! ([`check`], [`check_chunks`], [`check_watch`], [`linear`]) and the report's statistics
//! ([`report`]). The I/O shell: [`cluster`] (start, crash, restart nodes), [`net`]'s router and
//! transport, [`client`] (ops and reads through any node), [`watchers`] (watches through any
//! node, resumed on another after an error), [`run`] (one seed) and [`sweep`] (many seeds on
//! several threads).
//!
//! Modules:
//! - [`config`]: scenario, sizes, the planted bugs (test-only: lost acks, READY before W
//!   copies, unverified chunks), the replay command.
//! - [`disk`]: the log disk model — what a crash (a power loss) takes back.
//! - [`trace`]: the ordered event log and its blake3.
//! - [`chunkstore`]: in-memory chunk stores with corruption injection, and synthesized artifacts
//!   (seeded bytes at a documented scale: 4 KiB real per 4 MiB logical chunk).
//! - [`chunknet`]: the simulated chunk network (`ChunkPeers`): regions, zones, latency,
//!   per-endpoint bandwidth, byte accounting, down endpoints and cut links; nodes serve clients
//!   through the real `read_chunk`.
//! - [`chunks`]: the artifact side of `chaos` and `failover`: uploads through the real
//!   `ChunkSink` (W = 2), downloads through nodes' real `read_chunk`, the production repair and
//!   scrub on every node, bit rot; [`check_chunks`] judges what clients got, the copies behind
//!   every READY ack, and replication after healing.
//! - [`load`] and [`loadreport`]: the `load` scenario (a fleet of serving replicas pulls one large
//!   model through Quiver's path and through a one-node baseline) and its table, JSON and SVG.
//! - [`rollout`], [`agents`] and [`check_rollout`]: the `rollout` scenario (serving agents
//!   running the client crate's `AgentCore` follow an endpoint through rollouts and rollbacks
//!   under faults), its agents, and the checker of what they answered and when.
//! - [`panics`]: a panic inside a run (openraft asserting on corrupted state) becomes a
//!   violation of that run instead of noise on stderr.

pub mod agents;
pub mod check;
pub mod check_chunks;
pub mod check_deploy;
pub mod check_rollout;
pub mod check_watch;
pub mod chunknet;
pub mod chunks;
pub mod chunkstore;
pub mod client;
pub mod cluster;
pub mod config;
pub mod deployers;
pub mod disk;
pub mod hostile;
pub mod linear;
pub mod load;
pub mod loadreport;
pub mod membership;
pub mod net;
pub mod panics;
pub mod report;
pub mod rollout;
pub mod run;
pub mod schedule;
pub mod sweep;
pub mod trace;
pub mod watchers;
pub mod workload;

pub use config::{Plant, Scenario, SeedRange, SimConfig};
pub use report::RunReport;
pub use run::run;
pub use sweep::sweep;
