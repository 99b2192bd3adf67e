//! The Rust SDK: one `Client` over one gRPC channel to a Quiver node.
//!
//! Methods are thin: one per RPC, taking the proto request where it has many
//! optional fields and plain arguments where it has a few. What the SDK adds
//! is what every caller would otherwise get wrong: the actor header on every
//! request, message limits, streaming uploads with bounded memory, and
//! downloads that verify every byte before it lands.

mod artifacts;
mod audit;
mod deploy;
mod download;
mod error;
mod governance;
mod lineage;
mod nearest;
mod tls;
mod upload;
mod watch;

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::proto::access_client::AccessClient;

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
pub use audit::ExportSummary;
pub use download::{DownloadSummary, DOWNLOAD_QUEUE_DEPTH, PARTIAL_SUFFIX};
pub use error::{code_name, error_chain, ClientError};
pub use nearest::{choose_nearest, Candidate, RTT_PROBE_TIMEOUT, RTT_SAMPLES};
pub use tls::{ClientTls, CA_ENV, CERT_ENV, KEY_ENV, LOCAL_CA_FILE, NODE_TLS_NAME};
pub use upload::{UploadFile, DATA_PIECE_BYTES, UPLOAD_QUEUE_DEPTH};
pub use watch::{WatchItem, Watcher, WATCH_RETRY_PAUSE_MAX, WATCH_RETRY_PAUSE_MIN};

/// Largest gRPC message sent or accepted, either way. A download chunk is at
/// most 16 MiB (`CHUNK_SIZE_BYTES_MAX`) plus framing, so 32 MiB leaves room.
pub const MESSAGE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Metadata key carrying a request's credentials: `Bearer <token>`.
pub const AUTHORIZATION_METADATA_KEY: &str = "authorization";

/// Environment variables naming the token requests carry: the token itself, or a file holding
/// it (the first line; `quiver-node up` writes `.quiver/admin.token`).
pub const TOKEN_ENV: &str = "QUIVER_TOKEN";
pub const TOKEN_FILE_ENV: &str = "QUIVER_TOKEN_FILE";
/// Where the CLI looks for a token when neither variable is set: the first admin's token of a
/// local cluster started with `quiver-node up` in this directory.
pub const LOCAL_TOKEN_FILE: &str = ".quiver/admin.token";

/// The token from `QUIVER_TOKEN`, else the file `QUIVER_TOKEN_FILE` names, else
/// `.quiver/admin.token` if it exists; `None` when there is none. A file that is named but
/// cannot be read is an error that says so.
pub fn token_from_env() -> Result<Option<String>, ClientError> {
    if let Ok(token) = std::env::var(TOKEN_ENV) {
        if !token.trim().is_empty() {
            return Ok(Some(token.trim().to_string()));
        }
    }
    let (path, named) = match std::env::var(TOKEN_FILE_ENV) {
        Ok(path) if !path.trim().is_empty() => (std::path::PathBuf::from(path.trim()), true),
        _ => (std::path::PathBuf::from(LOCAL_TOKEN_FILE), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.lines().next().map(|l| l.trim().to_string())),
        Err(e) if !named && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ClientError::InvalidInput(format!(
            "cannot read the token file {} ({TOKEN_FILE_ENV}): {e}",
            path.display()
        ))),
    }
}

/// A failed connection as the error that names its cause: a TLS failure (a certificate the
/// client does not trust, or one the node refused) apart from a node that is not there.
fn connect_error(endpoint: &str, secure: bool, detail: String) -> ClientError {
    let tls_failure = [
        "certificate",
        "UnknownIssuer",
        "CertificateRequired",
        "handshake",
    ]
    .iter()
    .any(|word| detail.contains(word));
    let endpoint = endpoint.to_string();
    match secure && tls_failure {
        true => ClientError::Untrusted { endpoint, detail },
        false => ClientError::Unavailable { endpoint, detail },
    }
}

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
    /// How `https://` endpoints are verified (kept for connections to other members).
    tls: ClientTls,
    /// Sent as `authorization: Bearer <token>` with every request.
    token: Option<String>,
}

