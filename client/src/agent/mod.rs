//! The serving agent's logic (issue 15), pure so that the simulator can run it: which version
//! answers a request (`routing`). The agent process around it (watching its endpoint, pulling
//! versions, loading them, serving HTTP, reporting) is not built yet.

pub mod routing;

pub use routing::{Routing, RoutingError, BUCKETS};
