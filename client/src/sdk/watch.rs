//! The Watch service (decision 0024): every change a filter asks for, in commit order, with
//! revisions equal on every node. [`Client::watch`] is one stream from one node;
//! [`Watcher`] is a watch that outlives its node: it resumes after the last revision it
//! received, on the same node or another member, so that nothing is missed or repeated.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::Streaming;

use super::{Client, ClientError, MESSAGE_BYTES_MAX};
use crate::proto::watch_client::WatchClient;
use crate::proto::{WatchBatch, WatchRequest};

/// The longest pause between two rounds of reconnection attempts.
pub const WATCH_RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);
/// The first pause between rounds (doubled after each round that reached no node).
pub const WATCH_RETRY_PAUSE_MIN: Duration = Duration::from_millis(100);

impl Client {
    fn watch_service(&self) -> WatchClient<Channel> {
        WatchClient::new(self.channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// Opens a watch on this node. Its first batch has no events: its revision is where the
    /// watch starts.
    pub async fn watch(&self, request: WatchRequest) -> Result<Streaming<WatchBatch>, ClientError> {
        let request = self.request(request)?;
        Ok(self.watch_service().watch(request).await?.into_inner())
    }
}

/// What a [`Watcher`] hands its owner.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchItem {
    /// Events (possibly none: progress) up to `batch.revision`.
    Batch(WatchBatch),
    /// The events after the last revision received are no longer kept: re-read the state.
    /// The watcher goes on from the latest revision at its next call.
    Behind(String),
    /// The watch moved to another node (or the same one, restarted), resuming after the
    /// last revision received.
    Resumed { endpoint: String, after: u64 },
}

/// A watch that survives its node: on a broken stream it opens another, on the same node or
/// the next member, after the last revision received.
pub struct Watcher {
    /// The nodes to watch through, the preferred first.
    members: Vec<Client>,
    current: usize,
    filter: WatchRequest,
    /// The last revision received (`None`: none yet, start from now).
    after: Option<u64>,
    stream: Option<Streaming<WatchBatch>>,
    /// Whether a stream was open before the one being opened (a resumption, to report).
    opened_before: bool,
}

impl Watcher {
    /// A watch of `filter` (its `after_revision` is where to start; none: now) through
    /// `members`, the first preferred. Nothing is sent until [`Watcher::next`].
    pub fn new(members: Vec<Client>, filter: WatchRequest) -> Result<Watcher, ClientError> {
        if members.is_empty() {
            return Err(ClientError::InvalidInput(
                "a watcher needs at least one node to watch through".into(),
            ));
        }
        Ok(Watcher {
            members,
            current: 0,
            after: filter.after_revision,
            filter,
            stream: None,
            opened_before: false,
        })
    }

    /// The last revision received.
    pub fn revision(&self) -> Option<u64> {
        self.after
    }

    /// The next batch, resumption or word of having fallen behind. Refusals that no other node
    /// would answer differently (a bad filter, a missing credential or role) are returned as
    /// errors; a node that is down, restarting or shutting down is left for the next member.
    pub async fn next(&mut self) -> Result<WatchItem, ClientError> {
        let mut pause = WATCH_RETRY_PAUSE_MIN;
        let mut failed_in_round = 0;
        loop {
            if self.stream.is_none() {
                let client = &self.members[self.current];
                let request = WatchRequest {
                    after_revision: self.after,
                    ..self.filter.clone()
                };
                match client.watch(request).await {
                    Ok(stream) => {
                        self.stream = Some(stream);
                        failed_in_round = 0;
                        if self.opened_before {
                            if let Some(after) = self.after {
                                return Ok(WatchItem::Resumed {
                                    endpoint: client.endpoint().to_string(),
                                    after,
                                });
                            }
                        }
                        self.opened_before = true;
                    }
                    Err(e) if is_for_another_node(&e) => {
                        self.current = (self.current + 1) % self.members.len();
                        failed_in_round += 1;
                        if failed_in_round >= self.members.len() {
                            // No member answered this round: pause before the next.
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(WATCH_RETRY_PAUSE_MAX);
                            failed_in_round = 0;
                        }
                        continue;
                    }
                    Err(e) if e.code() == Some(tonic::Code::OutOfRange) => {
                        self.after = None;
                        return Ok(WatchItem::Behind(e.to_string()));
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            match stream.message().await {
                Ok(Some(batch)) => {
                    self.after = Some(batch.revision);
                    return Ok(WatchItem::Batch(batch));
                }
                Ok(None) => self.stream = None,
                Err(status) => {
                    self.stream = None;
                    let e = ClientError::from(status);
                    if e.code() == Some(tonic::Code::OutOfRange) {
                        self.after = None;
                        return Ok(WatchItem::Behind(e.to_string()));
                    }
                    if !is_for_another_node(&e) {
                        return Err(e);
                    }
                    self.current = (self.current + 1) % self.members.len();
                }
            }
        }
    }
}

/// Whether another node (or this one later) may answer where this one failed.
fn is_for_another_node(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::Internal
                | tonic::Code::DeadlineExceeded
        )
    )
}
