//! The Versions service: register a version by client-streaming upload,
//! download it by server streaming, get and list versions.
//!
//! Both directions stream through the node core: an upload feeds an
//! `ingest::Upload` as its messages arrive, a download sends what
//! `Node::download_chunks` reads; memory per transfer is bounded by their
//! short queues, whatever the artifact's size. This file only converts
//! between protobuf and those types.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use quiver_api::proto::{self, upload_message::Kind, versions_server::Versions};
use quiver_api::wire::manifest_to_proto;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{metadata_from_proto, optional_stage, signature_from_proto, version_to_proto};
use super::lineage::flag_quarantined;
use super::{caller, caller_with, consistency, invalid, parse_reference};
use crate::access::Target;
use crate::auth::Role;
use crate::domain;
use crate::download::{ChunkRead, ResumeRefused, DOWNLOAD_QUEUE_DEPTH};
use crate::ingest::{bad_upload, FileStart, UploadHeader};
use crate::node::{Consistency, Node};
use crate::server::{shown_duration, ApiLimits};

pub struct VersionsService {
    pub node: Arc<Node>,
    /// Its idle-upload and slow-download timeouts.
    pub limits: ApiLimits,
}

/// A version as the API shows it: with the aliases that point at it and the quarantines in
/// force upstream of it.
pub async fn version_view(
    node: &Node,
    v: &domain::Version,
    consistency: Consistency,
) -> Result<proto::ModelVersion, Status> {
    let (model, number) = (v.model.clone(), v.number);
    let (aliases, review) = node
        .read(consistency, move |app, txn| {
            Ok((
                app.aliases_of_model(txn, &model)?,
                app.open_review(txn, &model, number)?,
            ))
        })
        .await?;
    let names = aliases
        .into_iter()
        .filter(|a| a.version == v.number)
        .map(|a| a.alias)
        .collect();
    let mut view = version_to_proto(v, names);
    view.pending_review = review.as_ref().map(super::convert::review_to_proto);
    let mut shown = [view];
    flag_quarantined(node, &mut shown, consistency).await?;
    let [shown] = shown;
    Ok(shown)
}

/// The next message of an upload, or a refusal once the client has sent nothing for
/// `idle_timeout` ([`crate::server::UPLOAD_IDLE_TIMEOUT`] in production): a stalled client does
/// not hold its upload slot and buffers forever.
async fn next_message(
    stream: &mut Streaming<proto::UploadMessage>,
    idle_timeout: Duration,
) -> Result<Option<proto::UploadMessage>, Status> {
    match tokio::time::timeout(idle_timeout, stream.message()).await {
        Ok(message) => message,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "the upload sent nothing for {} and was abandoned; nothing was registered: send \
             again",
            shown_duration(idle_timeout)
        ))),
    }
}

#[tonic::async_trait]
impl Versions for VersionsService {
    async fn register_version(
        &self,
        request: Request<Streaming<proto::UploadMessage>>,
    ) -> Result<Response<proto::ModelVersion>, Status> {
        let actor = caller(&self.node, &request).await?;
        // Counted per principal: more connections do not buy more uploads.
        let client = format!("principal {}", actor.name);
        let _slot = self
            .node
            .uploads
            .acquire(self.node.node_id(), &client)
            .await?;
        let mut stream = request.into_inner();
        let idle_timeout = self.limits.upload_idle_timeout;
        let header = match next_message(&mut stream, idle_timeout).await? {
            Some(proto::UploadMessage {
                kind: Some(Kind::Header(h)),
            }) => h,
            _ => {
                return Err(Status::from(bad_upload(
                    "the stream must begin with an UploadHeader",
                )))
            }
        };
        let header = UploadHeader {
            model: header.model,
            signature: signature_from_proto(header.signature.as_ref()),
            metadata: metadata_from_proto(header.metadata.as_ref()),
            tags: header.tags.into_iter().collect(),
        };
        let action = format!("register a version of model {}", header.model);
        self.node
            .check_access(
                &actor,
                Role::Registrant,
                Target::Model(&header.model),
                &action,
            )
            .await?;
        let mut upload = self.node.begin_upload(header).await?;
        let mut commit = None;
        while let Some(message) = next_message(&mut stream, idle_timeout).await? {
            match message.kind {
                Some(Kind::File(start)) => {
                    let start = FileStart {
                        path: start.path,
                        size_bytes: start.size_bytes,
                        mode: start.mode,
                    };
                    upload.start_file(start).await?
                }
                Some(Kind::Data(data)) => upload.data(&data).await?,
                Some(Kind::Commit(c)) => {
                    commit = Some(c);
                    break;
                }
                Some(Kind::Header(_)) => {
                    return Err(Status::from(bad_upload("a second UploadHeader")))
                }
                None => return Err(Status::from(bad_upload("an empty UploadMessage"))),
            }
        }
        let commit = commit.ok_or_else(|| {
            Status::aborted("upload ended before its UploadCommit message; nothing was registered")
        })?;
        let v = upload
            .commit(&self.node, actor, Some(&commit.manifest_root))
            .await?;
        // A new version has no alias yet; it may already be downstream of a quarantine (this
        // node's view of it: a follower may not have applied the registration yet).
        let mut shown = [version_to_proto(&v, Vec::new())];
        flag_quarantined(&self.node, &mut shown, Consistency::Stale).await?;
        let [shown] = shown;
        Ok(Response::new(shown))
    }

