//! A tiny in-memory node for the SDK's tests: real gRPC over loopback, the
//! upload protocol checked as the real node must check it (root in the
//! commit), and a switch to corrupt downloads. It is not a model of the node's
//! rules: models, aliases and references are only what the tests need.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use quiver_transfer::{Chunker, FileEntry, Manifest};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::{self, *};
use crate::sdk::{AUTHORIZATION_METADATA_KEY, MESSAGE_BYTES_MAX};
use crate::{Reference, VersionSelector};

/// A registered version, its manifest, and each file's bytes.
pub(crate) type StoredVersion = (ModelVersion, Manifest, Vec<Vec<u8>>);

#[derive(Default)]
pub(crate) struct FakeState {
    pub models: BTreeMap<String, Model>,
    /// Keyed by (model, number).
    pub versions: BTreeMap<(String, u64), StoredVersion>,
    pub aliases: BTreeMap<(String, String), u64>,
    /// The actor header of every request, in arrival order.
    pub actors: Vec<String>,
    /// Flip one byte of the first chunk of every download.
    pub corrupt_downloads: bool,
    /// End every download with an `UNAVAILABLE` error after this many chunks.
    pub cut_downloads_after: Option<usize>,
    /// Every download's (resume_from_chunk, resume_manifest_root), in arrival order.
    pub download_requests: Vec<(u64, String)>,
    /// Chunks sent by every download so far.
    pub chunks_sent: usize,
}

pub(crate) struct FakeNode {
    pub endpoint: String,
    pub state: Arc<Mutex<FakeState>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

/// Starts a fake node on a free loopback port; it stops when dropped.
pub(crate) async fn start() -> FakeNode {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(Mutex::new(FakeState::default()));
    let service = Fake(Arc::clone(&state));
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(
                models_server::ModelsServer::new(service.clone())
                    .max_decoding_message_size(MESSAGE_BYTES_MAX),
            )
            .add_service(
                versions_server::VersionsServer::new(service.clone())
                    .max_decoding_message_size(MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(MESSAGE_BYTES_MAX),
            )
            .add_service(lifecycle_server::LifecycleServer::new(service.clone()))
            .add_service(admin_server::AdminServer::new(service))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    FakeNode {
        endpoint,
        state,
        _shutdown: shutdown,
    }
}

#[derive(Clone)]
struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    fn actor<T>(&self, request: &Request<T>) -> String {
        let actor = request
            .metadata()
            .get(AUTHORIZATION_METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_string();
        self.0.lock().unwrap().actors.push(actor.clone());
        actor
    }

    fn resolve(&self, reference: &str) -> Result<(String, u64), Status> {
        let parsed: Reference = reference
            .parse()
            .map_err(|e: crate::ParseRefError| Status::invalid_argument(e.to_string()))?;
        let state = self.0.lock().unwrap();
        let number = match parsed.selector {
            VersionSelector::Number(number) => number,
            VersionSelector::Alias(alias) => *state
                .aliases
                .get(&(parsed.model.clone(), alias.clone()))
                .ok_or_else(|| Status::not_found(format!("alias '{alias}' does not exist")))?,
            VersionSelector::Stage(_) => return Err(Status::unimplemented("stage references")),
        };
        if !state.versions.contains_key(&(parsed.model.clone(), number)) {
            return Err(Status::not_found(format!(
                "version {reference} does not exist"
            )));
        }
        Ok((parsed.model, number))
    }
}

type DownloadStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<DownloadMessage, Status>> + Send>>;

#[tonic::async_trait]
impl models_server::Models for Fake {
    async fn create_model(
        &self,
        request: Request<CreateModelRequest>,
    ) -> Result<Response<Model>, Status> {
        let actor = self.actor(&request);
        let request = request.into_inner();
        let mut state = self.0.lock().unwrap();
        if state.models.contains_key(&request.name) {
            return Err(Status::already_exists(format!(
                "model '{}' already exists",
                request.name
            )));
        }
        let model = Model {
            name: request.name.clone(),
            namespace: request.namespace,
            description: request.description,
            risk_tier: request.risk_tier,
            tags: request.tags,
            created_by: actor,
            ..Default::default()
        };
        state.models.insert(request.name, model.clone());
        Ok(Response::new(model))
    }

    async fn get_model(
        &self,
        request: Request<GetModelRequest>,
    ) -> Result<Response<Model>, Status> {
        self.actor(&request);
        let name = request.into_inner().name;
        let state = self.0.lock().unwrap();
        state
            .models
            .get(&name)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("model '{name}' does not exist")))
    }

