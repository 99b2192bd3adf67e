//! The Rust SDK: one `Client` over one gRPC channel to a Quiver node.
//!
//! Methods are thin: one per RPC, taking the proto request where it has many
//! optional fields and plain arguments where it has a few. What the SDK adds
//! is what every caller would otherwise get wrong: the actor header on every
//! request, message limits, streaming uploads with bounded memory, and
//! downloads that verify every byte before it lands.

mod artifacts;
mod download;
mod error;
mod nearest;
mod upload;

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::proto::{
    admin_client::AdminClient, lifecycle_client::LifecycleClient, models_client::ModelsClient,
    versions_client::VersionsClient,
};
use crate::proto::{
    Alias, ClusterStatusRequest, ClusterStatusResponse, CreateModelRequest, DeleteAliasRequest,
    GetAliasRequest, GetModelRequest, GetVersionRequest, ListModelsRequest, ListModelsResponse,
    ListVersionsRequest, ListVersionsResponse, Model, ModelVersion, NodeStatusRequest,
    NodeStatusResponse, ReadConsistency, RemoveNodeRequest, SetAliasRequest, SetStageRequest,
    SetVersionTagsRequest, Signature, Stage, StepDownRequest, StepDownResponse, UpdateModelRequest,
    VersionMetadata,
};
use crate::Reference;

pub use artifacts::{collect_artifacts, ArtifactFile, ARTIFACT_DEPTH_MAX, ARTIFACT_FILES_MAX};
pub use download::{DownloadSummary, DOWNLOAD_QUEUE_DEPTH, PARTIAL_SUFFIX};
pub use error::{code_name, error_chain, ClientError};
pub use nearest::{choose_nearest, Candidate, RTT_PROBE_TIMEOUT, RTT_SAMPLES};
pub use upload::{UploadFile, DATA_PIECE_BYTES, UPLOAD_QUEUE_DEPTH};

/// Largest gRPC message sent or accepted, either way. A download chunk is at
/// most 16 MiB (`CHUNK_SIZE_BYTES_MAX`) plus framing, so 32 MiB leaves room.
pub const MESSAGE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Metadata key naming who performs a request.
pub const ACTOR_METADATA_KEY: &str = "x-quiver-actor";

/// How long to wait for the TCP connection to a node.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// HTTP/2 flow-control windows. The defaults (64 KiB) cap a single large
/// download far below loopback speed.
const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// Page size asked for when following page tokens.
pub const LIST_PAGE_SIZE: u32 = 500;

/// Most pages followed by one `list_all_*` call; a node that keeps returning
/// tokens beyond that is misbehaving.
pub const LIST_PAGES_MAX: usize = 10_000;

/// The name requests are attributed to when none is set: QUIVER_USER, else
/// USER, else LOGNAME, else the OS account name, else "unknown".
pub fn actor_from_env() -> String {
    ["QUIVER_USER", "USER", "LOGNAME"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|value| !value.trim().is_empty())
        .or_else(|| whoami::fallible::username().ok())
        .unwrap_or_else(|| "unknown".to_string())
}

/// What a registration carries besides its files.
#[derive(Clone, Debug, Default)]
pub struct RegisterOptions {
    pub signature: Option<Signature>,
    pub metadata: VersionMetadata,
    pub tags: BTreeMap<String, String>,
}

/// A connection to one node. Cloning is cheap and shares the connection.
#[derive(Clone, Debug)]
pub struct Client {
    endpoint: String,
    channel: Channel,
    actor: String,
}

