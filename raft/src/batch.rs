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
//! A batch also ends before its commands' encoded bytes would pass [`BATCH_BYTES_MAX`] (within
//! the AppendEntries cap), so that a batch always fits one AppendEntries message; a single command
//! larger than that (a registration with a large manifest) is an entry of its own, sent alone.
//! A command over [`COMMAND_BYTES_MAX`] is refused before it reaches the log.
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

/// Largest command, encoded as the log stores it (JSON). The largest legitimate one is a
/// registration whose manifest lists the most files and chunks a manifest may hold (about
/// 35 MiB, checked by a test of the node crate); anything a client sends through a field is bounded far below by the field limits
/// checked before proposing. It must fit one peer message (`PEER_MESSAGE_SIZE_MAX_BYTES`).
pub const COMMAND_BYTES_MAX: usize = 48 << 20;
/// Encoded bytes of the commands batched into one entry, at most (a larger single command is an
/// entry by itself): a batch always fits one AppendEntries message (`network` checks it against
/// `APPEND_ENTRIES_BYTES_MAX`).
pub const BATCH_BYTES_MAX: usize = 512 << 10;

/// Most commands in one Raft entry.
pub const WRITE_BATCH_MAX: usize = 256;
/// Batches proposed and not yet answered, at most.
pub const BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Commands waiting for a batch, at most; a writer beyond it waits (within its deadline).
pub const WRITE_QUEUE_MAX: usize = 4_096;

/// One command waiting for its batch, and where its answer goes.
pub(crate) struct Proposal<A: App> {
    pub(crate) cmd: A::Command,
    /// `cmd`'s encoded size.
    pub(crate) bytes: usize,
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

    /// Queues `cmd`, of `bytes` encoded bytes (from [`check_command_size`]); the receiver yields
    /// its answer once its batch is applied (or failed).
    pub(crate) async fn submit(
        &self,
        cmd: A::Command,
        bytes: usize,
    ) -> Result<oneshot::Receiver<Result<A::Response, WriteError>>, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Proposal { cmd, bytes, reply })
            .await
            .map_err(|_| WriteError::Fatal("the raft node has stopped".into()))?;
        Ok(answer)
    }
}

/// `cmd`'s size encoded as JSON (as the log stores it), counted without keeping the bytes;
/// refused over [`COMMAND_BYTES_MAX`].
pub(crate) fn check_command_size<C: serde::Serialize>(cmd: &C) -> Result<usize, WriteError> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, cmd)
        .map_err(|e| WriteError::Fatal(format!("encode a command: {e}")))?;
    match count.0 {
        bytes if bytes > COMMAND_BYTES_MAX => Err(WriteError::TooLarge {
            bytes,
            max: COMMAND_BYTES_MAX,
        }),
        bytes => Ok(bytes),
    }
}

/// The next proposal: the one left over from the last batch, else the next queued.
async fn next<A: App>(
    left_over: &mut Option<Proposal<A>>,
    rx: &mut mpsc::Receiver<Proposal<A>>,
) -> Option<Proposal<A>> {
    match left_over.take() {
        Some(p) => Some(p),
        None => rx.recv().await,
    }
}

/// Takes queued proposals after `first` into one batch, up to [`WRITE_BATCH_MAX`] commands and
/// [`BATCH_BYTES_MAX`] bytes; the first that does not fit is returned for the next batch.
fn fill_batch<A: App>(
    first: Proposal<A>,
    rx: &mut mpsc::Receiver<Proposal<A>>,
) -> (Vec<Proposal<A>>, Option<Proposal<A>>) {
    let mut bytes = first.bytes;
    let mut batch = vec![first];
    while batch.len() < WRITE_BATCH_MAX {
        let Ok(p) = rx.try_recv() else {
            break;
        };
        if bytes + p.bytes > BATCH_BYTES_MAX {
            return (batch, Some(p));
        }
        bytes += p.bytes;
        batch.push(p);
    }
    (batch, None)
}

