//! What `mlflow.<flavor>.log_model(...)` and `mlflow.pyfunc.load_model("models:/…")` call
//! besides the registry: the default experiment "0", logged models (replicated through Raft:
//! any node may get the next call), and the `mlflow-artifacts` proxy. Artifact locations are
//! `mlflow-artifacts:/…`, so the client sends and fetches bytes through a node, never around
//! it:
//! - `0/models/<model id>/artifacts/<path>`: a logged model's files. A PUT streams the body
//!   through the chunker into the chunk store (W copies, as an upload's chunks) and then records
//!   the file on the logged model; nothing holds a whole file in memory.
//! - `registry/<model>/<version>/<path>`: a version's files, read as a download reads them.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures::StreamExt;
use quiver_transfer::{validate_path, ChunkRef, Chunker, FileEntry, CHUNKS_PER_MANIFEST_MAX};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{model_name, pairs_json, ApiError, Call};
use crate::access::Target;
use crate::auth::Role;
use crate::command::{Op, Response as Applied};
use crate::domain::{VersionRef, VersionSelector};
use crate::error::NodeError;
use crate::gc::PinSet;
use crate::ingest::{write_chunks, WRITE_QUEUE_DEPTH};
use crate::logged_model::{self, LoggedModel, LoggedModelStatus, EXPERIMENT_ID};
use crate::node::{Consistency, Node};

/// The default experiment's name, as MLflow calls it.
pub const EXPERIMENT_NAME: &str = "Default";
/// Longest artifact path accepted.
pub const ARTIFACT_PATH_BYTES_MAX: usize = 4096;

pub fn routes() -> axum::Router<Arc<Node>> {
    const M: &str = "/api/2.0/mlflow";
    const A: &str = "/api/2.0/mlflow-artifacts/artifacts";
    axum::Router::new()
        .route(
            &format!("{M}/experiments/get"),
            get(api_path!(get_experiment)),
        )
        .route(
            &format!("{M}/experiments/get-by-name"),
            get(api_path!(get_experiment_by_name)),
        )
        .route(
            &format!("{M}/logged-models"),
            axum::routing::post(api_path!(create_logged)),
        )
        .route(
            &format!("{M}/logged-models/{{model_id}}"),
            get(api_path!(get_logged)).patch(api_path!(finalize_logged)),
        )
        .route(
            &format!("{M}/logged-models/{{model_id}}/params"),
            axum::routing::post(api_path!(log_params)),
        )
        .route(
            &format!("{M}/logged-models/{{model_id}}/tags"),
            axum::routing::patch(api_path!(set_logged_tags)),
        )
        .route(
            &format!("{M}/logged-models/{{model_id}}/tags/{{tag_key}}"),
            axum::routing::delete(api_path!(delete_logged_tag)),
        )
        .route(A, get(api_path!(list_artifacts)))
        .route(
            &format!("{A}/{{*path}}"),
            get(api_path!(get_artifact)).put(api_path!(put_artifact)),
        )
}

// ----------------------------------------------------------------------- experiments

fn experiment_json() -> Value {
    json!({"experiment": {
        "experiment_id": EXPERIMENT_ID,
        "name": EXPERIMENT_NAME,
        "artifact_location": format!("mlflow-artifacts:/{EXPERIMENT_ID}"),
        "lifecycle_stage": "active",
        "creation_time": 0,
        "last_update_time": 0,
        "tags": [],
    }})
}

pub async fn get_experiment(call: Call) -> Result<Value, ApiError> {
    let id = call.fields.required("experiment_id")?;
    call.actor().await?;
    if id != EXPERIMENT_ID {
        return Err(ApiError::not_found(format!(
            "experiment {} does not exist: Quiver has only the default experiment \"0\"",
            crate::domain::shown(&id)
        )));
    }
    Ok(experiment_json())
}

pub async fn get_experiment_by_name(call: Call) -> Result<Value, ApiError> {
    let name = call.fields.required("experiment_name")?;
    call.actor().await?;
    if name != EXPERIMENT_NAME {
        return Err(ApiError::not_found(format!(
            "experiment {} does not exist: Quiver has only the default experiment \
             \"{EXPERIMENT_NAME}\"",
            crate::domain::shown(&name)
        )));
    }
    Ok(experiment_json())
}

// ----------------------------------------------------------------------- logged models

/// Where a logged model's files are.
pub fn artifact_uri(id: &str) -> String {
    format!("mlflow-artifacts:/{EXPERIMENT_ID}/models/{id}/artifacts")
}

