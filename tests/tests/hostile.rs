//! Every RPC of the public API, called on a real three-node cluster with hostile fields (empty,
//! over-long, NUL, path-like, `C:`-style, unicode, format strings, extreme numbers, unknown enum
//! values, out-of-order upload streams) through the raw gRPC clients, so that nothing the SDK or
//! the CLI checks first stands in the way. Each call answers with a result or a clear error (a
//! status a client can act on, with a short message); afterwards every node still accepts a
//! write and all state digests are equal.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use quiver_client::proto::access_client::AccessClient;
use quiver_client::proto::admin_client::AdminClient;
use quiver_client::proto::lifecycle_client::LifecycleClient;
use quiver_client::proto::models_client::ModelsClient;
use quiver_client::proto::upload_message::Kind;
use quiver_client::proto::versions_client::VersionsClient;
use quiver_client::proto::{
    CreateModelRequest, DeleteAliasRequest, DownloadRequest, FileStart, GetAliasRequest,
    GetModelRequest, GetVersionRequest, ListModelsRequest, ListVersionsRequest, NodeStatusRequest,
    RemoveNodeRequest, SetAliasRequest, SetStageRequest, SetVersionTagsRequest, StepDownRequest,
    UpdateModelRequest, UploadCommit, UploadHeader, UploadMessage, VersionMetadata,
};
use quiver_tests::{quiver, NodeProcess};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const NODE: &str = env!("CARGO_BIN_EXE_e2e-quiver-node");
const CLI: &str = env!("CARGO_BIN_EXE_e2e-quiver");

/// Longest error message a client should have to read: a bad value is named, not echoed whole.
const MESSAGE_BYTES_MAX: usize = 1024;
/// How long the nodes have to agree on their state after the storm.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

fn hostile_strings() -> Vec<String> {
    vec![
        String::new(),
        " ".into(),
        "a".repeat(100_000),
        "bad\0name".into(),
        "../../etc/passwd".into(),
        "/absolute/path".into(),
        "C:\\Windows\\System32".into(),
        "модель-🚀".into(),
        "\u{202e}gnp.exe".into(),
        "%s%n%x".into(),
        "reco/1".into(),
        "reco@champion".into(),
        "reco:production".into(),
        "reco/18446744073709551615".into(),
        "reco".into(),
    ]
}

const HOSTILE_U64: [u64; 4] = [0, 1, u64::MAX, 1 << 63];
const HOSTILE_ENUM: [i32; 4] = [-1, 0, 99, i32::MAX];

/// What the calls answered that no client can act on.
#[derive(Default)]
struct Verdicts {
    calls: usize,
    problems: Vec<String>,
}

impl Verdicts {
    fn judge<T>(&mut self, what: &str, answer: Result<T, Status>) {
        self.calls += 1;
        let Err(status) = answer else { return };
        let unclear = matches!(
            status.code(),
            Code::Internal | Code::Unknown | Code::Unimplemented | Code::DataLoss | Code::Cancelled
        );
        // Every call here carries the admin's token: a refusal for credentials would mean the
        // fields were never looked at.
        let credentials = matches!(
            status.code(),
            Code::Unauthenticated | Code::PermissionDenied
        );
        let what: String = what.chars().take(120).collect();
        if unclear || credentials {
            self.problems.push(format!(
                "{what}: {:?}: {}",
                status.code(),
                short(status.message())
            ));
        } else if status.message().trim().is_empty() {
            self.problems
                .push(format!("{what}: {:?} without a message", status.code()));
        } else if status.message().len() > MESSAGE_BYTES_MAX {
            self.problems.push(format!(
                "{what}: a {} byte message: {}",
                status.message().len(),
                short(status.message())
            ));
        }
    }
}

fn short(s: &str) -> String {
    let head: String = s.chars().take(200).collect();
    if head.len() < s.len() {
        format!("{head}…")
    } else {
        head
    }
}

fn label(s: &str) -> String {
    format!("{:?}", s.chars().take(24).collect::<String>())
}

fn start_cluster(dir: &Path) -> Vec<NodeProcess> {
    let founder_dir = dir.join("node-1");
    let d = founder_dir.display().to_string();
    let founder = NodeProcess::spawn(
        NODE,
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", &d],
        &founder_dir,
    )
    .expect("start node 1");
    let peer = founder.peer_addr.clone().expect("serve prints its peer");
    let mut nodes = vec![founder];
    for id in 2..=3u64 {
        let node = NodeProcess::join(
            NODE,
            &founder_dir,
            &peer,
            id,
            &dir.join(format!("node-{id}")),
            &[],
        )
        .unwrap_or_else(|e| panic!("start node {id}: {e:#}"));
        nodes.push(node);
    }
    nodes
}

