//! The MLflow-compatible REST API (`/api/2.0/mlflow/...`, `/api/2.0/mlflow-artifacts/...`), so
//! that the `mlflow` Python client works against any node unchanged.
//!
//! Transport (this file): a GET's fields come from its query string (a list as repeated keys),
//! every other method's from a JSON object body ([`Fields`]); replies are JSON with MLflow's
//! field names; a refusal is `{"error_code", "message"}` with MLflow's status for the code
//! ([`ApiError`]), never a 5xx for a request's own fault (the client retries 5xx for minutes).
//! A request authenticates with `Authorization: Bearer <quiver token>` and is checked with the
//! same roles, through the same `Node` paths, as the gRPC API; a follower forwards writes to the
//! leader (`Node::propose`) and serves linearizable reads.
//!
//! - `registry`: how MLflow's registry maps onto Quiver's records, and the replies;
//!   `registered` (registered models) and `versions` (model versions) answer its routes.
//! - `logged`: the default experiment, logged models and the artifact proxy (bytes stream
//!   through the chunk store).
//! - `filter`: the search filters MLflow sends, parsed.

/// Builds an axum handler that reads a request into a [`Call`] and answers what `$handler`
/// returns, as JSON (or the handler's own response) or as MLflow's error JSON.
macro_rules! api {
    ($handler:path) => {
        |axum::extract::State(node): axum::extract::State<std::sync::Arc<crate::node::Node>>,
         method: axum::http::Method,
         headers: axum::http::HeaderMap,
         axum::extract::RawQuery(query): axum::extract::RawQuery,
         body: axum::body::Body| {
            crate::http::mlflow::answer(node, method, headers, query, body, Vec::new(), $handler)
        }
    };
}

/// [`api!`] for a route with path parameters (`{model_id}`, `{*path}`).
macro_rules! api_path {
    ($handler:path) => {
        |axum::extract::State(node): axum::extract::State<std::sync::Arc<crate::node::Node>>,
         method: axum::http::Method,
         headers: axum::http::HeaderMap,
         params: axum::extract::RawPathParams,
         axum::extract::RawQuery(query): axum::extract::RawQuery,
         body: axum::body::Body| {
            let params: Vec<(String, String)> = params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            crate::http::mlflow::answer(node, method, headers, query, body, params, $handler)
        }
    };
}

mod filter;
mod logged;
mod order;
mod registered;
mod registry;
#[cfg(test)]
mod tests;
mod versions;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{json, Map, Value};

use crate::access::{parse_bearer, Credential, Target};
use crate::auth::Role;
use crate::domain::{Actor, DomainError};
use crate::error::NodeError;
use crate::node::Node;
use crate::service::bounded;

/// Largest JSON body accepted (MLflow's own requests are a few KiB).
pub const BODY_BYTES_MAX: usize = 1 << 20;
/// Longest query string accepted.
pub const QUERY_BYTES_MAX: usize = 64 * 1024;
/// Fields in one request, and items in one list field.
pub const FIELDS_MAX: usize = 256;