fn status_name(status: LoggedModelStatus) -> &'static str {
    match status {
        LoggedModelStatus::Pending => "LOGGED_MODEL_PENDING",
        LoggedModelStatus::Ready => "LOGGED_MODEL_READY",
        LoggedModelStatus::UploadFailed => "LOGGED_MODEL_UPLOAD_FAILED",
    }
}

fn parse_status(text: &str) -> Result<LoggedModelStatus, ApiError> {
    match text {
        "LOGGED_MODEL_PENDING" => Ok(LoggedModelStatus::Pending),
        "LOGGED_MODEL_READY" => Ok(LoggedModelStatus::Ready),
        "LOGGED_MODEL_UPLOAD_FAILED" => Ok(LoggedModelStatus::UploadFailed),
        _ => Err(ApiError::invalid(
            "status",
            format!(
                "{} is not a logged model status: use LOGGED_MODEL_READY or \
                 LOGGED_MODEL_UPLOAD_FAILED",
                crate::domain::shown(text)
            ),
        )),
    }
}

pub fn logged_json(m: &LoggedModel) -> Value {
    json!({"model": {
        "info": {
            "model_id": m.id,
            "experiment_id": m.experiment_id,
            "name": m.name,
            "artifact_uri": artifact_uri(&m.id),
            "status": status_name(m.status),
            "creation_timestamp_ms": m.created_at_ms,
            "last_updated_timestamp_ms": m.updated_at_ms,
            "model_type": m.model_type,
            "source_run_id": m.source_run_id,
            "tags": pairs_json(&m.tags),
        },
        "data": {"params": pairs_json(&m.params), "metrics": []},
    }})
}

fn logged_reply(applied: Applied) -> Result<Value, ApiError> {
    match applied {
        Applied::LoggedModel(m) => Ok(logged_json(&m)),
        other => Err(NodeError::Storage(format!("unexpected apply result {other:?}")).into()),
    }
}

pub async fn create_logged(call: Call) -> Result<Value, ApiError> {
    let experiment_id = call
        .fields
        .string("experiment_id")?
        .unwrap_or_else(|| EXPERIMENT_ID.into());
    logged_model::validate_experiment(&experiment_id)?;
    let op = Op::CreateLoggedModel {
        id: logged_model::new_id(),
        experiment_id,
        name: call.fields.text("name")?,
        model_type: call.fields.text("model_type")?,
        source_run_id: call.fields.text("source_run_id")?,
        params: call.fields.pairs("params")?,
        tags: call.fields.pairs("tags")?,
    };
    let actor = call.actor().await?;
    let applied = call.node.propose(actor, op).await?;
    logged_reply(applied)
}

fn model_id(call: &Call) -> Result<String, ApiError> {
    let id = call.param("model_id")?;
    logged_model::validate_id("model_id", &id)?;
    Ok(id)
}

async fn read_logged(call: &Call, id: String) -> Result<LoggedModel, ApiError> {
    call.authorize(Role::Reader, Target::Cluster, "read logged models")
        .await?;
    Ok(call
        .node
        .read(Consistency::Linearizable, move |app, txn| {
            app.get_logged_model(txn, &id)
        })
        .await?)
}

pub async fn get_logged(call: Call) -> Result<Value, ApiError> {
    let id = model_id(&call)?;
    Ok(logged_json(&read_logged(&call, id).await?))
}

async fn update_logged(call: &Call, op: Op) -> Result<Value, ApiError> {
    let actor = call.actor().await?;
    let applied = call.node.propose(actor, op).await?;
    logged_reply(applied)
}

pub async fn finalize_logged(call: Call) -> Result<Value, ApiError> {
    let id = model_id(&call)?;
    let status = parse_status(&call.fields.required("status")?)?;
    let op = Op::UpdateLoggedModel {
        id,
        status: Some(status),
        set_params: Default::default(),
        set_tags: Default::default(),
        remove_tags: Vec::new(),
    };
    update_logged(&call, op).await
}

pub async fn log_params(call: Call) -> Result<Value, ApiError> {
    let id = model_id(&call)?;
    let op = Op::UpdateLoggedModel {
        id,
        status: None,
        set_params: call.fields.pairs("params")?,
        set_tags: Default::default(),
        remove_tags: Vec::new(),
    };
    update_logged(&call, op).await?;
    Ok(json!({}))
}