/// Adds the cluster's admin token to every request, so that what is judged is the fields.
#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

struct Clients {
    models: ModelsClient<Authed>,
    versions: VersionsClient<Authed>,
    lifecycle: LifecycleClient<Authed>,
    admin: AdminClient<Authed>,
    access: AccessClient<Authed>,
    /// Without credentials: for the requests whose credentials are what is hostile.
    anonymous: ModelsClient<Channel>,
}

async fn clients(endpoint: &str) -> Clients {
    let channel = quiver_tests::channel(endpoint).await.expect("connect");
    let token = quiver_tests::token_for(endpoint).expect("the cluster's admin token");
    let bearer = Bearer(format!("Bearer {token}").parse().expect("a header value"));
    let authed = tonic::service::interceptor::InterceptedService::new(channel.clone(), bearer);
    Clients {
        models: ModelsClient::new(authed.clone()).max_decoding_message_size(64 << 20),
        versions: VersionsClient::new(authed.clone()),
        lifecycle: LifecycleClient::new(authed.clone()),
        admin: AdminClient::new(authed.clone()),
        access: AccessClient::new(authed),
        anonymous: ModelsClient::new(channel),
    }
}

fn upload(messages: Vec<Kind>) -> impl tonic::IntoStreamingRequest<Message = UploadMessage> {
    futures::stream::iter(
        messages
            .into_iter()
            .map(|kind| UploadMessage { kind: Some(kind) })
            .collect::<Vec<_>>(),
    )
}

