//! The serving agent (issue 15). Its decisions are pure so that the simulator runs them: which
//! version answers a request (`routing`). `runtime` is the seam to the model runtimes; `onnx`
//! is the one built in.

pub mod onnx;
pub mod routing;
pub mod runtime;

pub use routing::{Routing, RoutingError, BUCKETS};
