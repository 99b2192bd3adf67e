//! The Watch service (decision 0024): a server stream of the changes a filter asks for, read
//! from this node's applied state by `Node::watch_next`. A watch of one model (its alias, stage,
//! or an endpoint serving it) needs the reader role on its namespace; of everything,
//! cluster-wide.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use quiver_api::proto::{self, watch_server::Watch};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{watch_event_to_proto, watch_filter_from_proto};
use super::{caller_with, invalid};
use crate::access::Target;
use crate::auth::Role;
use crate::node::Node;
use crate::watch::{behind_message, WatchFilter, WatchRead};

/// How long a watch waits for a matching event before it sends an empty batch (progress: how
/// far the node has looked; and a sign of life to the watcher).
pub const WATCH_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// Batches a watch queues ahead of its client.
pub const WATCH_QUEUE_DEPTH: usize = 4;

pub struct WatchService {
    pub node: Arc<Node>,
    /// True once the server is shutting down: open watches end (`UNAVAILABLE`, resume
    /// elsewhere) so that the graceful shutdown does not wait for them.
    pub closing: watch::Receiver<bool>,
    /// A watcher that reads nothing for this long is let go (the API's download send timeout).
    pub send_timeout: Duration,
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchBatch, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let filter = watch_filter_from_proto(request.get_ref()).map_err(invalid)?;
        let action = match &filter {
            WatchFilter::All => "watch every change".to_string(),
            WatchFilter::Endpoint(e) => format!("watch endpoint {e}"),
            other => format!("watch model {}", other.model().unwrap_or_default()),
        };
        let endpoint_model = match &filter {
            WatchFilter::Endpoint(e) => Some(super::deploy::endpoint_model(&self.node, e).await?),
            _ => None,
        };
        let target = match filter.model().or(endpoint_model.as_deref()) {
            Some(model) => Target::Model(model),
            None => Target::Cluster,
        };
        caller_with(&self.node, &request, Role::Reader, target, &action).await?;
        let start = self
            .node
            .watch_start(&filter, request.get_ref().after_revision)
            .await?;
        let (tx, rx) = mpsc::channel(WATCH_QUEUE_DEPTH);
        tx.send(Ok(proto::WatchBatch {
            events: Vec::new(),
            revision: start,
        }))
        .await
        .map_err(|_| Status::cancelled("client went away"))?;
        let feed = Feed {
            node: self.node.clone(),
            filter,
            after: start,
            tx,
            closing: self.closing.clone(),
            send_timeout: self.send_timeout,
        };
        tokio::spawn(feed.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One watch's sending task.
struct Feed {
    node: Arc<Node>,
    filter: WatchFilter,
    after: u64,
    tx: mpsc::Sender<Result<proto::WatchBatch, Status>>,
    closing: watch::Receiver<bool>,
    send_timeout: Duration,
}

impl Feed {
    async fn run(mut self) {
        loop {
            let next = tokio::select! {
                next = self.node.watch_next(&self.filter, self.after, WATCH_PROGRESS_INTERVAL) => next,
                _ = self.closing.wait_for(|closing| *closing) => {
                    let message = format!(
                        "node {} is shutting down; resume the watch on another node after \
                         revision {}",
                        self.node.node_id(),
                        self.after
                    );
                    let _ = self.tx.try_send(Err(Status::unavailable(message)));
                    return;
                }
                () = self.tx.closed() => return,
            };
            let message = match next {
                Ok(WatchRead::Events { events, through }) => {
                    self.after = through;
                    Ok(proto::WatchBatch {
                        events: events.iter().map(watch_event_to_proto).collect(),
                        revision: through,
                    })
                }
                Ok(WatchRead::Behind {
                    oldest_kept,
                    latest,
                }) => Err(Status::out_of_range(behind_message(
                    self.after,
                    oldest_kept,
                    latest,
                ))),
                Err(e) => Err(Status::from(e)),
            };
            let last = message.is_err();
            match tokio::time::timeout(self.send_timeout, self.tx.send(message)).await {
                Ok(Ok(())) if !last => {}
                _ => return,
            }
        }
    }
}