pub async fn set_logged_tags(call: Call) -> Result<Value, ApiError> {
    let id = model_id(&call)?;
    let op = Op::UpdateLoggedModel {
        id,
        status: None,
        set_params: Default::default(),
        set_tags: call.fields.pairs("tags")?,
        remove_tags: Vec::new(),
    };
    update_logged(&call, op).await?;
    Ok(json!({}))
}

pub async fn delete_logged_tag(call: Call) -> Result<Value, ApiError> {
    let id = model_id(&call)?;
    let op = Op::UpdateLoggedModel {
        id,
        status: None,
        set_params: Default::default(),
        set_tags: Default::default(),
        remove_tags: vec![call.param("tag_key")?],
    };
    update_logged(&call, op).await?;
    Ok(json!({}))
}

// ----------------------------------------------------------------------- artifacts

/// What an artifact path names.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// A logged model's files, `rel` inside them ("" for its root).
    Logged { id: String, rel: String },
    /// A version's files.
    Version {
        model: String,
        number: u64,
        rel: String,
    },
}

/// Reads `0/models/<id>/artifacts[/rel]` or `registry/<model>/<n>[/rel]`.
fn place(field: &str, path: &str) -> Result<Place, ApiError> {
    if path.len() > ARTIFACT_PATH_BYTES_MAX {
        return Err(ApiError::invalid(
            field,
            format!(
                "{} bytes is over the limit of {ARTIFACT_PATH_BYTES_MAX}",
                path.len()
            ),
        ));
    }
    let path = path.trim_matches('/');
    let not_ours = || {
        ApiError::not_found(format!(
            "no artifacts at {}: Quiver serves 0/models/<model id>/artifacts/… and \
             registry/<model>/<version>/…, as its artifact URIs name them",
            crate::domain::shown(path)
        ))
    };
    let parts: Vec<&str> = path.splitn(5, '/').collect();
    let rel_of = |rest: Option<&&str>| -> Result<String, ApiError> {
        let rel = rest.copied().unwrap_or("").trim_end_matches('/');
        if !rel.is_empty() {
            validate_path(rel).map_err(|e| ApiError::invalid(field, e))?;
        }
        Ok(rel.to_string())
    };
    match parts.as_slice() {
        [exp, "models", id, "artifacts", ..] if *exp == EXPERIMENT_ID => {
            logged_model::validate_id(field, id)?;
            Ok(Place::Logged {
                id: id.to_string(),
                rel: rel_of(parts.get(4))?,
            })
        }
        ["registry", model, number, ..] => {
            model_name(field, model)?;
            let number = match number.parse::<u64>() {
                Ok(n) if n >= 1 => n,
                _ => return Err(not_ours()),
            };
            let rest = path.splitn(4, '/').nth(3);
            Ok(Place::Version {
                model: model.to_string(),
                number,
                rel: rel_of(rest.as_ref())?,
            })
        }
        _ => Err(not_ours()),
    }
}

/// The files of a place: (path, size) in path order, after the role check.
async fn files_of(call: &Call, place: &Place) -> Result<Vec<(String, u64)>, ApiError> {
    match place {
        Place::Logged { id, .. } => {
            let m = read_logged(call, id.clone()).await?;
            Ok(m.files
                .into_iter()
                .map(|f| (f.path, f.size_bytes))
                .collect())
        }
        Place::Version { model, number, .. } => {
            call.reader_of(model).await?;
            let (model, number) = (model.clone(), *number);
            let v = call
                .node
                .read(Consistency::Linearizable, move |app, txn| {
                    app.get_version(txn, &model, number)
                })
                .await?;
            Ok(v.files
                .into_iter()
                .map(|f| (f.path, f.size_bytes))
                .collect())
        }
    }
}

/// MLflow's listing: the names directly inside `rel` (a folder once, however many files it
/// holds); a file's own path lists nothing.
fn listing(files: &[(String, u64)], rel: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut last_dir: Option<&str> = None;
    for (path, size) in files {
        let inside = if rel.is_empty() {
            Some(path.as_str())
        } else {
            path.strip_prefix(rel).and_then(|p| p.strip_prefix('/'))
        };
        let Some(inside) = inside else { continue };
        match inside.split_once('/') {
            Some((dir, _)) => {
                if last_dir != Some(dir) {
                    out.push(json!({"path": dir, "is_dir": true}));
                    last_dir = Some(dir);
                }
            }
            None => out.push(json!({"path": inside, "is_dir": false, "file_size": size})),
        }
    }
    out
}