async fn run<A: App>(raft: Raft<TypeConfig<A>>, mut rx: mpsc::Receiver<Proposal<A>>) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    let mut left_over = None;
    loop {
        tokio::select! {
            proposal = next(&mut left_over, &mut rx),
                if open && in_flight.len() < BATCHES_IN_FLIGHT_MAX => {
                let Some(first) = proposal else {
                    open = false;
                    continue;
                };
                let (batch, rest) = fill_batch(first, &mut rx);
                left_over = rest;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An app whose commands are strings; only its types are used here.
    struct Strings;

    impl App for Strings {
        type Command = String;
        type Response = ();
        const MAX_DBS: u32 = 0;
        fn open(_: &heed::Env, _: &mut heed::RwTxn<'_>) -> anyhow::Result<Self> {
            unreachable!("never opened")
        }
        fn apply(&self, _: &mut heed::RwTxn<'_>, _: u64, _: &String) -> anyhow::Result<()> {
            unreachable!("never applied")
        }
        fn export(&self, _: &heed::RoTxn<'_>, _: &mut dyn std::io::Write) -> anyhow::Result<()> {
            unreachable!("never exported")
        }
        fn import(&self, _: &mut heed::RwTxn<'_>, _: &mut dyn std::io::Read) -> anyhow::Result<()> {
            unreachable!("never imported")
        }
    }

    /// A command (a JSON string: its bytes plus two quotes) of exactly `bytes` (at least 2)
    /// encoded bytes.
    fn command_of(bytes: usize) -> String {
        "x".repeat(bytes - 2)
    }

    fn proposal(bytes: usize) -> Proposal<Strings> {
        let cmd = command_of(bytes);
        let bytes = check_command_size(&cmd).expect("within the limit");
        Proposal {
            cmd,
            bytes,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_command_is_refused_one_byte_over_the_limit() {
        assert_eq!(
            check_command_size(&command_of(COMMAND_BYTES_MAX)),
            Ok(COMMAND_BYTES_MAX)
        );
        let error = check_command_size(&command_of(COMMAND_BYTES_MAX + 1)).unwrap_err();
        assert_eq!(
            error,
            WriteError::TooLarge {
                bytes: COMMAND_BYTES_MAX + 1,
                max: COMMAND_BYTES_MAX
            }
        );
        assert!(error.to_string().contains("over the limit"), "{error}");
    }

    /// Sizes of the batches `fill_batch` makes of `sizes`, in order.
    fn batches_of(sizes: &[usize]) -> Vec<Vec<usize>> {
        let (tx, mut rx) = mpsc::channel(sizes.len().max(1));
        for &size in sizes {
            tx.try_send(proposal(size)).unwrap();
        }
        let mut batches = Vec::new();
        let mut left_over = None;
        while let Some(first) = left_over.take().or_else(|| rx.try_recv().ok()) {
            let (batch, rest) = fill_batch(first, &mut rx);
            batches.push(batch.iter().map(|p| p.bytes).collect());
            left_over = rest;
        }
        batches
    }

    #[test]
    fn a_batch_ends_at_its_byte_limit_and_a_larger_command_goes_alone() {
        let half = BATCH_BYTES_MAX / 2;
        // Two halves fill a batch exactly; one byte more starts the next.
        assert_eq!(
            batches_of(&[half, half, 2, 3]),
            vec![vec![half, half], vec![2, 3]]
        );
        assert_eq!(
            batches_of(&[half, half + 1, 10]),
            vec![vec![half], vec![half + 1, 10]]
        );
        // A command over the batch limit (a large registration) is an entry by itself.
        let big = BATCH_BYTES_MAX + 1;
        assert_eq!(batches_of(&[5, big, 7]), vec![vec![5], vec![big], vec![7]]);
        // Small commands still batch by count.
        let many = batches_of(&vec![10; WRITE_BATCH_MAX + 1]);
        assert_eq!(
            many.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![WRITE_BATCH_MAX, 1]
        );
        for batch in batches_of(&[100_000; 40]) {
            assert!(batch.iter().sum::<usize>() <= BATCH_BYTES_MAX);
        }
    }
}