/// The MLflow routes.
pub fn router(node: Arc<Node>) -> axum::Router {
    use registered::*;
    use versions::*;
    const R: &str = "/api/2.0/mlflow/registered-models";
    const V: &str = "/api/2.0/mlflow/model-versions";
    axum::Router::new()
        .route(&format!("{R}/create"), post(api!(create_model)))
        .route(&format!("{R}/get"), get(api!(get_model)))
        .route(&format!("{R}/rename"), post(api!(rename_model)))
        .route(
            &format!("{R}/update"),
            axum::routing::patch(api!(update_model)),
        )
        .route(
            &format!("{R}/delete"),
            axum::routing::delete(api!(delete_model)),
        )
        .route(&format!("{R}/search"), get(api!(search_models)))
        .route(
            &format!("{R}/get-latest-versions"),
            post(api!(latest_versions)).get(api!(latest_versions)),
        )
        .route(&format!("{R}/set-tag"), post(api!(set_model_tag)))
        .route(
            &format!("{R}/delete-tag"),
            axum::routing::delete(api!(delete_model_tag)),
        )
        .route(
            &format!("{R}/alias"),
            post(api!(set_alias))
                .get(api!(get_alias))
                .delete(api!(delete_alias)),
        )
        .route(&format!("{V}/create"), post(api!(create_version)))
        .route(&format!("{V}/get"), get(api!(get_version)))
        .route(
            &format!("{V}/update"),
            axum::routing::patch(api!(update_version)),
        )
        .route(
            &format!("{V}/delete"),
            axum::routing::delete(api!(delete_version)),
        )
        .route(&format!("{V}/search"), get(api!(search_versions)))
        .route(
            &format!("{V}/transition-stage"),
            post(api!(transition_stage)),
        )
        .route(&format!("{V}/get-download-uri"), get(api!(download_uri)))
        .route(&format!("{V}/set-tag"), post(api!(set_version_tag)))
        .route(
            &format!("{V}/delete-tag"),
            axum::routing::delete(api!(delete_version_tag)),
        )
        .route("/api/3.0/mlflow/server-info", get(server_info))
        .route("/ajax-api/3.0/mlflow/server-info", get(server_info))
        .merge(logged::routes())
        // Only MLflow's paths: the node's other routes (the UI's) keep their own answers, and
        // the merged router keeps a single fallback.
        .route("/api/2.0/mlflow/{*rest}", axum::routing::any(unknown_route))
        .route("/api/3.0/mlflow/{*rest}", axum::routing::any(unknown_route))
        .with_state(node)
}

/// Reads the request, runs `handler` on it and answers.
pub(crate) async fn answer<F, Fut, T>(
    node: Arc<Node>,
    method: Method,
    headers: HeaderMap,
    query: Option<String>,
    body: Body,
    params: Vec<(String, String)>,
    handler: F,
) -> Response
where
    F: FnOnce(Call) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
    T: Reply,
{
    let call = match Call::read(node, &method, &headers, query, body).await {
        Ok(mut call) => {
            call.params = params;
            call
        }
        Err(e) => return e.into_response(),
    };
    match handler(call).await {
        Ok(reply) => reply.into_reply(),
        Err(e) => e.into_response(),
    }
}

/// What a handler answers: JSON, or a response it built (an artifact's bytes).
pub(crate) trait Reply {
    fn into_reply(self) -> Response;
}

impl Reply for Value {
    fn into_reply(self) -> Response {
        json_response(StatusCode::OK, &self)
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

impl Reply for Response {
    fn into_reply(self) -> Response {
        self
    }
}

/// `GET /api/3.0/mlflow/server-info`: what the client asks before it moves artifacts and for
/// telemetry, served without credentials like MLflow's (it holds nothing secret). Artifacts are
/// proxied through the node; no multipart or presigned transfers are offered, so the client
/// streams every file in one request, into the chunk store.
async fn server_info() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "store_type": null,
            "workspaces_enabled": false,
            "trace_archival_enabled": false,
            "multipart_uploads_enabled": false,
            "multipart_downloads_enabled": false,
            "artifact_serving_enabled": true,
            "presigned_upload_run_id_supported": false,
            "presigned_upload_model_id_supported": false,
            "model_artifact_presigned_downloads_supported": false,
            "features_enabled": {"gateway": false, "scheduled_issue_detection": false},
            "tracking_auth": "",
            "artifacts_presigned_only": false,
        }),
    )
}

/// Any other path under this router: MLflow's answer for an endpoint it does not have.
async fn unknown_route(method: Method, uri: axum::http::Uri) -> Response {
    tracing::debug!(%method, path = uri.path(), "MLflow API: no such endpoint");
    ApiError::new(
        StatusCode::NOT_FOUND,
        "ENDPOINT_NOT_FOUND",
        format!(
            "{method} {} is not an endpoint of Quiver's MLflow-compatible API",
            crate::domain::shown(uri.path())
        ),
    )
    .into_response()
}

