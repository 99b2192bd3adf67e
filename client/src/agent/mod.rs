//! The serving agent (issue 15). Its decisions are pure so that the simulator runs them:
//! `core` (which versions to keep, who answers a request, what to report), `routing` (a split
//! as sticky buckets) and `stats` (counts per version and generation). `runtime` is the seam
//! to model runtimes; `onnx` is the one built in.

pub mod core;
mod http;
pub mod metrics;
pub mod onnx;
pub mod routing;
pub mod runtime;
pub mod serve;
pub mod stats;

pub use self::core::{Action, AgentCore, AgentStatus, Applied, Route, VersionState};
pub use routing::{Routing, RoutingError, BUCKETS};
pub use serve::{Agent, AgentConfig, Faults, Registry};

/// The runtimes built into `quiver agent`.
pub fn builtin_runtimes() -> Vec<std::sync::Arc<dyn runtime::Runtime>> {
    vec![std::sync::Arc::new(onnx::OnnxRuntime)]
}