impl Client {
    /// Connects to a node at `endpoint` (`https://127.0.0.1:7400`), trusting the CA the
    /// environment names ([`ClientTls::from_env`]). Requests carry no token until
    /// [`Client::with_token`].
    pub async fn connect(endpoint: &str) -> Result<Client, ClientError> {
        Client::connect_with(endpoint, ClientTls::from_env()?).await
    }

    /// Connects to a node at `endpoint` with `tls` for an `https://` endpoint (nodes serve
    /// nothing else; `http://` is for plaintext test servers).
    pub async fn connect_with(endpoint: &str, tls: ClientTls) -> Result<Client, ClientError> {
        let invalid = |detail: &str| {
            ClientError::InvalidInput(format!(
                "invalid endpoint '{endpoint}': {detail}; expected a URL such as \
                 https://127.0.0.1:7400"
            ))
        };
        let secure = endpoint.starts_with("https://");
        if !secure && !endpoint.starts_with("http://") {
            return Err(invalid("an endpoint starts with https://"));
        }
        let mut builder = Endpoint::from_shared(endpoint.to_string())
            .map_err(|error| invalid(&error_chain(&error)))?
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
        if secure {
            builder = builder
                .tls_config(tls.tonic_config(endpoint)?)
                .map_err(|error| invalid(&error_chain(&error)))?;
        }
        let channel = builder
            .connect()
            .await
            .map_err(|error| connect_error(endpoint, secure, error_chain(&error)))?;
        Ok(Client {
            endpoint: endpoint.to_string(),
            channel,
            tls,
            token: None,
        })
    }

    /// A connection to another node (`host:port`), with this client's TLS settings, scheme
    /// and token.
    pub async fn connect_to(&self, api_addr: &str) -> Result<Client, ClientError> {
        let scheme = match self.endpoint.starts_with("https://") {
            true => "https",
            false => "http",
        };
        Ok(
            Client::connect_with(&format!("{scheme}://{api_addr}"), self.tls.clone())
                .await?
                .with_token(self.token.clone()),
        )
    }

    /// A new connection to the same node, with the same settings and token (a clone shares
    /// this one's).
    pub async fn reconnect(&self) -> Result<Client, ClientError> {
        Ok(Client::connect_with(&self.endpoint, self.tls.clone())
            .await?
            .with_token(self.token.clone()))
    }

