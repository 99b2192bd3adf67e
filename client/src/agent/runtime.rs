//! The runtimes a serving agent loads versions with. A runtime is what turns a version's files
//! on local disk into something that answers prediction requests; the agent does everything
//! around it (pulling the files, validating each request against the version's signature,
//! routing, shadow copies, counting). One is built in, [`super::onnx::OnnxRuntime`] (ONNX
//! through `tract-onnx`, pure Rust). Another runtime (a Python model server, a TorchScript
//! binding, a remote Triton) implements these two traits and is passed to the agent beside or
//! instead of it:
//!
//! ```no_run
//! use std::path::Path;
//! use std::sync::Arc;
//! use quiver_api::schema::Schema;
//! use quiver_client::agent::runtime::{LoadError, LoadedModel, PredictError, Runtime};
//!
//! struct Echo;
//! struct EchoModel;
//! impl Runtime for Echo {
//!     fn name(&self) -> &'static str { "echo" }
//!     fn accepts(&self, dir: &Path) -> bool { dir.join("echo.txt").is_file() }
//!     fn load(&self, _dir: &Path, _schema: Option<&Schema>) -> Result<Arc<dyn LoadedModel>, LoadError> {
//!         Ok(Arc::new(EchoModel))
//!     }
//! }
//! impl LoadedModel for EchoModel {
//!     fn predict(&self, body: &serde_json::Value) -> Result<serde_json::Value, PredictError> {
//!         Ok(body.get("inputs").cloned().unwrap_or_default())
//!     }
//! }
//! ```
//!
//! Both calls block; the agent makes them off its async threads. `predict` is called
//! concurrently from several threads and only with a body that has passed validation against
//! the version's signature when the version has one.

use std::path::Path;
use std::sync::Arc;

use quiver_api::schema::Schema;

/// Why a version could not be loaded: shown in the agent's status and logs, and the version is
/// not served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

/// Why a prediction failed inside the model: answered as a 500 naming the version, and counted
/// as an error of that version (the errors that can roll a canary back).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PredictError(pub String);

/// A way to load versions.
pub trait Runtime: Send + Sync {
    /// A short name for status, logs and metrics (`onnx`).
    fn name(&self) -> &'static str;
    /// Whether the version whose files are in `dir` is for this runtime (the agent takes the
    /// first runtime that accepts it).
    fn accepts(&self, dir: &Path) -> bool;
    /// Loads the version whose files are in `dir`. `schema` is the version's signature, when
    /// it was registered with one.
    fn load(&self, dir: &Path, schema: Option<&Schema>) -> Result<Arc<dyn LoadedModel>, LoadError>;
}

/// A loaded version.
pub trait LoadedModel: Send + Sync {
    /// The predictions for a request body in one of MLflow serving's JSON forms (`inputs` by
    /// name or position, `instances`, `dataframe_split`): the value the agent answers as
    /// `{"predictions": …}`.
    fn predict(&self, body: &serde_json::Value) -> Result<serde_json::Value, PredictError>;
}