    /// Pages of one model each, to exercise page tokens.
    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        self.actor(&request);
        let request = request.into_inner();
        let state = self.0.lock().unwrap();
        let mut rest = state
            .models
            .values()
            .filter(|m| m.name.starts_with(&request.name_prefix))
            .filter(|m| request.page_token.is_empty() || m.name > request.page_token);
        let models: Vec<Model> = rest.next().into_iter().cloned().collect();
        let next_page_token = match (rest.next(), models.first()) {
            (Some(_), Some(last)) => last.name.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListModelsResponse {
            models,
            next_page_token,
        }))
    }

    async fn update_model(
        &self,
        _request: Request<UpdateModelRequest>,
    ) -> Result<Response<Model>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn search_models(
        &self,
        _request: Request<proto::SearchModelsRequest>,
    ) -> Result<Response<proto::SearchModelsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

#[tonic::async_trait]
impl versions_server::Versions for Fake {
    async fn register_version(
        &self,
        request: Request<Streaming<UploadMessage>>,
    ) -> Result<Response<ModelVersion>, Status> {
        use proto::upload_message::Kind;
        let actor = self.actor(&request);
        let mut stream = request.into_inner();
        let Some(Kind::Header(header)) = stream.message().await?.and_then(|m| m.kind) else {
            return Err(Status::invalid_argument("upload must start with a header"));
        };
        if !self.0.lock().unwrap().models.contains_key(&header.model) {
            return Err(Status::not_found(format!(
                "model '{}' does not exist",
                header.model
            )));
        }
        let mut entries: Vec<FileEntry> = Vec::new();
        let mut contents: Vec<Vec<u8>> = Vec::new();
        let commit = loop {
            match stream.message().await?.and_then(|m| m.kind) {
                Some(Kind::File(start)) => {
                    entries.push(FileEntry {
                        path: start.path,
                        size_bytes: start.size_bytes,
                        mode: start.mode,
                        chunks: Vec::new(),
                    });
                    contents.push(Vec::new());
                }
                Some(Kind::Data(data)) => match contents.last_mut() {
                    Some(bytes) => bytes.extend_from_slice(&data),
                    None => return Err(Status::invalid_argument("data before a file")),
                },
                Some(Kind::Commit(commit)) => break commit,
                Some(Kind::Header(_)) => return Err(Status::invalid_argument("second header")),
                None => return Err(Status::invalid_argument("upload ended without a commit")),
            }
        };
        for (entry, bytes) in entries.iter_mut().zip(&contents) {
            if bytes.len() as u64 != entry.size_bytes {
                return Err(Status::invalid_argument(format!(
                    "file '{}' size mismatch",
                    entry.path
                )));
            }
            let mut chunker = Chunker::new();
            let mut chunks = Vec::new();
            let Ok(()) = chunker.push(bytes, |c, _| {
                chunks.push(c);
                Ok::<(), Infallible>(())
            });
            let Ok(()) = chunker.finish(|c, _| {
                chunks.push(c);
                Ok::<(), Infallible>(())
            });
            entry.chunks = chunks;
        }
        let manifest = Manifest { files: entries };
        manifest
            .validate()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if manifest.root().to_hex() != commit.manifest_root {
            return Err(Status::invalid_argument("manifest root mismatch"));
        }
        let mut state = self.0.lock().unwrap();
        let model = state.models.get_mut(&header.model).unwrap();
        model.version_count += 1;
        model.latest_version = model.version_count;
        let version = ModelVersion {
            model: header.model.clone(),
            version: model.version_count,
            manifest_root: commit.manifest_root,
            files: manifest
                .files
                .iter()
                .map(|f| FileInfo {
                    path: f.path.clone(),
                    size_bytes: f.size_bytes,
                    mode: f.mode,
                    chunk_count: f.chunks.len() as u32,
                })
                .collect(),
            total_size_bytes: manifest.total_size_bytes(),
            signature: header.signature,
            metadata: header.metadata,
            tags: header.tags,
            stage: Stage::Experimental.into(),
            status: VersionStatus::Ready.into(),
            created_by: actor,
            ..Default::default()
        };
        state.versions.insert(
            (version.model.clone(), version.version),
            (version.clone(), manifest, contents),
        );
        Ok(Response::new(version))
    }

    async fn get_version(
        &self,
        request: Request<GetVersionRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        self.actor(&request);
        let key = self.resolve(&request.into_inner().reference)?;
        Ok(Response::new(
            self.0.lock().unwrap().versions[&key].0.clone(),
        ))
    }

    async fn list_versions(
        &self,
        _request: Request<ListVersionsRequest>,
    ) -> Result<Response<ListVersionsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type DownloadVersionStream = DownloadStream;

