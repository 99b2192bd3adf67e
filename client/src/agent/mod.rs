//! The serving agent (issue 15). Its decisions are pure so that the simulator runs them:
//! `core` (which versions to keep, who answers a request, what to report), `routing` (a split
//! as sticky buckets) and `stats` (counts per version and generation). `runtime` is the seam
//! to model runtimes; `onnx` is the one built in.

pub mod core;
pub mod routing;
pub mod runtime;
pub mod stats;

pub use self::core::{Action, AgentCore, AgentStatus, Applied, Route, VersionState};
pub use routing::{Routing, RoutingError, BUCKETS};
