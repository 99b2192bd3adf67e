//! The MLflow API over a real one-node cluster (Raft, LMDB, chunk store on a temp dir), driven
//! through the node's HTTP router: every route refuses empty, over-long, NUL, path-like,
//! unicode and extreme values, malformed JSON and wrong types with a 4xx and MLflow's error
//! JSON naming the field, changes nothing, and the node keeps serving; artifacts go in and out
//! through the chunk store byte for byte.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::Fields;
use crate::auth::{node_principal, PresentedToken};
use crate::command::Op;
use crate::domain::Actor;
use crate::node::{Consistency, Node, NodeConfig};
use crate::tls::ClusterCa;

struct One {
    node: Arc<Node>,
    token: String,
    _dir: tempfile::TempDir,
}

impl One {
    async fn start() -> One {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = ClusterCa::create(&dir.path().join("ca"), "mlflow").expect("a cluster CA");
        let tls = ca.issue(1).expect("a node certificate");
        let peer = TcpListener::bind("127.0.0.1:0").await.expect("bind peer");
        let node = Node::open(
            NodeConfig {
                node_id: 1,
                data_dir: dir.path().join("node"),
                api_addr: "127.0.0.1:1".into(),
                peer_addr: peer.local_addr().expect("peer address").to_string(),
                quic_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                region: "test".into(),
                zone: "test-a".into(),
                join: None,
                tls,
                write_quorum: None,
                snapshot_every: 10_000,
                heartbeat_ms: quiver_raft::HEARTBEAT_INTERVAL_MS,
                crash_drills: false,
                disk_reserve_bytes: 0,
                chunk_gc_grace: None,
                allow_anonymous_reads: false,
            },
            peer,
        )
        .await
        .expect("open the node");
        let token = PresentedToken::random();
        node.propose(
            Actor {
                name: node_principal(1),
                authenticated: true,
            },
            Op::Bootstrap {
                id: token.id.clone(),
                principal: "admin".into(),
                secret_hash: token.secret_hash(),
            },
        )
        .await
        .expect("bootstrap the first admin");
        One {
            node,
            token: token.to_string(),
            _dir: dir,
        }
    }

    /// Sends one request with the admin's token (or `token`); (status, body bytes).
    async fn send_raw(
        &self,
        method: Method,
        uri: &str,
        body: Vec<u8>,
        token: Option<&str>,
    ) -> (StatusCode, Vec<u8>) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Body::from(body)).expect("a request");
        let response = crate::http::router(self.node.clone())
            .oneshot(request)
            .await
            .expect("the router answers");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
            .await
            .expect("the body");
        (status, bytes.to_vec())
    }

    async fn send(&self, method: Method, uri: &str, body: Value) -> (StatusCode, Value) {
        let bytes = if method == Method::GET {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let (status, bytes) = self
            .send_raw(method, uri, bytes, Some(&self.token.clone()))
            .await;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn ok(&self, method: Method, uri: &str, body: Value) -> Value {
        let (status, value) = self.send(method.clone(), uri, body).await;
        assert_eq!(status, StatusCode::OK, "{method} {uri}: {value}");
        value
    }

    async fn digest(&self) -> String {
        self.node
            .read(Consistency::Linearizable, |app, txn| app.digest(txn))
            .await
            .expect("the state's digest")
    }
}

const R: &str = "/api/2.0/mlflow/registered-models";
const V: &str = "/api/2.0/mlflow/model-versions";
const A: &str = "/api/2.0/mlflow-artifacts/artifacts";

/// Values no field may take: each is refused by name.
fn hostile() -> Vec<Value> {
    vec![
        json!(""),
        json!("a".repeat(100 * 1024)),
        json!("bad\u{0}name"),
        json!("../x"),
        json!("a/b"),
        json!("модель-🚀"),
        json!("Upper"),
        json!(-1),
        json!(["list"]),
        json!({"an": "object"}),
        json!(true),
    ]
}

/// Whether `value` is a legitimate value of `field` after all (a tag key may be any short text;
/// an empty filter, token or page size means none).
fn accepted(field: &str, value: &Value) -> bool {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return false,
    };
    match field {
        "key" => {
            !text.is_empty()
                && text.len() <= 128
                && !text.contains('=')
                && !text.chars().any(char::is_control)
        }
        "page_token" | "filter" | "max_results" => text.is_empty(),
        _ => false,
    }
}