    /// Sends `token` (`qvr_…`, from `quiver token create`) with every later request; `None`:
    /// none.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    /// How this client verifies nodes (and what it presents to them).
    pub fn tls(&self) -> &ClientTls {
        &self.tls
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The token requests carry, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Wraps `message` with the authorization header, when the client has a token.
    fn request<T>(&self, message: T) -> Result<tonic::Request<T>, ClientError> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                ClientError::InvalidInput(
                    "the token holds characters a header cannot carry: it should look like \
                     qvr_<16 hex digits>_<32 hex digits>"
                        .into(),
                )
            })?;
            request
                .metadata_mut()
                .insert(AUTHORIZATION_METADATA_KEY, value);
        }
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

    /// One page of a catalog search (`SearchModelsRequest` says what is searched for).
    pub async fn search_models(
        &self,
        request: crate::proto::SearchModelsRequest,
    ) -> Result<crate::proto::SearchModelsResponse, ClientError> {
        let request = self.request(request)?;
        Ok(self.models().search_models(request).await?.into_inner())
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
        self.set_stage_overriding(reference, stage, reason, false)
            .await
    }

    /// [`Client::set_stage`]; with `override_signature`, an approver accepts a signature that
    /// breaks callers of the Production version (`reason` says why; both are recorded).
    pub async fn set_stage_overriding(
        &self,
        reference: &str,
        stage: Stage,
        reason: &str,
        override_signature: bool,
    ) -> Result<ModelVersion, ClientError> {
        let request = self.request(SetStageRequest {
            reference: normalize_reference(reference)?,
            stage: stage.into(),
            reason: reason.to_string(),
            override_signature,
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

    // ------------------------------------------------------------ access

    fn access(&self) -> AccessClient<Channel> {
        AccessClient::new(self.channel.clone())
    }

    pub async fn who_am_i(&self) -> Result<access::WhoAmIResponse, ClientError> {
        let request = self.request(access::WhoAmIRequest {})?;
        Ok(self.access().who_am_i(request).await?.into_inner())
    }

    /// A new token for `principal`, expiring after `expires_in_secs` (`None`: never). The
    /// response holds the whole token, once.
    pub async fn create_token(
        &self,
        principal: &str,
        description: &str,
        expires_in_secs: Option<u64>,
    ) -> Result<access::CreateTokenResponse, ClientError> {
        let request = self.request(access::CreateTokenRequest {
            principal: principal.to_string(),
            description: description.to_string(),
            expires_in_secs,
        })?;
        Ok(self.access().create_token(request).await?.into_inner())
    }

    /// Every token (`principal` empty), or one principal's.
    pub async fn list_tokens(&self, principal: &str) -> Result<Vec<access::Token>, ClientError> {
        let request = self.request(access::ListTokensRequest {
            principal: principal.to_string(),
        })?;
        Ok(self
            .access()
            .list_tokens(request)
            .await?
            .into_inner()
            .tokens)
    }

    pub async fn revoke_token(&self, id: &str) -> Result<access::Token, ClientError> {
        let request = self.request(access::RevokeTokenRequest { id: id.to_string() })?;
        Ok(self.access().revoke_token(request).await?.into_inner())
    }

    /// Grants `role` to `principal` in `scope` (a namespace, or `*` for the whole cluster).
    pub async fn grant_role(
        &self,
        principal: &str,
        scope: &str,
        role: &str,
    ) -> Result<access::RoleGrant, ClientError> {
        let request = self.request(access::GrantRoleRequest {
            principal: principal.to_string(),
            scope: scope.to_string(),
            role: role.to_string(),
        })?;
        Ok(self.access().grant_role(request).await?.into_inner())
    }

    pub async fn revoke_role(
        &self,
        principal: &str,
        scope: &str,
    ) -> Result<access::RoleGrant, ClientError> {
        let request = self.request(access::RevokeRoleRequest {
            principal: principal.to_string(),
            scope: scope.to_string(),
        })?;
        Ok(self.access().revoke_role(request).await?.into_inner())
    }

    /// Every grant (`principal` empty), or one principal's.
    pub async fn list_roles(&self, principal: &str) -> Result<Vec<access::RoleGrant>, ClientError> {
        let request = self.request(access::ListRolesRequest {
            principal: principal.to_string(),
        })?;
        Ok(self.access().list_roles(request).await?.into_inner().grants)
    }
}

/// The Access service's messages, as the SDK's access methods take and return them.
pub mod access {
    pub use crate::proto::{
        CreateTokenRequest, CreateTokenResponse, GrantRoleRequest, ListRolesRequest,
        ListTokensRequest, RevokeRoleRequest, RevokeTokenRequest, RoleGrant, Token, WhoAmIRequest,
        WhoAmIResponse,
    };
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

    #[test]
    fn a_certificate_failure_is_told_apart_from_an_absent_node() {
        let untrusted = connect_error(
            "https://n:1",
            true,
            "transport error: invalid peer certificate: UnknownIssuer".into(),
        );
        assert!(matches!(untrusted, ClientError::Untrusted { .. }));
        assert!(untrusted.to_string().contains("QUIVER_CA"), "{untrusted}");
        let absent = connect_error("https://n:1", true, "connection refused".into());
        assert!(matches!(absent, ClientError::Unavailable { .. }));
        assert_eq!(untrusted.code(), Some(tonic::Code::Unavailable));
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
