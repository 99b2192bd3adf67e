//! The agent's HTTP API:
//! - `POST /v1/endpoints/{endpoint}/predict`: a body in one of MLflow serving's JSON forms,
//!   validated against the answering version's signature, answered as
//!   `{"predictions": …, "model", "version", "generation"}` with the header `x-quiver-version`.
//!   The header `x-request-key` makes routing sticky (the same key, the same version, on every
//!   agent); without it a request is routed at random by the split.
//! - `GET /v1/status`: the agent's view (deployment, versions and their states, registry
//!   reachability) as JSON.
//! - `GET /metrics`: Prometheus text.
//!
//! Refusals are JSON `{"error_code", "message"}`: 400 `MALFORMED_REQUEST` (not JSON) or
//! `INVALID_INPUT` (with every `violations` entry, each naming its field), 404
//! `ENDPOINT_NOT_SERVED`, 413 for a body over [`BODY_BYTES_MAX`], 500 `PREDICTION_FAILED`
//! (the model failed; counted against the version), 503 `NOT_READY` (none of the split's
//! versions is loaded yet).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use quiver_api::schema::validate_request;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::core::Route;
use super::metrics::Outcome;
use super::runtime::PredictError;
use super::serve::{Loaded, Shared};

/// Largest request body (bytes).
pub const BODY_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Longest `x-request-key` used (bytes); a longer key is hashed as its first this many bytes.
pub const REQUEST_KEY_BYTES_MAX: usize = 256;

pub(super) async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    mut stopped: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/v1/endpoints/{endpoint}/predict", post(predict))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(shared);
    let shutdown = async move {
        let _ = stopped.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!("the agent's HTTP server stopped: {e}");
    }
}

fn refusal(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(json!({"error_code": code, "message": message})),
    )
        .into_response()
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let status = shared.lock_core().status();
    let mut body = serde_json::to_value(&status).unwrap_or_default();
    if let Some(map) = body.as_object_mut() {
        map.insert("agent".into(), json!(shared.config.name));
        map.insert(
            "runtimes".into(),
            json!(shared.runtimes.iter().map(|r| r.name()).collect::<Vec<_>>()),
        );
    }
    Json(body).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = shared.metrics.render(&shared.snapshot());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

/// Runs `loaded` on `body` off the async threads, with the test fault for `version` applied.
async fn run(
    shared: &Shared,
    loaded: Arc<Loaded>,
    version: u64,
    body: Arc<Value>,
) -> Result<Value, PredictError> {
    let failing = shared
        .faults
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .fail_versions
        .contains(&version);
    if failing {
        return Err(PredictError(format!(
            "fault injected for version {version}"
        )));
    }
    tokio::task::spawn_blocking(move || loaded.model.predict(&body))
        .await
        .unwrap_or_else(|e| {
            Err(PredictError(format!(
                "the model panicked or was cancelled: {e}"
            )))
        })
}

async fn predict(
    State(shared): State<Arc<Shared>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let begun = Instant::now();
    if endpoint != shared.config.endpoint {
        let shown: String = endpoint.chars().take(128).collect();
        return refusal(
            StatusCode::NOT_FOUND,
            "ENDPOINT_NOT_SERVED",
            format!(
                "this agent serves endpoint {}, not {shown:?}",
                shared.config.endpoint
            ),
        );
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            shared.metrics.request(0, Outcome::Invalid, begun.elapsed());
            return refusal(
                StatusCode::BAD_REQUEST,
                "MALFORMED_REQUEST",
                format!("the body is not JSON: {e}"),
            );
        }
    };
    let key: Vec<u8> = match headers.get("x-request-key") {
        Some(k) => k.as_bytes()[..k.len().min(REQUEST_KEY_BYTES_MAX)].to_vec(),
        None => rand::random::<u64>().to_le_bytes().to_vec(),
    };
    let (route, shadows, model) = {
        let core = shared.lock_core();
        let model = core
            .deployment()
            .map(|d| d.model.clone())
            .unwrap_or_default();
        (core.route(&key), core.shadows(), model)
    };
    let (version, generation) = match route {
        Route::Serve {
            version,
            generation,
        } => (version, generation),
        Route::NotReady => {
            shared
                .metrics
                .request(0, Outcome::Unavailable, begun.elapsed());
            return refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "NOT_READY",
                format!(
                    "endpoint {endpoint}: no version of its split is loaded yet (GET /v1/status \
                     shows what the agent is pulling)"
                ),
            );
        }
    };
    let Some(loaded) = shared.loaded(version) else {
        shared
            .metrics
            .request(version, Outcome::Unavailable, begun.elapsed());
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT_READY",
            format!("{model}/{version} is being unloaded; try again"),
        );
    };
    if let Some(schema) = &loaded.schema {
        let violations = validate_request(schema, &value);
        if let Some(first) = violations.first() {
            shared
                .metrics
                .request(version, Outcome::Invalid, begun.elapsed());
            let body = json!({
                "error_code": "INVALID_INPUT",
                "message": format!(
                    "{model}/{version}'s signature refuses the request: {}{}{}",
                    match first.path.is_empty() {
                        true => first.field.clone(),
                        false => first.path.clone(),
                    },
                    if first.field.is_empty() && first.path.is_empty() { "" } else { ": " },
                    first.message
                ),
                "violations": violations,
                "version": version,
            });
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    }
    let value = Arc::new(value);
    let answer = run(&shared, loaded, version, Arc::clone(&value)).await;
    let elapsed = begun.elapsed();
    let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    shared
        .lock_core()
        .record(generation, version, answer.is_err(), latency_us);
    let outcome = match answer {
        Ok(_) => Outcome::Ok,
        Err(_) => Outcome::Error,
    };
    shared.metrics.request(version, outcome, elapsed);
    for shadow in shadows {
        tokio::spawn(shadow_copy(
            Arc::clone(&shared),
            shadow,
            generation,
            Arc::clone(&value),
            answer.as_ref().ok().cloned(),
        ));
    }
    match answer {
        Ok(predictions) => {
            let mut response = Json(json!({
                "predictions": predictions,
                "model": model,
                "version": version,
                "generation": generation,
            }))
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("{model}/{version}")) {
                response.headers_mut().insert("x-quiver-version", v);
            }
            response
        }
        Err(e) => {
            let body = json!({
                "error_code": "PREDICTION_FAILED",
                "message": format!("{model}/{version} failed: {e}"),
                "model": model,
                "version": version,
                "generation": generation,
            });
            (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
        }
    }
}

/// Sends a copy of a request to a shadow version: its answer is compared with the one
/// returned and counted, never returned.
async fn shadow_copy(
    shared: Arc<Shared>,
    version: u64,
    generation: u64,
    body: Arc<Value>,
    returned: Option<Value>,
) {
    let Some(loaded) = shared.loaded(version) else {
        return;
    };
    if let Some(schema) = &loaded.schema {
        if !validate_request(schema, &body).is_empty() {
            shared.metrics.shadow_disagreement(version);
            return;
        }
    }
    let begun = Instant::now();
    let answer = run(&shared, loaded, version, body).await;
    let latency_us = u64::try_from(begun.elapsed().as_micros()).unwrap_or(u64::MAX);
    shared
        .lock_core()
        .record(generation, version, answer.is_err(), latency_us);
    match (answer, returned) {
        (Ok(shadow), Some(returned)) if shadow == returned => {}
        (answer, _) => {
            tracing::debug!(
                version,
                ?answer,
                "shadow answer differs from the one returned"
            );
            shared.metrics.shadow_disagreement(version);
        }
    }
}