/// A refusal as MLflow sends it: `{"error_code", "message"}` with the status MLflow uses for
/// the code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: bounded(message.into()),
        }
    }

    /// `INVALID_PARAMETER_VALUE` (400) naming `field`.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
            format!("invalid {field}: {message}"),
        )
    }

    /// A required field that is missing or empty.
    pub fn missing(field: &str) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
            format!("missing value for required parameter '{field}': send it in the request"),
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error_code": self.code, "message": self.message});
        json_response(self.status, &body)
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let message = e.to_string();
        let (status, code) = match e {
            DomainError::ModelNotFound { .. }
            | DomainError::VersionNotFound { .. }
            | DomainError::AliasNotFound { .. }
            | DomainError::StageEmpty { .. }
            | DomainError::ReviewNotFound { .. }
            | DomainError::DeploymentNotFound { .. }
            | DomainError::LoggedModelNotFound { .. } => {
                (StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST")
            }
            DomainError::ModelExists { .. } | DomainError::DuplicateBundle { .. } => {
                (StatusCode::BAD_REQUEST, "RESOURCE_ALREADY_EXISTS")
            }
            DomainError::SameStage { .. }
            | DomainError::NotReady { .. }
            | DomainError::GatesFailed { .. }
            | DomainError::ReviewClosed { .. }
            | DomainError::NotServable { .. }
            | DomainError::DeploymentState { .. } => (StatusCode::BAD_REQUEST, "INVALID_STATE"),
            DomainError::NotAllowed { .. } => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            DomainError::Invalid { .. } => (StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE"),
        };
        ApiError::new(status, code, message)
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let message = e.to_string();
        let (status, code) = match e {
            NodeError::Rejected(d) => return d.into(),
            NodeError::Invalid(_) => (StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE"),
            NodeError::Aborted(_) => (StatusCode::CONFLICT, "ABORTED"),
            NodeError::NotMember(_) => (StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST"),
            NodeError::Membership(_) => (StatusCode::BAD_REQUEST, "INVALID_STATE"),
            NodeError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            NodeError::PermissionDenied(_) => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            NodeError::DiskFull(_) | NodeError::Busy(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "REQUEST_LIMIT_EXCEEDED")
            }
            // Worth the client's retry: the cluster is between leaders or short of peers.
            NodeError::NotLeader { .. }
            | NodeError::NoQuorum(_)
            | NodeError::Unreachable(_)
            | NodeError::TooFewCopies(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "TEMPORARILY_UNAVAILABLE")
            }
            NodeError::DataLoss(_) => (StatusCode::INTERNAL_SERVER_ERROR, "DATA_LOSS"),
            NodeError::Storage(_) | NodeError::Fatal(_) => {
                tracing::error!("MLflow API: {message}");
                (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR")
            }
        };
        ApiError::new(status, code, message)
    }
}

/// One request: the node, who sent it, and its fields.
pub struct Call {
    pub node: Arc<Node>,
    credential: Credential,
    pub fields: Fields,
    /// The route's path parameters, decoded.
    params: Vec<(String, String)>,
    /// The request body, for the artifact upload (a PUT streams it; every other request's body
    /// was read into `fields`).
    /// (In a mutex only so that a `Call` is `Sync`: handlers hold it across awaits.)
    body: std::sync::Mutex<Option<Body>>,
}

impl Call {
    async fn read(
        node: Arc<Node>,
        method: &Method,
        headers: &HeaderMap,
        query: Option<String>,
        body: Body,
    ) -> Result<Call, ApiError> {
        let credential = credential(headers)?;
        let query = query.unwrap_or_default();
        let (fields, body) = if method == Method::GET || method == Method::PUT {
            (Fields::from_query(&query)?, Some(body))
        } else {
            let bytes = axum::body::to_bytes(body, BODY_BYTES_MAX)
                .await
                .map_err(|_| {
                    ApiError::invalid(
                        "request body",
                        format!("over {BODY_BYTES_MAX} bytes, or cut short"),
                    )
                })?;
            let mut fields = Fields::from_json(&bytes)?;
            // A field in the query string counts too, unless the body sets it.
            for (key, value) in Fields::from_query(&query)?.map {
                fields.map.entry(key).or_insert(value);
            }
            (fields, None)
        };
        Ok(Call {
            node,
            credential,
            fields,
            params: Vec::new(),
            body: std::sync::Mutex::new(body),
        })
    }

    /// The request body, once (a PUT's bytes).
    pub fn take_body(&self) -> Body {
        match self.body.lock() {
            Ok(mut body) => body.take().unwrap_or_default(),
            Err(poisoned) => poisoned.into_inner().take().unwrap_or_default(),
        }
    }

    /// A path parameter of the route.
    pub fn param(&self, name: &str) -> Result<String, ApiError> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| ApiError::missing(name))
    }

    /// Who sent the request (any valid token).
    pub async fn actor(&self) -> Result<Actor, ApiError> {
        Ok(self.node.authenticate(&self.credential).await?)
    }

    /// Who sent the request, checked for `role` on `target`.
    pub async fn authorize(
        &self,
        role: Role,
        target: Target<'_>,
        action: &str,
    ) -> Result<Actor, ApiError> {
        Ok(self
            .node
            .authorize(&self.credential, role, target, action)
            .await?)
    }

    /// The reader role on `model`'s namespace (a model that does not exist answers not found
    /// afterwards).
    pub async fn reader_of(&self, model: &str) -> Result<Actor, ApiError> {
        let action = format!("read model {model}");
        self.authorize(Role::Reader, Target::Model(model), &action)
            .await
    }
}