pub async fn list_artifacts(call: Call) -> Result<Value, ApiError> {
    let path = call.fields.text("path")?;
    let place = place("path", &path)?;
    let files = files_of(&call, &place).await?;
    let rel = match &place {
        Place::Logged { rel, .. } | Place::Version { rel, .. } => rel,
    };
    Ok(json!({"files": listing(&files, rel)}))
}

/// A file's bytes, streamed chunk by chunk as they are read and verified.
pub async fn get_artifact(call: Call) -> Result<Response, ApiError> {
    let path = call.param("path")?;
    let place = place("path", &path)?;
    let (reads, size) = match &place {
        Place::Logged { id, rel } => {
            let m = read_logged(&call, id.clone()).await?;
            let Some(file) = m.files.iter().find(|f| &f.path == rel) else {
                return Err(no_file(&path));
            };
            let reads = call.node.read_file(file).await?.boxed();
            (reads, file.size_bytes)
        }
        Place::Version { model, number, rel } => {
            call.reader_of(model).await?;
            let reference = VersionRef {
                model: model.clone(),
                selector: VersionSelector::Number(*number),
            };
            let plan = call.node.plan_download(&reference).await?;
            let Some(size) = plan
                .manifest
                .files
                .iter()
                .find(|f| &f.path == rel)
                .map(|f| f.size_bytes)
            else {
                return Err(no_file(&path));
            };
            let reads = call
                .node
                .download_file(&plan, rel)
                .ok_or_else(|| no_file(&path))?
                .boxed();
            (reads, size)
        }
    };
    let node_id = call.node.node_id();
    let body = reads.map(move |read| {
        read.data.map(Bytes::from).map_err(|e| {
            tracing::error!(file = %read.path, chunk = %read.chunk.hash, "artifact read failed: {e}");
            std::io::Error::other(format!(
                "chunk {} of '{}' on node {node_id}: {e}",
                read.chunk.hash, read.path
            ))
        })
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

fn no_file(path: &str) -> ApiError {
    ApiError::not_found(format!(
        "no artifact file at {}",
        crate::domain::shown(path)
    ))
}

/// One file of a pending logged model: its bytes stream into the chunk store, then the file is
/// recorded through Raft.
pub async fn put_artifact(call: Call) -> Result<Value, ApiError> {
    let path = call.param("path")?;
    let (id, rel) = match place("path", &path)? {
        Place::Logged { id, rel } if !rel.is_empty() => (id, rel),
        Place::Logged { .. } => return Err(ApiError::invalid("path", "names no file")),
        Place::Version { .. } => {
            return Err(ApiError::invalid(
                "path",
                "a version's files never change: log a new model and register it",
            ))
        }
    };
    let actor = call
        .authorize(Role::Registrant, Target::Cluster, "log model files")
        .await?;
    let m = read_logged(&call, id.clone()).await?;
    if m.status != LoggedModelStatus::Pending {
        return Err(ApiError::invalid(
            "path",
            format!("logged model {id} is finalized: its files no longer change"),
        ));
    }
    let node = call.node.clone();
    let _slot = node
        .uploads
        .acquire(node.node_id(), &format!("principal {}", actor.name))
        .await?;
    let body = call.take_body();
    let (file, _pins) = store_file(&node, rel, body).await?;
    node.propose(actor, Op::PutLoggedModelFile { id, file })
        .await?;
    Ok(json!({}))
}

/// Cuts `body` into chunks as it arrives and makes each durable in W copies, at most
/// [`WRITE_QUEUE_DEPTH`] in flight; the pins keep them from the collector until the file is
/// recorded.
async fn store_file(
    node: &Node,
    path: String,
    body: Body,
) -> Result<(FileEntry, PinSet), ApiError> {
    node.check_disk_reserve()?;
    let sink = node.chunk_sink().await?;
    let (to_writer, from_body) = mpsc::channel::<(quiver_transfer::Hash, Bytes)>(WRITE_QUEUE_DEPTH);
    let writer = tokio::spawn(write_chunks(sink, ReceiverStream::new(from_body)));
    let mut out = Outgoing {
        to_writer,
        pins: PinSet::new(node.upload_pins.clone()),
        chunks: Vec::new(),
    };
    let mut chunker = Chunker::new();
    let mut size_bytes: u64 = 0;
    let mut stream = body.into_data_stream();
    let outcome: Result<(), ApiError> = async {
        while let Some(data) = stream.next().await {
            let data = data.map_err(|e| {
                ApiError::from(NodeError::Aborted(format!(
                    "the upload of '{path}' was cut short: {e}; nothing was recorded"
                )))
            })?;
            size_bytes += data.len() as u64;
            node.check_disk_reserve()?;
            let mut ready = Vec::new();
            chunker
                .push(&data, |c, bytes| {
                    ready.push((c, Bytes::copy_from_slice(bytes)));
                    Ok::<(), ()>(())
                })
                .map_err(|()| NodeError::Storage("chunker failed".into()))?;
            out.send(ready).await?;
        }
        let mut ready = Vec::new();
        std::mem::replace(&mut chunker, Chunker::new())
            .finish(|c, bytes| {
                ready.push((c, Bytes::copy_from_slice(bytes)));
                Ok::<(), ()>(())
            })
            .map_err(|()| NodeError::Storage("chunker failed".into()))?;
        out.send(ready).await
    }
    .await;
    let Outgoing {
        to_writer,
        pins,
        chunks,
    } = out;
    drop(to_writer);
    let written = writer
        .await
        .map_err(|e| NodeError::Storage(format!("chunk writer panicked: {e}")));
    outcome?;
    written??;
    let file = FileEntry {
        path,
        size_bytes,
        mode: 0o644,
        chunks,
    };
    logged_model::validate_file(&file)?;
    Ok((file, pins))
}

/// A file's chunks on their way to the writer.
struct Outgoing {
    to_writer: mpsc::Sender<(quiver_transfer::Hash, Bytes)>,
    pins: PinSet,
    chunks: Vec<ChunkRef>,
}

impl Outgoing {
    async fn send(&mut self, ready: Vec<(ChunkRef, Bytes)>) -> Result<(), ApiError> {
        for (chunk, bytes) in ready {
            if self.chunks.len() >= CHUNKS_PER_MANIFEST_MAX {
                return Err(ApiError::invalid(
                    "path",
                    "the file is too large for one model",
                ));
            }
            self.pins.pin(chunk.hash);
            let hash = chunk.hash;
            self.chunks.push(chunk);
            if self.to_writer.send((hash, bytes)).await.is_err() {
                return Err(NodeError::Storage("the chunk writer stopped".into()).into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_paths_name_a_logged_model_or_a_version_and_nothing_else() {
        let id = "m-0123456789abcdef0123456789abcdef";
        assert_eq!(
            place("path", &format!("0/models/{id}/artifacts")).unwrap(),
            Place::Logged {
                id: id.into(),
                rel: String::new()
            }
        );
        assert_eq!(
            place("path", &format!("0/models/{id}/artifacts/sub/MLmodel")).unwrap(),
            Place::Logged {
                id: id.into(),
                rel: "sub/MLmodel".into()
            }
        );
        assert_eq!(
            place("path", "registry/fraud/3/data/model.pkl").unwrap(),
            Place::Version {
                model: "fraud".into(),
                number: 3,
                rel: "data/model.pkl".into()
            }
        );
        for bad in [
            "",
            "../x",
            "1/models/x/artifacts",
            &format!("0/models/{id}/artifacts/../../etc/passwd"),
            &format!("0/models/{id}/artifacts/a/./b"),
            "0/models/m-nothex/artifacts",
            "registry/Fraud/1",
            "registry/fraud/0",
            "registry/fraud/-1",
            "registry/fraud/99999999999999999999999",
            "registry/fraud/1/../../x",
            "registry/fraud/1/a\0b",
            &"a/".repeat(ARTIFACT_PATH_BYTES_MAX),
        ] {
            let e = place("path", bad).unwrap_err();
            assert!(e.status.is_client_error(), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn a_listing_names_the_entries_directly_inside_a_folder() {
        let files: Vec<(String, u64)> = [("MLmodel", 10), ("code/a.py", 3), ("code/b.py", 4)]
            .iter()
            .map(|(p, s)| (p.to_string(), *s))
            .collect();
        let root = listing(&files, "");
        assert_eq!(
            root,
            vec![
                json!({"path": "MLmodel", "is_dir": false, "file_size": 10}),
                json!({"path": "code", "is_dir": true}),
            ]
        );
        let code = listing(&files, "code");
        assert_eq!(code.len(), 2);
        assert_eq!(
            code[1],
            json!({"path": "b.py", "is_dir": false, "file_size": 4})
        );
        assert!(listing(&files, "MLmodel").is_empty());
        assert!(listing(&files, "cod").is_empty());
    }
}