    async fn download_version(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<DownloadStream>, Status> {
        use proto::download_message::Kind;
        self.actor(&request);
        let request = request.into_inner();
        let key = self.resolve(&request.reference)?;
        let mut state = self.0.lock().unwrap();
        state.download_requests.push((
            request.resume_from_chunk,
            request.resume_manifest_root.clone(),
        ));
        let (version, manifest, contents) = state.versions[&key].clone();
        if request.resume_from_chunk > 0 && request.resume_manifest_root != version.manifest_root {
            return Err(Status::failed_precondition("the version's files changed"));
        }
        let wire = crate::wire::manifest_to_proto(&manifest);
        let mut messages = vec![Ok(DownloadMessage {
            kind: Some(Kind::Header(DownloadHeader {
                version: Some(version.clone()),
                manifest: Some(wire),
            })),
        })];
        let mut ordinal = 0u64;
        for (file_index, (file, bytes)) in manifest.files.iter().zip(&contents).enumerate() {
            let mut offset = 0usize;
            for (chunk_index, chunk) in file.chunks.iter().enumerate() {
                let end = offset + chunk.size_bytes as usize;
                let mut data = bytes[offset..end].to_vec();
                offset = end;
                ordinal += 1;
                if ordinal <= request.resume_from_chunk {
                    continue;
                }
                if state.corrupt_downloads && messages.len() == 1 {
                    data[0] ^= 0xff;
                }
                if state.cut_downloads_after == Some(messages.len() - 1) {
                    messages.push(Err(Status::unavailable("connection cut (test switch)")));
                    return Ok(Response::new(Box::pin(tokio_stream::iter(messages))));
                }
                state.chunks_sent += 1;
                messages.push(Ok(DownloadMessage {
                    kind: Some(Kind::Chunk(ChunkData {
                        file_index: file_index as u32,
                        chunk_index: chunk_index as u32,
                        data,
                    })),
                }));
            }
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }
}

#[tonic::async_trait]
impl lifecycle_server::Lifecycle for Fake {
    async fn set_stage(
        &self,
        _request: Request<SetStageRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn set_alias(
        &self,
        request: Request<SetAliasRequest>,
    ) -> Result<Response<Alias>, Status> {
        let actor = self.actor(&request);
        let request = request.into_inner();
        self.resolve(&format!("{}/{}", request.model, request.version))?;
        self.0.lock().unwrap().aliases.insert(
            (request.model.clone(), request.alias.clone()),
            request.version,
        );
        Ok(Response::new(Alias {
            model: request.model,
            alias: request.alias,
            version: request.version,
            updated_by: actor,
            ..Default::default()
        }))
    }

    async fn get_alias(
        &self,
        request: Request<GetAliasRequest>,
    ) -> Result<Response<Alias>, Status> {
        self.actor(&request);
        let request = request.into_inner();
        let state = self.0.lock().unwrap();
        let version = state
            .aliases
            .get(&(request.model.clone(), request.alias.clone()))
            .copied()
            .ok_or_else(|| {
                Status::not_found(format!("alias '{}' does not exist", request.alias))
            })?;
        Ok(Response::new(Alias {
            model: request.model,
            alias: request.alias,
            version,
            ..Default::default()
        }))
    }

    async fn delete_alias(
        &self,
        _request: Request<DeleteAliasRequest>,
    ) -> Result<Response<Alias>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn set_version_tags(
        &self,
        _request: Request<SetVersionTagsRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

#[tonic::async_trait]
impl admin_server::Admin for Fake {
    async fn node_status(
        &self,
        request: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        self.actor(&request);
        Ok(Response::new(NodeStatusResponse {
            node_id: 1,
            leader_id: Some(1),
            state: "leader".into(),
            ..Default::default()
        }))
    }

    async fn cluster_status(
        &self,
        _request: Request<proto::ClusterStatusRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        Err(Status::unimplemented("the fake node has no cluster"))
    }

    async fn remove_node(
        &self,
        _request: Request<proto::RemoveNodeRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        Err(Status::unimplemented("the fake node has no cluster"))
    }

    async fn step_down(
        &self,
        _request: Request<proto::StepDownRequest>,
    ) -> Result<Response<proto::StepDownResponse>, Status> {
        Err(Status::unimplemented("the fake node has no cluster"))
    }

    async fn crash(
        &self,
        _request: Request<proto::CrashRequest>,
    ) -> Result<Response<proto::CrashResponse>, Status> {
        Err(Status::unimplemented("the fake node has no cluster"))
    }
}