    async fn get_version(
        &self,
        request: Request<proto::GetVersionRequest>,
    ) -> Result<Response<proto::ModelVersion>, Status> {
        let reference = parse_reference(&request.get_ref().reference)?;
        let action = format!("read versions of model {}", reference.model);
        caller_with(
            &self.node,
            &request,
            Role::Reader,
            Target::Model(&reference.model),
            &action,
        )
        .await?;
        let r = request.into_inner();
        let c = consistency(r.consistency);
        let v = self
            .node
            .read(c, |app, txn| app.resolve(txn, &reference))
            .await?;
        Ok(Response::new(
            version_view(&self.node, &v, Consistency::Stale).await?,
        ))
    }

    async fn list_versions(
        &self,
        request: Request<proto::ListVersionsRequest>,
    ) -> Result<Response<proto::ListVersionsResponse>, Status> {
        let action = format!("read versions of model {}", request.get_ref().model);
        let model = request.get_ref().model.clone();
        caller_with(
            &self.node,
            &request,
            Role::Reader,
            Target::Model(&model),
            &action,
        )
        .await?;
        let r = request.into_inner();
        let stage = optional_stage(r.stage).map_err(invalid)?;
        let (versions, aliases, next) = self
            .node
            .read(consistency(r.consistency), |app, txn| {
                let (versions, next) = app.list_versions(
                    txn,
                    &r.model,
                    stage,
                    &r.tag,
                    r.page_size as usize,
                    &r.page_token,
                )?;
                Ok((versions, app.aliases_of_model(txn, &r.model)?, next))
            })
            .await?;
        let mut versions: Vec<proto::ModelVersion> = versions
            .iter()
            .map(|v| {
                let names = aliases
                    .iter()
                    .filter(|a| a.version == v.number)
                    .map(|a| a.alias.clone())
                    .collect();
                version_to_proto(v, names)
            })
            .collect();
        flag_quarantined(&self.node, &mut versions, Consistency::Stale).await?;
        Ok(Response::new(proto::ListVersionsResponse {
            versions,
            next_page_token: next,
        }))
    }

    /// The messages the download's task queued, then, if the task abandoned the download, the
    /// status saying why.
    type DownloadVersionStream =
        Pin<Box<dyn Stream<Item = Result<proto::DownloadMessage, Status>> + Send>>;

    async fn download_version(
        &self,
        request: Request<proto::DownloadRequest>,
    ) -> Result<Response<Self::DownloadVersionStream>, Status> {
        let reference = parse_reference(&request.get_ref().reference)?;
        let (resume_from, resume_root) = (
            request.get_ref().resume_from_chunk,
            request.get_ref().resume_manifest_root.clone(),
        );
        let action = format!("download versions of model {}", reference.model);
        caller_with(
            &self.node,
            &request,
            Role::Reader,
            Target::Model(&reference.model),
            &action,
        )
        .await?;
        let mut plan = self.node.plan_download(&reference).await?;
        plan.resume_from(resume_from, &resume_root)
            .map_err(|refused| match refused {
                ResumeRefused::RootChanged { .. } => {
                    Status::failed_precondition(refused.to_string())
                }
                ResumeRefused::PastEnd { .. } => Status::invalid_argument(refused.to_string()),
            })?;
        let header = proto::DownloadMessage {
            kind: Some(proto::download_message::Kind::Header(
                proto::DownloadHeader {
                    version: Some(
                        version_view(&self.node, &plan.version, Consistency::Stale).await?,
                    ),
                    manifest: Some(manifest_to_proto(&plan.manifest)),
                },
            )),
        };
        let (tx, rx) = mpsc::channel(DOWNLOAD_QUEUE_DEPTH);
        tx.send(Ok(header))
            .await
            .map_err(|_| Status::cancelled("client went away"))?;
        let node_id = self.node.node_id();
        let subject = format!("{}/{}", plan.version.model, plan.version.number);
        let reads = self.node.download_chunks(&plan);
        let send_timeout = self.limits.download_send_timeout;
        let (abandon, abandoned) = oneshot::channel::<Status>();
        let sending = self.node.downloads.enter();
        tokio::spawn(async move {
            let _sending = sending;
            let mut reads = std::pin::pin!(reads);
            while let Some(read) = reads.next().await {
                let ChunkRead {
                    file_index,
                    chunk_index,
                    path,
                    chunk,
                    data,
                } = read;
                let message = match data {
                    Ok(data) => Ok(proto::DownloadMessage {
                        kind: Some(proto::download_message::Kind::Chunk(proto::ChunkData {
                            file_index: file_index as u32,
                            chunk_index: chunk_index as u32,
                            data,
                        })),
                    }),
                    Err(e) => {
                        tracing::error!(%subject, file = %path, chunk = %chunk.hash, "download failed: {e}");
                        Err(Status::data_loss(format!(
                            "download of {subject} failed: chunk {} (#{chunk_index} of file '{path}') on node {node_id}: {e}",
                            chunk.hash
                        )))
                    }
                };
                let failed = message.is_err();
                // A client that stops reading is let go after `send_timeout`
                // (DOWNLOAD_SEND_TIMEOUT in production), so that it does not hold chunk reads
                // and buffers forever.
                match tokio::time::timeout(send_timeout, tx.send(message)).await {
                    Ok(Ok(())) if !failed => {}
                    Ok(_) => return,
                    Err(_) => {
                        let why = format!(
                            "download of {subject} abandoned by node {node_id}: the client read \
                             nothing for {}; download it again",
                            shown_duration(send_timeout)
                        );
                        tracing::warn!(%subject, "{why}");
                        // Ends the stream with an error once the client has read what was
                        // queued, so that it cannot take a cut-short download for a whole one.
                        let _ = abandon.send(Status::deadline_exceeded(why));
                        return;
                    }
                }
            }
        });
        let ending =
            futures::stream::once(abandoned).filter_map(|why| async move { why.ok().map(Err) });
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).chain(ending),
        )))
    }
}