impl Client {
    /// Connects to a node at `endpoint` (`http://127.0.0.1:7400`). Requests
    /// are attributed to [`actor_from_env`] until [`Client::with_actor`].
    pub async fn connect(endpoint: &str) -> Result<Client, ClientError> {
        let invalid = |detail: &str| {
            ClientError::InvalidInput(format!(
                "invalid endpoint '{endpoint}': {detail}; expected a URL such as \
                 http://127.0.0.1:7400"
            ))
        };
        if !endpoint.starts_with("http://") {
            return Err(invalid("only http:// endpoints are supported"));
        }
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|error| invalid(&error_chain(&error)))?
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .connect()
            .await
            .map_err(|error| ClientError::Unavailable {
                endpoint: endpoint.to_string(),
                detail: error_chain(&error),
            })?;
        Ok(Client {
            endpoint: endpoint.to_string(),
            channel,
            actor: actor_from_env(),
        })
    }

    /// Attributes every later request to `name`.
    pub fn with_actor(mut self, name: impl Into<String>) -> Client {
        self.actor = name.into();
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    fn actor_value(&self) -> Result<MetadataValue<Ascii>, ClientError> {
        let invalid = || {
            ClientError::InvalidInput(format!(
                "actor name {:?} must be non-empty printable ASCII; set QUIVER_USER or --user",
                self.actor
            ))
        };
        if self.actor.is_empty()
            || !self
                .actor
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(invalid());
        }
        MetadataValue::try_from(self.actor.as_str()).map_err(|_| invalid())
    }

    /// Wraps `message` with the actor header.
    fn request<T>(&self, message: T) -> Result<tonic::Request<T>, ClientError> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert(ACTOR_METADATA_KEY, self.actor_value()?);
        Ok(request)
    }

    fn models(&self) -> ModelsClient<Channel> {
        ModelsClient::new(self.channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    fn versions(&self) -> VersionsClient<Channel> {
        VersionsClient::new(self.channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    fn lifecycle(&self) -> LifecycleClient<Channel> {
        LifecycleClient::new(self.channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    // ------------------------------------------------------------ models

    pub async fn create_model(&self, request: CreateModelRequest) -> Result<Model, ClientError> {
        let request = self.request(request)?;
        Ok(self.models().create_model(request).await?.into_inner())
    }

    pub async fn get_model(
        &self,
        name: &str,
        consistency: ReadConsistency,
    ) -> Result<Model, ClientError> {
        let request = self.request(GetModelRequest {
            name: name.to_string(),
            consistency: consistency.into(),
        })?;
        Ok(self.models().get_model(request).await?.into_inner())
    }

    /// One page of models.
    pub async fn list_models(
        &self,
        request: ListModelsRequest,
    ) -> Result<ListModelsResponse, ClientError> {
        let request = self.request(request)?;
        Ok(self.models().list_models(request).await?.into_inner())
    }

    /// Every model matching `name_prefix` and `tag` (either may be empty),
    /// following page tokens.
    pub async fn list_all_models(
        &self,
        name_prefix: &str,
        tag: &str,
        consistency: ReadConsistency,
    ) -> Result<Vec<Model>, ClientError> {
        let mut models = Vec::new();
        let mut page_token = String::new();
        for _ in 0..LIST_PAGES_MAX {
            let page = self
                .list_models(ListModelsRequest {
                    name_prefix: name_prefix.to_string(),
                    tag: tag.to_string(),
                    page_size: LIST_PAGE_SIZE,
                    page_token: page_token.clone(),
                    consistency: consistency.into(),
                })
                .await?;
            models.extend(page.models);
            if page.next_page_token.is_empty() {
                return Ok(models);
            }
            check_token_advances(&page_token, &page.next_page_token)?;
            page_token = page.next_page_token;
        }
        Err(too_many_pages())
    }

    pub async fn update_model(&self, request: UpdateModelRequest) -> Result<Model, ClientError> {
        let request = self.request(request)?;
        Ok(self.models().update_model(request).await?.into_inner())
    }

    // ---------------------------------------------------------- versions

    /// One version by reference: `name/3`, `name@alias` or `name:stage`.
    pub async fn get_version(
        &self,
        reference: &str,
        consistency: ReadConsistency,
    ) -> Result<ModelVersion, ClientError> {
        let request = self.request(GetVersionRequest {
            reference: normalize_reference(reference)?,
            consistency: consistency.into(),
        })?;
        Ok(self.versions().get_version(request).await?.into_inner())
    }

    /// One page of a model's versions.
    pub async fn list_versions(
        &self,
        request: ListVersionsRequest,
    ) -> Result<ListVersionsResponse, ClientError> {
        let request = self.request(request)?;
        Ok(self.versions().list_versions(request).await?.into_inner())
    }

    /// Every version of `model` in `stage` (`Stage::Unspecified` for any)
    /// carrying `tag` (empty for any), following page tokens.
    pub async fn list_all_versions(
        &self,
        model: &str,
        stage: Stage,
        tag: &str,
        consistency: ReadConsistency,
    ) -> Result<Vec<ModelVersion>, ClientError> {
        let mut versions = Vec::new();
        let mut page_token = String::new();
        for _ in 0..LIST_PAGES_MAX {
            let page = self
                .list_versions(ListVersionsRequest {
                    model: model.to_string(),
                    stage: stage.into(),
                    tag: tag.to_string(),
                    page_size: LIST_PAGE_SIZE,
                    page_token: page_token.clone(),
                    consistency: consistency.into(),
                })
                .await?;
            versions.extend(page.versions);
            if page.next_page_token.is_empty() {
                return Ok(versions);
            }
            check_token_advances(&page_token, &page.next_page_token)?;
            page_token = page.next_page_token;
        }
        Err(too_many_pages())
    }

    // --------------------------------------------------------- lifecycle

    pub async fn set_stage(
        &self,
        reference: &str,
        stage: Stage,
        reason: &str,
    ) -> Result<ModelVersion, ClientError> {
        let request = self.request(SetStageRequest {
            reference: normalize_reference(reference)?,
            stage: stage.into(),
            reason: reason.to_string(),
        })?;
        Ok(self.lifecycle().set_stage(request).await?.into_inner())
    }

    pub async fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: u64,
    ) -> Result<Alias, ClientError> {
        let request = self.request(SetAliasRequest {
            model: model.to_string(),
            alias: alias.to_string(),
            version,
        })?;
        Ok(self.lifecycle().set_alias(request).await?.into_inner())
    }

    pub async fn get_alias(
        &self,
        model: &str,
        alias: &str,
        consistency: ReadConsistency,
    ) -> Result<Alias, ClientError> {
        let request = self.request(GetAliasRequest {
            model: model.to_string(),
            alias: alias.to_string(),
            consistency: consistency.into(),
        })?;
        Ok(self.lifecycle().get_alias(request).await?.into_inner())
    }

    pub async fn delete_alias(&self, model: &str, alias: &str) -> Result<Alias, ClientError> {
        let request = self.request(DeleteAliasRequest {
            model: model.to_string(),
            alias: alias.to_string(),
        })?;
        Ok(self.lifecycle().delete_alias(request).await?.into_inner())
    }

    pub async fn set_version_tags(
        &self,
        mut request: SetVersionTagsRequest,
    ) -> Result<ModelVersion, ClientError> {
        request.reference = normalize_reference(&request.reference)?;
        let request = self.request(request)?;
        Ok(self
            .lifecycle()
            .set_version_tags(request)
            .await?
            .into_inner())
    }

    // ------------------------------------------------------------- admin

    pub async fn node_status(&self) -> Result<NodeStatusResponse, ClientError> {
        let request = self.request(NodeStatusRequest {})?;
        Ok(self.admin().node_status(request).await?.into_inner())
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, ClientError> {
        let request = self.request(ClusterStatusRequest {})?;
        Ok(self.admin().cluster_status(request).await?.into_inner())
    }

    pub async fn remove_node(&self, node_id: u64) -> Result<ClusterStatusResponse, ClientError> {
        let request = self.request(RemoveNodeRequest { node_id })?;
        Ok(self.admin().remove_node(request).await?.into_inner())
    }

    /// Asks the node to die at once (drills; refused unless the node allows it).
    pub async fn crash(&self) -> Result<(), ClientError> {
        let request = self.request(crate::proto::CrashRequest {})?;
        self.admin().crash(request).await?;
        Ok(())
    }

    pub async fn step_down(&self) -> Result<StepDownResponse, ClientError> {
        let request = self.request(StepDownRequest {})?;
        Ok(self.admin().step_down(request).await?.into_inner())
    }
}

/// Parses a reference locally so a typo is reported before a round trip,
/// and sends it in its one canonical spelling.
fn normalize_reference(text: &str) -> Result<String, ClientError> {
    text.parse::<Reference>()
        .map(|reference| reference.to_string())
        .map_err(|error| ClientError::InvalidInput(error.to_string()))
}

fn check_token_advances(previous: &str, next: &str) -> Result<(), ClientError> {
    if previous == next {
        return Err(ClientError::Verify(format!(
            "the node returned the same page token {next:?} twice; listing stopped"
        )));
    }
    Ok(())
}

fn too_many_pages() -> ClientError {
    ClientError::Verify(format!(
        "listing stopped after {LIST_PAGES_MAX} pages; narrow it with a prefix or tag"
    ))
}

/// A blocking helper task died: re-raise its panic, it is a bug here.
fn join_error(error: tokio::task::JoinError) -> ClientError {
    match error.try_into_panic() {
        Ok(panic) => std::panic::resume_unwind(panic),
        Err(error) => ClientError::Io {
            context: "background file task was cancelled".into(),
            source: std::io::Error::other(error.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_checked_and_normalized_before_sending() {
        assert_eq!(normalize_reference("m:Production").unwrap(), "m:production");
        let error = normalize_reference("m").unwrap_err();
        assert!(matches!(error, ClientError::InvalidInput(_)));
        assert!(
            error.to_string().contains("expected MODEL/NUMBER"),
            "{error}"
        );
    }

    #[test]
    fn a_repeated_page_token_stops_listing() {
        assert!(check_token_advances("", "a").is_ok());
        assert!(check_token_advances("a", "a").is_err());
    }

    #[tokio::test]
    async fn connecting_to_a_closed_port_names_the_endpoint_and_the_fix() {
        // Bind then drop: the port is free and nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let error = Client::connect(&endpoint).await.unwrap_err();
        assert!(
            matches!(error, ClientError::Unavailable { .. }),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(text.contains(&endpoint), "{text}");
        assert!(text.contains("quiver-node up"), "{text}");
    }

    #[tokio::test]
    async fn malformed_endpoints_are_invalid_input() {
        for endpoint in ["127.0.0.1:7400", "https://x:1", "http://bad host:1"] {
            let error = Client::connect(endpoint).await.unwrap_err();
            assert!(
                matches!(error, ClientError::InvalidInput(_)),
                "{endpoint}: {error:?}"
            );
            assert!(error.to_string().contains(endpoint), "{error}");
        }
    }
}

#[cfg(test)]
mod roundtrip_tests;