/// The bearer token of `Authorization: Bearer <token>`; no header: no credential (the node
/// decides whether anonymous reads are allowed).
fn credential(headers: &HeaderMap) -> Result<Credential, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(Credential::default());
    };
    let unauthenticated = |message: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            message.to_string(),
        )
    };
    let text = value.to_str().map_err(|_| {
        unauthenticated("the Authorization header is not valid text: send `Bearer <token>`")
    })?;
    let Some(token) = text.strip_prefix("Bearer ") else {
        return Err(unauthenticated(
            "the Authorization header must be `Bearer <token>`: set MLFLOW_TRACKING_TOKEN to a \
             Quiver token (not MLFLOW_TRACKING_USERNAME/PASSWORD)",
        ));
    };
    Ok(Credential {
        token: Some(parse_bearer(token.trim())?),
        certificate: None,
    })
}

/// A request's fields: a JSON object, or a query string read as one (a repeated key is a list).
#[derive(Clone, Debug, Default)]
pub struct Fields {
    map: Map<String, Value>,
}

impl Fields {
    pub fn from_query(query: &str) -> Result<Fields, ApiError> {
        if query.len() > QUERY_BYTES_MAX {
            return Err(ApiError::invalid(
                "query string",
                format!(
                    "{} bytes is over the limit of {QUERY_BYTES_MAX}",
                    query.len()
                ),
            ));
        }
        let mut map = Map::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if map.len() >= FIELDS_MAX && !map.contains_key(key.as_ref()) {
                return Err(ApiError::invalid(
                    "query string",
                    format!("more than {FIELDS_MAX} fields"),
                ));
            }
            let value = Value::String(value.into_owned());
            match map.get_mut(key.as_ref()) {
                None => {
                    map.insert(key.into_owned(), value);
                }
                Some(Value::Array(list)) => {
                    if list.len() >= FIELDS_MAX {
                        return Err(ApiError::invalid(
                            &key,
                            format!("more than {FIELDS_MAX} values"),
                        ));
                    }
                    list.push(value)
                }
                Some(first) => *first = Value::Array(vec![first.take(), value]),
            }
        }
        Ok(Fields { map })
    }

    pub fn from_json(bytes: &[u8]) -> Result<Fields, ApiError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Fields::default());
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(Fields { map }),
            Ok(_) => Err(ApiError::invalid(
                "request body",
                "must be a JSON object of the request's fields",
            )),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "MALFORMED_REQUEST",
                format!("the request body is not valid JSON: {e}"),
            )),
        }
    }

    /// A string field, if present (a number is taken as its text: some clients send ids so).
    pub fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(ApiError::invalid(name, "must be a string")),
        }
    }

    /// A string field that must be present and not empty.
    pub fn required(&self, name: &str) -> Result<String, ApiError> {
        match self.string(name)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(ApiError::missing(name)),
        }
    }

    /// A string field, empty when absent.
    pub fn text(&self, name: &str) -> Result<String, ApiError> {
        Ok(self.string(name)?.unwrap_or_default())
    }

    /// An integer field, if present (a JSON number, or its decimal text).
    pub fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        let bad = || ApiError::invalid(name, "must be a whole number");
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(bad),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad()),
            Some(_) => Err(bad()),
        }
    }

    /// A boolean field, false when absent.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") || s.is_empty() => Ok(false),
            Some(_) => Err(ApiError::invalid(name, "must be true or false")),
        }
    }

    /// A list of strings (one value counts as a list of one).
    pub fn strings(&self, name: &str) -> Result<Vec<String>, ApiError> {
        let list = match self.map.get(name) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(list)) => list.as_slice(),
            Some(one) => std::slice::from_ref(one),
        };
        if list.len() > FIELDS_MAX {
            return Err(ApiError::invalid(
                name,
                format!("more than {FIELDS_MAX} values"),
            ));
        }
        list.iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(ApiError::invalid(name, "must be a list of strings")),
            })
            .collect()
    }

    /// MLflow's `[{key, value}]` list (tags, params) as a map; a key given twice keeps its last
    /// value.
    pub fn pairs(&self, name: &str) -> Result<BTreeMap<String, String>, ApiError> {
        let list = match self.map.get(name) {
            None | Some(Value::Null) => return Ok(BTreeMap::new()),
            Some(Value::Array(list)) => list,
            Some(_) => {
                return Err(ApiError::invalid(
                    name,
                    "must be a list of {\"key\": …, \"value\": …} objects",
                ))
            }
        };
        if list.len() > FIELDS_MAX {
            return Err(ApiError::invalid(
                name,
                format!("more than {FIELDS_MAX} entries"),
            ));
        }
        let mut out = BTreeMap::new();
        for item in list {
            let entry = |key: &str| match item.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                None | Some(Value::Null) if key == "value" => Ok(String::new()),
                _ => Err(ApiError::invalid(
                    name,
                    format!("each entry needs a string \"{key}\""),
                )),
            };
            out.insert(entry("key")?, entry("value")?);
        }
        Ok(out)
    }

    /// A version number field: MLflow sends `version` as a string of a positive integer.
    pub fn version(&self, name: &str) -> Result<u64, ApiError> {
        let text = self.required(name)?;
        match text.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(ApiError::invalid(
                name,
                format!(
                    "{} is not a version number: versions are whole numbers from 1",
                    crate::domain::shown(&text)
                ),
            )),
        }
    }
}

/// A model name as MLflow sends it, checked by Quiver's rule (named as MLflow's field).
pub fn model_name(field: &str, name: &str) -> Result<(), ApiError> {
    crate::domain::validate_name(field, name).map_err(|e| match e {
        DomainError::Invalid { message, .. } => ApiError::invalid(
            field,
            format!(
                "{message} (Quiver's model names are lowercase; MLflow's are not, so rename \
                 the model when registering it here)"
            ),
        ),
        other => other.into(),
    })
}

/// MLflow's `[{key, value}]` list from a map.
pub fn pairs_json(map: &BTreeMap<String, String>) -> Value {
    Value::Array(
        map.iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect(),
    )
}