fn header(model: &str) -> Kind {
    Kind::Header(UploadHeader {
        model: model.to_string(),
        metadata: Some(VersionMetadata {
            data_snapshot_id: "snap-1".into(),
            code_commit: "abc".into(),
            pipeline_run_id: "run-1".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn file(path: &str, size_bytes: u64) -> Kind {
    Kind::File(FileStart {
        path: path.to_string(),
        size_bytes,
        mode: 0o644,
    })
}

/// Every RPC with every hostile value in each of its fields in turn, through node `c`.
async fn storm(c: &mut Clients, v: &mut Verdicts) {
    for s in hostile_strings() {
        let l = label(&s);
        let map = HashMap::from([(s.clone(), s.clone())]);
        for (field, req) in [
            (
                "name",
                CreateModelRequest {
                    name: s.clone(),
                    ..Default::default()
                },
            ),
            (
                "namespace",
                CreateModelRequest {
                    name: "hostile-ns".into(),
                    namespace: s.clone(),
                    ..Default::default()
                },
            ),
            (
                "description",
                CreateModelRequest {
                    name: "hostile-desc".into(),
                    description: s.clone(),
                    ..Default::default()
                },
            ),
            (
                "tags",
                CreateModelRequest {
                    name: "hostile-tags".into(),
                    tags: map.clone(),
                    ..Default::default()
                },
            ),
        ] {
            v.judge(
                &format!("CreateModel {field}={l}"),
                c.models.create_model(req).await,
            );
        }
        v.judge(
            &format!("GetModel {l}"),
            c.models
                .get_model(GetModelRequest {
                    name: s.clone(),
                    consistency: 0,
                })
                .await,
        );
        v.judge(
            &format!("ListModels {l}"),
            c.models
                .list_models(ListModelsRequest {
                    name_prefix: s.clone(),
                    tag: s.clone(),
                    page_size: u32::MAX,
                    page_token: s.clone(),
                    consistency: 0,
                })
                .await,
        );
        for (field, req) in [
            (
                "name",
                UpdateModelRequest {
                    name: s.clone(),
                    description: Some("x".into()),
                    ..Default::default()
                },
            ),
            (
                "description",
                UpdateModelRequest {
                    name: "reco".into(),
                    description: Some(s.clone()),
                    ..Default::default()
                },
            ),
            (
                "set_tags",
                UpdateModelRequest {
                    name: "reco".into(),
                    set_tags: map.clone(),
                    ..Default::default()
                },
            ),
            (
                "remove_tags",
                UpdateModelRequest {
                    name: "reco".into(),
                    remove_tags: vec![s.clone()],
                    ..Default::default()
                },
            ),
        ] {
            v.judge(
                &format!("UpdateModel {field}={l}"),
                c.models.update_model(req).await,
            );
        }
        v.judge(
            &format!("GetVersion {l}"),
            c.versions
                .get_version(GetVersionRequest {
                    reference: s.clone(),
                    consistency: 0,
                })
                .await,
        );
        v.judge(
            &format!("ListVersions {l}"),
            c.versions
                .list_versions(ListVersionsRequest {
                    model: s.clone(),
                    tag: s.clone(),
                    page_token: s.clone(),
                    page_size: u32::MAX,
                    ..Default::default()
                })
                .await,
        );
        let download = c
            .versions
            .download_version(DownloadRequest {
                reference: s.clone(),
            })
            .await;
        match download {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(e) => {
                            v.judge::<()>(&format!("DownloadVersion {l} (stream)"), Err(e));
                            break;
                        }
                    }
                }
            }
            Err(e) => v.judge::<()>(&format!("DownloadVersion {l}"), Err(e)),
        }
        for (field, req) in [
            (
                "reference",
                SetStageRequest {
                    reference: s.clone(),
                    stage: 2,
                    reason: "r".into(),
                },
            ),
            (
                "reason",
                SetStageRequest {
                    reference: "reco/1".into(),
                    stage: 2,
                    reason: s.clone(),
                },
            ),
        ] {
            v.judge(
                &format!("SetStage {field}={l}"),
                c.lifecycle.set_stage(req).await,
            );
        }
        for (field, req) in [
            (
                "model",
                SetAliasRequest {
                    model: s.clone(),
                    alias: "champion".into(),
                    version: 1,
                },
            ),
            (
                "alias",
                SetAliasRequest {
                    model: "reco".into(),
                    alias: s.clone(),
                    version: 1,
                },
            ),
        ] {
            v.judge(
                &format!("SetAlias {field}={l}"),
                c.lifecycle.set_alias(req).await,
            );
        }
        v.judge(
            &format!("GetAlias {l}"),
            c.lifecycle
                .get_alias(GetAliasRequest {
                    model: s.clone(),
                    alias: s.clone(),
                    consistency: 0,
                })
                .await,
        );
        v.judge(
            &format!("DeleteAlias model={l}"),
            c.lifecycle
                .delete_alias(DeleteAliasRequest {
                    model: s.clone(),
                    alias: "x".into(),
                })
                .await,
        );
        v.judge(
            &format!("DeleteAlias alias={l}"),
            c.lifecycle
                .delete_alias(DeleteAliasRequest {
                    model: "reco".into(),
                    alias: s.clone(),
                })
                .await,
        );
        for (field, req) in [
            (
                "reference",
                SetVersionTagsRequest {
                    reference: s.clone(),
                    set_tags: HashMap::from([("k".into(), "v".into())]),
                    remove_tags: vec![],
                },
            ),
            (
                "set_tags",
                SetVersionTagsRequest {
                    reference: "reco/1".into(),
                    set_tags: map.clone(),
                    remove_tags: vec![],
                },
            ),
            (
                "remove_tags",
                SetVersionTagsRequest {
                    reference: "reco/1".into(),
                    set_tags: HashMap::new(),
                    remove_tags: vec![s.clone()],
                },
            ),
        ] {
            v.judge(
                &format!("SetVersionTags {field}={l}"),
                c.lifecycle.set_version_tags(req).await,
            );
        }
        // Uploads: a hostile model, path, and client root.
        v.judge(
            &format!("RegisterVersion model={l}"),
            c.versions
                .register_version(upload(vec![
                    header(&s),
                    file("w.bin", 3),
                    Kind::Data(b"abc".to_vec()),
                    Kind::Commit(UploadCommit::default()),
                ]))
                .await,
        );
        v.judge(
            &format!("RegisterVersion path={l}"),
            c.versions
                .register_version(upload(vec![
                    header("reco"),
                    file(&s, 3),
                    Kind::Data(b"abc".to_vec()),
                    Kind::Commit(UploadCommit::default()),
                ]))
                .await,
        );
        v.judge(
            &format!("RegisterVersion root={l}"),
            c.versions
                .register_version(upload(vec![
                    header("reco"),
                    file("w.bin", 3),
                    Kind::Data(b"abc".to_vec()),
                    Kind::Commit(UploadCommit {
                        manifest_root: s.clone(),
                    }),
                ]))
                .await,
        );
    }
    for n in HOSTILE_U64 {
        v.judge(
            &format!("SetAlias version={n}"),
            c.lifecycle
                .set_alias(SetAliasRequest {
                    model: "reco".into(),
                    alias: "champion".into(),
                    version: n,
                })
                .await,
        );
        v.judge(
            &format!("RemoveNode {n}"),
            c.admin
                .remove_node(RemoveNodeRequest { node_id: n.max(4) })
                .await,
        );
        v.judge(
            &format!("RegisterVersion size={n}"),
            c.versions
                .register_version(upload(vec![
                    header("reco"),
                    file("w.bin", n),
                    Kind::Data(b"abc".to_vec()),
                    Kind::Commit(UploadCommit::default()),
                ]))
                .await,
        );
    }
    for e in HOSTILE_ENUM {
        v.judge(
            &format!("CreateModel risk_tier={e}"),
            c.models
                .create_model(CreateModelRequest {
                    name: "hostile-tier".into(),
                    risk_tier: e,
                    ..Default::default()
                })
                .await,
        );
        v.judge(
            &format!("GetModel consistency={e}"),
            c.models
                .get_model(GetModelRequest {
                    name: "reco".into(),
                    consistency: e,
                })
                .await,
        );
        v.judge(
            &format!("ListVersions stage={e}"),
            c.versions
                .list_versions(ListVersionsRequest {
                    model: "reco".into(),
                    stage: e,
                    ..Default::default()
                })
                .await,
        );
        v.judge(
            &format!("SetStage stage={e}"),
            c.lifecycle
                .set_stage(SetStageRequest {
                    reference: "reco/1".into(),
                    stage: e,
                    reason: "r".into(),
                })
                .await,
        );
    }
    // Streams out of order, empty, or repeated.
    for (what, messages) in [
        ("empty upload", vec![]),
        (
            "data before the header",
            vec![Kind::Data(b"abc".to_vec()), header("reco")],
        ),
        ("two headers", vec![header("reco"), header("reco")]),
        (
            "commit without files",
            vec![header("reco"), Kind::Commit(UploadCommit::default())],
        ),
        (
            "data without a file",
            vec![
                header("reco"),
                Kind::Data(b"abc".to_vec()),
                Kind::Commit(UploadCommit::default()),
            ],
        ),
        (
            "more bytes than declared",
            vec![
                header("reco"),
                file("w.bin", 1),
                Kind::Data(b"abc".to_vec()),
                Kind::Commit(UploadCommit::default()),
            ],
        ),
        (
            "the same path twice",
            vec![
                header("reco"),
                file("w.bin", 1),
                Kind::Data(b"a".to_vec()),
                file("w.bin", 1),
                Kind::Data(b"b".to_vec()),
                Kind::Commit(UploadCommit::default()),
            ],
        ),
        (
            "no commit",
            vec![
                header("reco"),
                file("w.bin", 3),
                Kind::Data(b"abc".to_vec()),
            ],
        ),
    ] {
        v.judge(
            &format!("RegisterVersion {what}"),
            c.versions.register_version(upload(messages)).await,
        );
    }
    // Credentials no one holds: each is refused as unauthenticated, with a message.
    let long = format!("Bearer qvr_{}", "a".repeat(4096));
    let headers: Vec<(&str, tonic::metadata::MetadataValue<tonic::metadata::Ascii>)> = vec![
        ("no token", "".parse().expect("ascii")),
        ("an empty bearer", "Bearer ".parse().expect("ascii")),
        (
            "another scheme",
            "Basic YWRtaW46YWRtaW4=".parse().expect("ascii"),
        ),
        ("a 4 KiB token", long.parse().expect("ascii")),
        (
            "a path-like token",
            "Bearer qvr_../../etc/passwd_0123456789abcdef0123456789abcdef"
                .parse()
                .expect("ascii"),
        ),
        (
            "an unknown token",
            "Bearer qvr_0123456789abcdef_0123456789abcdef0123456789abcdef"
                .parse()
                .expect("ascii"),
        ),
    ];
    for (what, value) in headers {
        let mut request = Request::new(CreateModelRequest {
            name: "hostile-credentials".into(),
            ..Default::default()
        });
        if !value.is_empty() {
            request.metadata_mut().insert("authorization", value);
        }
        let answer = c.anonymous.create_model(request).await;
        match &answer {
            Err(status) if status.code() == Code::Unauthenticated => {}
            other => v.problems.push(format!(
                "CreateModel with {what}: {:?} instead of UNAUTHENTICATED",
                other.as_ref().map(|_| "accepted").map_err(|s| s.code())
            )),
        }
        v.judge(
            &format!("CreateModel with {what}"),
            answer.map_err(|s| {
                // Judged for its message; the code was checked above.
                Status::new(Code::InvalidArgument, s.message().to_string())
            }),
        );
    }
    // The Access service: every text field hostile, and extreme lifetimes. A refusal must be
    // clear; anything accepted is a well-formed principal (the state checks below still hold).
    for text in hostile_strings() {
        let shown: String = text.chars().take(20).collect();
        v.judge(
            &format!("CreateToken principal {shown:?}"),
            c.access
                .create_token(quiver_client::proto::CreateTokenRequest {
                    principal: text.clone(),
                    description: text.clone(),
                    expires_in_secs: Some(60),
                })
                .await,
        );
        v.judge(
            &format!("RevokeToken {shown:?}"),
            c.access
                .revoke_token(quiver_client::proto::RevokeTokenRequest { id: text.clone() })
                .await,
        );
        v.judge(
            &format!("GrantRole {shown:?}"),
            c.access
                .grant_role(quiver_client::proto::GrantRoleRequest {
                    principal: text.clone(),
                    scope: text.clone(),
                    role: text.clone(),
                })
                .await,
        );
        v.judge(
            &format!("RevokeRole {shown:?}"),
            c.access
                .revoke_role(quiver_client::proto::RevokeRoleRequest {
                    principal: text.clone(),
                    scope: text.clone(),
                })
                .await,
        );
        v.judge(
            &format!("ListRoles {shown:?}"),
            c.access
                .list_roles(quiver_client::proto::ListRolesRequest {
                    principal: text.clone(),
                })
                .await,
        );
    }
    for secs in HOSTILE_U64 {
        v.judge(
            &format!("CreateToken expiring in {secs} s"),
            c.access
                .create_token(quiver_client::proto::CreateTokenRequest {
                    principal: "hostile-lifetime".into(),
                    description: String::new(),
                    expires_in_secs: Some(secs),
                })
                .await,
        );
    }
    v.judge(
        "Crash (drills off)",
        c.admin.crash(quiver_client::proto::CrashRequest {}).await,
    );
    v.judge(
        "NodeStatus",
        c.admin.node_status(NodeStatusRequest {}).await,
    );
    v.judge(
        "ClusterStatus",
        c.admin
            .cluster_status(quiver_client::proto::ClusterStatusRequest {})
            .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_hostile_fields_clearly_and_the_cluster_keeps_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = start_cluster(dir.path());
    let ep = nodes[0].endpoint.clone();
    quiver(CLI, &ep, &["model", "create", "reco"]).ok();
    let weights = dir.path().join("weights.bin");
    std::fs::write(&weights, b"weights").expect("artifact");
    quiver_tests::register_version(CLI, &ep, "reco", &[&weights]).ok();

    let mut verdicts = Verdicts::default();
    for node in &nodes {
        let mut c = clients(&node.endpoint).await;
        storm(&mut c, &mut verdicts).await;
    }
    let mut c = clients(&nodes[1].endpoint).await;
    // A leadership change after the storm: the new leader must bring the followers its log,
    // including the large rejected commands the storm left in it.
    verdicts.judge("StepDown", c.admin.step_down(StepDownRequest {}).await);
    assert!(verdicts.calls > 500, "{} calls", verdicts.calls);
    assert!(
        verdicts.problems.is_empty(),
        "{} of {} calls answered unclearly:\n{}",
        verdicts.problems.len(),
        verdicts.calls,
        verdicts.problems.join("\n")
    );

    // Every node still takes a write (through a new leader, after the step-down).
    for (i, node) in nodes.iter().enumerate() {
        let run = quiver(
            CLI,
            &node.endpoint,
            &["model", "create", &format!("after-{i}")],
        );
        if run.status != 0 {
            let logs: Vec<String> = nodes
                .iter()
                .map(|n| format!("--- {}:\n{}", n.endpoint, n.stderr()))
                .collect();
            panic!(
                "a write through node {} failed: {}\n{}",
                i + 1,
                run.stderr,
                logs.join("\n")
            );
        }
    }
    // And all state digests agree once every node has applied everything.
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let mut seen = Vec::new();
        for node in &nodes {
            let status = clients(&node.endpoint)
                .await
                .admin
                .node_status(NodeStatusRequest {})
                .await
                .expect("node status")
                .into_inner();
            seen.push((status.last_applied_index, status.state_digest));
        }
        if seen.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(Instant::now() < deadline, "no agreement: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