fn assert_refused(what: &str, status: StatusCode, body: &Value, field: &str) {
    assert!(
        status.is_client_error(),
        "{what}: expected a 4xx, got {status}: {body}"
    );
    let code = body["error_code"].as_str().unwrap_or_default();
    assert!(!code.is_empty(), "{what}: no error_code in {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(field)
            || message.contains("query string")
            || code == "RESOURCE_DOES_NOT_EXIST",
        "{what}: the message does not name {field}: {body}"
    );
    assert!(
        message.len() <= 1024,
        "{what}: message of {} bytes",
        message.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_hostile_fields_by_name_and_changes_nothing() {
    let one = One::start().await;
    one.ok(
        Method::POST,
        &format!("{R}/create"),
        json!({"name": "fraud"}),
    )
    .await;
    let before = one.digest().await;
    // (method, path, the fields of a valid request, the field to spoil)
    let routes: Vec<(Method, String, Value, &str)> = vec![
        (
            Method::POST,
            format!("{R}/create"),
            json!({"name": "x"}),
            "name",
        ),
        (
            Method::GET,
            format!("{R}/get"),
            json!({"name": "fraud"}),
            "name",
        ),
        (
            Method::PATCH,
            format!("{R}/update"),
            json!({"name": "fraud", "description": "d"}),
            "name",
        ),
        (
            Method::POST,
            format!("{R}/rename"),
            json!({"name": "fraud", "new_name": "y"}),
            "name",
        ),
        (
            Method::DELETE,
            format!("{R}/delete"),
            json!({"name": "nope"}),
            "name",
        ),
        (
            Method::POST,
            format!("{R}/set-tag"),
            json!({"name": "fraud", "key": "k", "value": "v"}),
            "name",
        ),
        (
            Method::DELETE,
            format!("{R}/delete-tag"),
            json!({"name": "fraud", "key": "k"}),
            "name",
        ),
        (
            Method::POST,
            format!("{R}/alias"),
            json!({"name": "fraud", "alias": "a", "version": "1"}),
            "version",
        ),
        (
            Method::GET,
            format!("{R}/alias"),
            json!({"name": "fraud", "alias": "a"}),
            "alias",
        ),
        (
            Method::DELETE,
            format!("{R}/alias"),
            json!({"name": "fraud", "alias": "a"}),
            "alias",
        ),
        (
            Method::POST,
            format!("{R}/get-latest-versions"),
            json!({"name": "fraud", "stages": ["None"]}),
            "stages",
        ),
        (
            Method::GET,
            format!("{R}/search"),
            json!({"filter": "name = 'x'"}),
            "filter",
        ),
        (
            Method::GET,
            format!("{R}/search"),
            json!({"max_results": "5"}),
            "max_results",
        ),
        (
            Method::GET,
            format!("{R}/search"),
            json!({"page_token": "fraud~3c1f0a12"}),
            "page_token",
        ),
        (
            Method::POST,
            format!("{V}/create"),
            json!({"name": "fraud", "source": "s3://b/k"}),
            "source",
        ),
        (
            Method::GET,
            format!("{V}/get"),
            json!({"name": "fraud", "version": "1"}),
            "version",
        ),
        (
            Method::PATCH,
            format!("{V}/update"),
            json!({"name": "fraud", "version": "1"}),
            "version",
        ),
        (
            Method::DELETE,
            format!("{V}/delete"),
            json!({"name": "fraud", "version": "1"}),
            "version",
        ),
        (
            Method::POST,
            format!("{V}/transition-stage"),
            json!({"name": "fraud", "version": "1", "stage": "Staging"}),
            "stage",
        ),
        (
            Method::GET,
            format!("{V}/get-download-uri"),
            json!({"name": "fraud", "version": "1"}),
            "version",
        ),
        (
            Method::POST,
            format!("{V}/set-tag"),
            json!({"name": "fraud", "version": "1", "key": "k", "value": "v"}),
            "key",
        ),
        (
            Method::DELETE,
            format!("{V}/delete-tag"),
            json!({"name": "fraud", "version": "1", "key": "k"}),
            "key",
        ),
        (
            Method::GET,
            format!("{V}/search"),
            json!({"filter": "name='fraud'"}),
            "filter",
        ),
        (
            Method::GET,
            format!("{V}/search"),
            json!({"page_token": "fraud/1~00000000"}),
            "page_token",
        ),
        (
            Method::POST,
            "/api/2.0/mlflow/logged-models".into(),
            json!({"experiment_id": "0", "name": "m"}),
            "experiment_id",
        ),
        (
            Method::GET,
            "/api/2.0/mlflow/experiments/get".into(),
            json!({"experiment_id": "0"}),
            "experiment_id",
        ),
        (
            Method::GET,
            A.into(),
            json!({"path": "registry/fraud/1"}),
            "path",
        ),
    ];
    for (method, path, valid, field) in &routes {
        for bad in hostile() {
            if accepted(field, &bad) {
                continue;
            }
            let mut fields = valid.clone();
            fields[*field] = match bad.as_str() {
                // A URI holds at most 64 KiB: a GET's over-long value is 60 KB.
                Some(text) if *method == Method::GET && text.len() > 60_000 => {
                    json!(text[..60_000])
                }
                _ => bad.clone(),
            };
            let (status, body) = if *method == Method::GET {
                let query: String =
                    form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(fields.as_object().unwrap().iter().map(|(k, v)| {
                            (k.clone(), v.as_str().map_or(v.to_string(), String::from))
                        }))
                        .finish();
                one.send(method.clone(), &format!("{path}?{query}"), Value::Null)
                    .await
            } else {
                one.send(method.clone(), path, fields).await
            };
            let shown: String = bad.to_string().chars().take(40).collect();
            let what = format!("{method} {path} with {field} = {shown}");
            assert_refused(&what, status, &body, field);
        }
    }
    assert_eq!(
        one.digest().await,
        before,
        "a refused request changed the state"
    );
    // The node keeps serving.
    let got = one
        .ok(Method::GET, &format!("{R}/get?name=fraud"), Value::Null)
        .await;
    assert_eq!(got["registered_model"]["name"], "fraud");
    one.node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_extreme_paging_and_missing_tokens_get_mlflow_errors() {
    let one = One::start().await;
    let token = one.token.clone();
    let create = format!("{R}/create");
    for (body, code) in [
        (b"{not json".to_vec(), "MALFORMED_REQUEST"),
        (b"[1, 2]".to_vec(), "INVALID_PARAMETER_VALUE"),
        (b"\"name\"".to_vec(), "INVALID_PARAMETER_VALUE"),
        (vec![0xff, 0xfe, 0x00], "MALFORMED_REQUEST"),
        (vec![b' '; (1 << 20) + 1], "INVALID_PARAMETER_VALUE"),
        (b"{}".to_vec(), "INVALID_PARAMETER_VALUE"),
        (
            br#"{"name": "x", "tags": "not-a-list"}"#.to_vec(),
            "INVALID_PARAMETER_VALUE",
        ),
        (
            br#"{"name": "x", "tags": [{"value": "v"}]}"#.to_vec(),
            "INVALID_PARAMETER_VALUE",
        ),
    ] {
        let (status, bytes) = one
            .send_raw(Method::POST, &create, body.clone(), Some(&token))
            .await;
        let value: Value = serde_json::from_slice(&bytes).expect("JSON error");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{value}");
        assert_eq!(value["error_code"], code, "{value}");
    }
    // A filter no name can match is answered, empty, never a storage error.
    let long = format!("name LIKE '{}%'", "é".repeat(300));
    for filter in ["name LIKE 'ééé%'", "name = 'x\0y'", long.as_str()] {
        let encoded: String = form_urlencoded::byte_serialize(filter.as_bytes()).collect();
        for route in [R, V] {
            let (status, value) = one
                .send(
                    Method::GET,
                    &format!("{route}/search?filter={encoded}"),
                    Value::Null,
                )
                .await;
            assert!(
                status != StatusCode::INTERNAL_SERVER_ERROR,
                "{filter}: {value}"
            );
            assert!(
                status.is_success() || status.is_client_error(),
                "{filter}: {value}"
            );
        }
    }
    for max in ["-1", "0", "1001", "99999999999999999999", "ten", "1.5"] {
        let (status, value) = one
            .send(
                Method::GET,
                &format!("{R}/search?max_results={max}"),
                Value::Null,
            )
            .await;
        assert_refused(&format!("max_results={max}"), status, &value, "max_results");
    }
    for max in ["-5", "200001", "9223372036854775807"] {
        let (status, value) = one
            .send(
                Method::GET,
                &format!("{V}/search?max_results={max}"),
                Value::Null,
            )
            .await;
        assert_refused(&format!("max_results={max}"), status, &value, "max_results");
    }
    for bad in [
        "%2E%2E%2Fx",
        "x%00",
        "fraud/",
        "/1",
        "fraud/-1",
        "fraud/1/2",
        "fraud/1~00000000",
        "~",
    ] {
        let (status, value) = one
            .send(
                Method::GET,
                &format!("{V}/search?page_token={bad}"),
                Value::Null,
            )
            .await;
        assert_refused(&format!("page_token={bad}"), status, &value, "page_token");
    }
    // No credential, a malformed one, an unknown one: UNAUTHENTICATED (401).
    for token in [
        None,
        Some("nonsense"),
        Some(&*PresentedToken::random().to_string()),
    ] {
        let (status, bytes) = one
            .send_raw(Method::GET, &format!("{R}/search"), Vec::new(), token)
            .await;
        let value: Value = serde_json::from_slice(&bytes).expect("JSON error");
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{value}");
        assert_eq!(value["error_code"], "UNAUTHENTICATED", "{value}");
    }
    let (status, bytes) = one
        .send_raw(
            Method::GET,
            "/api/2.0/mlflow/no-such/endpoint",
            Vec::new(),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let value: Value = serde_json::from_slice(&bytes).expect("JSON error");
    assert_eq!(value["error_code"], "ENDPOINT_NOT_FOUND");
    // server-info answers without credentials, as MLflow's does, and offers no multipart or
    // presigned transfers: the client streams each file through the node.
    for (path, token) in [
        ("/api/3.0/mlflow/server-info", None),
        ("/ajax-api/3.0/mlflow/server-info", Some(token.as_str())),
    ] {
        let (status, bytes) = one.send_raw(Method::GET, path, Vec::new(), token).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let info: Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(info["multipart_uploads_enabled"], false, "{info}");
        assert_eq!(info["artifacts_presigned_only"], false, "{info}");
        assert_eq!(info["artifact_serving_enabled"], true, "{info}");
    }
    let (status, _) = one
        .send_raw(
            Method::POST,
            "/api/3.0/mlflow/server-info",
            b"{}".to_vec(),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, bytes) = one
        .send_raw(Method::GET, "/metrics", Vec::new(), None)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the node's other routes answer as before"
    );
    assert!(!bytes.is_empty());
    one.node.shutdown().await.expect("shutdown");
}

/// Seeded bytes that do not compress or repeat: several chunks.
fn seeded(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_go_through_the_chunk_store_and_a_version_holds_the_logged_models_files() {
    let one = One::start().await;
    let token = one.token.clone();
    let created = one
        .ok(
            Method::POST,
            "/api/2.0/mlflow/logged-models",
            json!({"experiment_id": "0", "name": "model",
                   "params": [{"key": "alpha", "value": "0.5"}]}),
        )
        .await;
    let info = &created["model"]["info"];
    let id = info["model_id"].as_str().expect("an id").to_string();
    assert_eq!(
        info["artifact_uri"],
        format!("mlflow-artifacts:/0/models/{id}/artifacts")
    );
    assert_eq!(info["status"], "LOGGED_MODEL_PENDING");
    // Hostile logged-model requests: refused by field, nothing changed.
    let before = one.digest().await;
    let lm = "/api/2.0/mlflow/logged-models";
    let many: Vec<Value> = (0..300)
        .map(|i| json!({"key": format!("p{i}"), "value": "v"}))
        .collect();
    let unknown = "m-ffffffffffffffffffffffffffffffff";
    let hostile_calls: Vec<(Method, String, Value, &str)> = vec![
        (
            Method::GET,
            format!("{lm}/m-nothex"),
            Value::Null,
            "model_id",
        ),
        (
            Method::GET,
            format!("{lm}/..%2F..%2Fx"),
            Value::Null,
            "model_id",
        ),
        (
            Method::GET,
            format!("{lm}/{unknown}"),
            Value::Null,
            "not found",
        ),
        (
            Method::PATCH,
            format!("{lm}/{id}"),
            json!({"status": "DONE"}),
            "status",
        ),
        (
            Method::PATCH,
            format!("{lm}/{id}"),
            json!({"status": 7}),
            "status",
        ),
        (Method::PATCH, format!("{lm}/{id}"), json!({}), "status"),
        (
            Method::POST,
            format!("{lm}/{id}/params"),
            json!({"params": "x"}),
            "params",
        ),
        (
            Method::POST,
            format!("{lm}/{id}/params"),
            json!({"params": many}),
            "params",
        ),
        (
            Method::POST,
            lm.to_string(),
            json!({"experiment_id": "7"}),
            "experiment_id",
        ),
        (
            Method::POST,
            lm.to_string(),
            json!({"name": "n\u{0}"}),
            "name",
        ),
        (
            Method::POST,
            lm.to_string(),
            json!({"name": "x".repeat(100 * 1024)}),
            "name",
        ),
        (
            Method::PATCH,
            format!("{lm}/{id}/tags"),
            json!({"tags": [{"key": "", "value": "v"}]}),
            "tags",
        ),
    ];
    for (method, path, body, field) in hostile_calls {
        let (status, value) = one.send(method.clone(), &path, body).await;
        assert_refused(&format!("{method} {path}"), status, &value, field);
    }
    for path in ["../x", "a/../../b", "", "a\0b"] {
        let encoded: String = form_urlencoded::byte_serialize(path.as_bytes()).collect();
        let uri = format!("{A}/0/models/{id}/artifacts/{encoded}");
        let (status, bytes) = one
            .send_raw(Method::PUT, &uri, b"x".to_vec(), Some(&token))
            .await;
        assert!(status.is_client_error(), "PUT {path:?}: {status}");
        let value: Value = serde_json::from_slice(&bytes).expect("JSON error");
        assert!(value["error_code"].is_string(), "{value}");
    }
    assert_eq!(
        one.digest().await,
        before,
        "a refused request changed the state"
    );

    let root = format!("0/models/{id}/artifacts");
    let weights = seeded(700 * 1024);
    for (path, bytes) in [
        ("MLmodel", b"flavors: {}\n".to_vec()),
        ("data/weights.bin", weights.clone()),
        ("empty.txt", Vec::new()),
    ] {
        let (status, body) = one
            .send_raw(
                Method::PUT,
                &format!("{A}/{root}/{path}"),
                bytes,
                Some(&token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    let listed = one
        .ok(Method::GET, &format!("{A}?path={root}"), Value::Null)
        .await;
    assert_eq!(
        listed["files"],
        json!([
            {"path": "MLmodel", "is_dir": false, "file_size": 12},
            {"path": "data", "is_dir": true},
            {"path": "empty.txt", "is_dir": false, "file_size": 0},
        ])
    );
    let (status, got) = one
        .send_raw(
            Method::GET,
            &format!("{A}/{root}/data/weights.bin"),
            Vec::new(),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(got == weights, "the logged file came back changed");
    let finalized = one
        .ok(
            Method::PATCH,
            &format!("/api/2.0/mlflow/logged-models/{id}"),
            json!({"model_id": id, "status": "LOGGED_MODEL_READY"}),
        )
        .await;
    assert_eq!(finalized["model"]["info"]["status"], "LOGGED_MODEL_READY");
    let (status, value) = one
        .send(Method::PUT, &format!("{A}/{root}/late.txt"), json!("late"))
        .await;
    assert_refused("a PUT after finalize", status, &value, "path");

    one.ok(
        Method::POST,
        &format!("{R}/create"),
        json!({"name": "fraud"}),
    )
    .await;
    let v = one
        .ok(
            Method::POST,
            &format!("{V}/create"),
            json!({"name": "fraud", "source": format!("models:/{id}"), "model_id": id}),
        )
        .await;
    assert_eq!(v["model_version"]["version"], "1");
    assert_eq!(v["model_version"]["status"], "READY");
    let uri = one
        .ok(
            Method::GET,
            &format!("{V}/get-download-uri?name=fraud&version=1"),
            Value::Null,
        )
        .await;
    assert_eq!(uri["artifact_uri"], "mlflow-artifacts:/registry/fraud/1");
    let (status, got) = one
        .send_raw(
            Method::GET,
            &format!("{A}/registry/fraud/1/data/weights.bin"),
            Vec::new(),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(got == weights, "the version's file came back changed");
    let (status, value) = one
        .send(
            Method::PUT,
            &format!("{A}/registry/fraud/1/MLmodel"),
            json!("x"),
        )
        .await;
    assert_refused("a PUT into a version", status, &value, "path");
    for bad in [
        "registry/fraud/1/../../x",
        "0/models/m-x/artifacts",
        "../etc",
        "registry/fraud/2",
    ] {
        let (status, bytes) = one
            .send_raw(
                Method::GET,
                &format!("{A}?path={bad}"),
                Vec::new(),
                Some(&token),
            )
            .await;
        assert!(status.is_client_error(), "{bad}: {status}");
        let value: Value = serde_json::from_slice(&bytes).expect("JSON error");
        assert!(value["error_code"].is_string(), "{bad}: {value}");
    }
    one.node.shutdown().await.expect("shutdown");
}

/// Pages through a search with `order_by` (as query parameters, as the client sends them),
/// `size` at a time; every result's (name, version, created, updated).
async fn search_pages(one: &One, route: &str, order_by: &[&str], size: usize) -> Vec<Value> {
    let mut token = String::new();
    let mut all = Vec::new();
    let list = if route == R {
        "registered_models"
    } else {
        "model_versions"
    };
    loop {
        let mut uri = format!("{route}/search?max_results={size}");
        for clause in order_by {
            let clause: String = form_urlencoded::byte_serialize(clause.as_bytes()).collect();
            uri.push_str(&format!("&order_by={clause}"));
        }
        if !token.is_empty() {
            uri.push_str(&format!("&page_token={token}"));
        }
        let page = one.ok(Method::GET, &uri, Value::Null).await;
        let rows = page[list].as_array().cloned().unwrap_or_default();
        assert!(rows.len() <= size, "{uri}: {page}");
        all.extend(rows);
        token = page["next_page_token"].as_str().unwrap_or("").to_string();
        if token.is_empty() {
            return all;
        }
    }
}

fn sort_fields(row: &Value) -> (String, u64, i64, i64) {
    (
        row["name"].as_str().expect("a name").to_string(),
        row["version"]
            .as_str()
            .map_or(0, |v| v.parse().expect("a number")),
        row["creation_timestamp"].as_i64().expect("created"),
        row["last_updated_timestamp"].as_i64().expect("updated"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_follow_order_by_across_pages_and_default_to_mlflows_orders() {
    let one = One::start().await;
    for name in ["ord-c", "ord-a", "ord-b"] {
        one.ok(Method::POST, &format!("{R}/create"), json!({"name": name}))
            .await;
        for _ in 0..3 {
            one.ok(
                Method::POST,
                &format!("{V}/create"),
                json!({"name": name, "source": "s3://bucket/key"}),
            )
            .await;
        }
    }
    // A stage change makes a version the most recently updated one.
    one.ok(
        Method::POST,
        &format!("{V}/transition-stage"),
        json!({"name": "ord-a", "version": "1", "stage": "Archived"}),
    )
    .await;
    let by_key = search_pages(&one, V, &["name ASC", "version_number ASC"], 2).await;
    let mut rows: Vec<_> = by_key.iter().map(sort_fields).collect();
    assert_eq!(rows.len(), 9);
    assert!(rows
        .windows(2)
        .all(|w| (&w[0].0, w[0].1) < (&w[1].0, w[1].1)));

    // MLflow's default: last updated first, then name, then the newest version.
    rows.sort_by(|a, b| b.3.cmp(&a.3).then(a.0.cmp(&b.0)).then(b.1.cmp(&a.1)));
    let got: Vec<_> = search_pages(&one, V, &[], 2)
        .await
        .iter()
        .map(sort_fields)
        .collect();
    assert_eq!(got, rows);
    assert_eq!((got[0].0.as_str(), got[0].1), ("ord-a", 1));

    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let got: Vec<_> = search_pages(&one, V, &["version_number DESC"], 4)
        .await
        .iter()
        .map(sort_fields)
        .collect();
    assert_eq!(got, rows);

    let names = |rows: &[Value]| -> Vec<String> { rows.iter().map(|r| sort_fields(r).0).collect() };
    let got = search_pages(&one, R, &[], 1).await;
    assert_eq!(names(&got), ["ord-a", "ord-b", "ord-c"]);
    let got = search_pages(&one, R, &["name DESC"], 2).await;
    assert_eq!(names(&got), ["ord-c", "ord-b", "ord-a"]);
    let mut expected: Vec<_> = got.iter().map(sort_fields).collect();
    expected.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    let got = search_pages(&one, R, &["creation_timestamp DESC"], 2).await;
    assert_eq!(got.iter().map(sort_fields).collect::<Vec<_>>(), expected);

    // A token of one order is refused by another, by name.
    let page = one
        .ok(
            Method::GET,
            &format!("{R}/search?max_results=1"),
            Value::Null,
        )
        .await;
    let key_token = page["next_page_token"]
        .as_str()
        .expect("a token")
        .to_string();
    let page = one
        .ok(
            Method::GET,
            &format!("{R}/search?max_results=1&order_by=name%20DESC"),
            Value::Null,
        )
        .await;
    let sorted_token = page["next_page_token"]
        .as_str()
        .expect("a token")
        .to_string();
    for uri in [
        format!("{R}/search?order_by=name%20DESC&page_token={key_token}"),
        format!("{R}/search?page_token={sorted_token}"),
        format!("{V}/search?order_by=name%20ASC&order_by=version_number%20ASC&page_token={sorted_token}"),
    ] {
        let (status, value) = one.send(Method::GET, &uri, Value::Null).await;
        assert_refused(&uri, status, &value, "page_token");
    }
    for clause in ["run_id%20ASC", "name%20sideways", "tags.x", "name%00"] {
        for route in [R, V] {
            let uri = format!("{route}/search?order_by={clause}");
            let (status, value) = one.send(Method::GET, &uri, Value::Null).await;
            assert_refused(&uri, status, &value, "order_by");
        }
    }
    one.node.shutdown().await.expect("shutdown");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x4d4c_464c),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever arrives, the decoders answer a value or a 4xx naming the field: never a panic,
    /// never a 5xx.
    #[test]
    fn request_decoders_answer_a_value_or_a_named_refusal(
        body in prop::collection::vec(any::<u8>(), 0..256),
        query in "[a-z_=&%0-9A-F.\\-/]{0,64}",
        json_text in prop_oneof![
            Just("{\"name\": 5, \"tags\": [{\"key\": \"k\"}], \"max_results\": -3}".to_owned()),
            Just("{\"stages\": [1, 2], \"version\": \"0\"}".to_owned()),
            Just("{\"params\": {\"a\": 1}, \"archive_existing_versions\": \"maybe\"}".to_owned()),
            "\\{\"[a-z_]{1,12}\": (\"[^\"\\\\]{0,8}\"|-?[0-9]{1,20}|true|null|\\[\\]|\\{\\})\\}",
        ],
    ) {
        let mut decoded = vec![Fields::from_json(&body), Fields::from_query(&query)];
        decoded.push(Fields::from_json(json_text.as_bytes()));
        for fields in decoded {
            let fields = match fields {
                Ok(fields) => fields,
                Err(e) => {
                    prop_assert!(e.status.is_client_error());
                    continue;
                }
            };
            for name in ["name", "version", "max_results", "stages", "tags", "params",
                         "archive_existing_versions", "page_token"] {
                let results = [
                    fields.string(name).err(),
                    fields.int(name).err(),
                    fields.flag(name).err(),
                    fields.strings(name).err(),
                    fields.pairs(name).err(),
                    fields.version(name).err(),
                ];
                for e in results.into_iter().flatten() {
                    prop_assert!(e.status.is_client_error(), "{:?}", e);
                    prop_assert!(e.message.contains(name), "{:?}", e);
                }
            }
        }
    }
}
