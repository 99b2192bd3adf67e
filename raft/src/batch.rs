//! Group commit of client writes: concurrent commands share one Raft entry.
//!
//! openraft 0.9's core appends one entry per client write and waits for that append to be
//! flushed before it looks at the next request, so N concurrent writes cost N log fsyncs one
//! after another on the leader (and N replication rounds and N apply transactions). The
//! [`Batcher`] sits in front of `Raft::client_write`: commands queue here while a batch is in
//! flight, and the next batch takes everything queued (up to [`WRITE_BATCH_MAX`]) as ONE entry,
//! whose payload is the list of commands. The state machine applies them in order in one
//! transaction and answers with one response per command. A lone write is a batch of one: its
//! latency is unchanged.
//!
//! At most [`BATCHES_IN_FLIGHT_MAX`] batches are in flight, so the next batch is appended while
//! the previous one replicates and applies, but commands still accumulate behind them.
//! Every batch member gets the batch's outcome: a leader change answers each with
//! `NotLeader` (its caller retries at the new leader), a fatal error answers each with it.

use futures::stream::{FuturesUnordered, StreamExt};
use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;
use tokio::sync::{mpsc, oneshot};

use crate::rpc::WriteError;
use crate::{App, TypeConfig};

/// Most commands in one Raft entry.
pub const WRITE_BATCH_MAX: usize = 256;
/// Batches proposed and not yet answered, at most.
pub const BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Commands waiting for a batch, at most; a writer beyond it waits (within its deadline).
pub const WRITE_QUEUE_MAX: usize = 4_096;

/// One command waiting for its batch, and where its answer goes.
pub(crate) struct Proposal<A: App> {
    pub(crate) cmd: A::Command,
    pub(crate) reply: oneshot::Sender<Result<A::Response, WriteError>>,
}

/// The sending side; the batching task ends when every `Batcher` is dropped.
pub(crate) struct Batcher<A: App> {
    tx: mpsc::Sender<Proposal<A>>,
}

impl<A: App> Batcher<A> {
    /// Starts the batching task for `raft` on the current runtime.
    pub(crate) fn start(raft: Raft<TypeConfig<A>>) -> Self {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_MAX);
        tokio::spawn(run(raft, rx));
        Batcher { tx }
    }

    /// Queues `cmd`; the receiver yields its answer once its batch is applied (or failed).
    pub(crate) async fn submit(
        &self,
        cmd: A::Command,
    ) -> Result<oneshot::Receiver<Result<A::Response, WriteError>>, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Proposal { cmd, reply })
            .await
            .map_err(|_| WriteError::Fatal("the raft node has stopped".into()))?;
        Ok(answer)
    }
}

async fn run<A: App>(raft: Raft<TypeConfig<A>>, mut rx: mpsc::Receiver<Proposal<A>>) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            proposal = rx.recv(), if open && in_flight.len() < BATCHES_IN_FLIGHT_MAX => {
                let Some(first) = proposal else {
                    open = false;
                    continue;
                };
                let mut batch = vec![first];
                while batch.len() < WRITE_BATCH_MAX {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                in_flight.push(propose(raft.clone(), batch));
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            else => break,
        }
    }
}

/// Proposes one batch as one entry and answers each member.
async fn propose<A: App>(raft: Raft<TypeConfig<A>>, batch: Vec<Proposal<A>>) {
    let (cmds, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let count = cmds.len();
    let outcome = match raft.client_write(cmds).await {
        Ok(resp) if resp.data.len() == count => Ok(resp.data),
        Ok(resp) => Err(WriteError::Fatal(format!(
            "the state machine answered {} responses for a batch of {count}",
            resp.data.len()
        ))),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(WriteError::not_leader(f))
        }
        // Only membership changes produce this; a batch of commands never does.
        Err(RaftError::APIError(e @ ClientWriteError::ChangeMembershipError(_))) => {
            Err(WriteError::Fatal(e.to_string()))
        }
        Err(RaftError::Fatal(f)) => Err(WriteError::Fatal(f.to_string())),
    };
    match outcome {
        Ok(responses) => {
            for (reply, response) in replies.into_iter().zip(responses) {
                // The writer may have given up (deadline): nothing to do then.
                let _ = reply.send(Ok(response));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
