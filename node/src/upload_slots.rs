//! How many uploads a node receives at once: in all, and from one client (principal). Each
//! upload holds buffers and chunk writes in flight, so without a bound a client that opens
//! uploads in a loop takes a node's memory; beyond a bound an upload waits a short while for a
//! slot and is then refused with `RESOURCE_EXHAUSTED`, saying which limit it met.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::NodeError;
use crate::in_flight::{InFlight, InFlightTicket};

/// Uploads one node receives at once.
pub const UPLOADS_PER_NODE_MAX: usize = 128;
/// Uploads one client (one principal, whatever its connections) sends at once.
pub const UPLOADS_PER_CLIENT_MAX: usize = 64;
/// How long an upload over a limit waits for a slot before it is refused.
pub const UPLOAD_SLOT_WAIT: Duration = Duration::from_secs(10);

/// The node's upload slots. Cheap to clone; clones share the slots.
#[derive(Clone, Default)]
pub struct UploadSlots {
    /// Slots taken by each client; a slot is taken only while this lock is held.
    by_client: Arc<Mutex<BTreeMap<String, usize>>>,
    /// Slots taken in all.
    in_use: InFlight,
    freed: Arc<Notify>,
}

/// One upload's slot, given back when dropped.
pub struct UploadSlot {
    slots: UploadSlots,
    client: String,
    /// Counted in `in_use` until the slot is given back (`None` only while dropping).
    ticket: Option<InFlightTicket>,
}

impl UploadSlots {
    fn by_client(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, usize>> {
        self.by_client.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Uploads being received now; a test can wait on it (`InFlight::wait_until`).
    pub fn in_use(&self) -> &InFlight {
        &self.in_use
    }

    /// Takes a slot for an upload from `client` (the principal the request authenticated as),
    /// waiting up to
    /// [`UPLOAD_SLOT_WAIT`] for one to be given back.
    pub async fn acquire(&self, node_id: u64, client: &str) -> Result<UploadSlot, NodeError> {
        let deadline = Instant::now() + UPLOAD_SLOT_WAIT;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a slot given back meanwhile is not missed.
            freed.as_mut().enable();
            let full = match self.try_take(client) {
                Ok(slot) => return Ok(slot),
                Err(full) => full,
            };
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(NodeError::Busy(format!(
                    "node {node_id} is receiving {full}, and none finished within {}s: retry \
                     later, or spread uploads over more nodes",
                    UPLOAD_SLOT_WAIT.as_secs()
                )));
            }
        }
    }

    /// A slot if both limits allow one; otherwise which limit is reached.
    fn try_take(&self, client: &str) -> Result<UploadSlot, String> {
        let mut by_client = self.by_client();
        if self.in_use.get() >= UPLOADS_PER_NODE_MAX {
            return Err(format!(
                "{UPLOADS_PER_NODE_MAX} uploads, the most it takes at once"
            ));
        }
        let mine = by_client.get(client).copied().unwrap_or(0);
        if mine >= UPLOADS_PER_CLIENT_MAX {
            return Err(format!(
                "{UPLOADS_PER_CLIENT_MAX} uploads from {client}, the most it takes at once from \
                 one client"
            ));
        }
        by_client.insert(client.to_owned(), mine + 1);
        Ok(UploadSlot {
            slots: self.clone(),
            client: client.to_owned(),
            ticket: Some(self.in_use.enter()),
        })
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        {
            let mut by_client = self.slots.by_client();
            if let Some(n) = by_client.get_mut(&self.client) {
                *n -= 1;
                if *n == 0 {
                    by_client.remove(&self.client);
                }
            }
            // Given back before the waiters are woken, so that they find the slot free.
            self.ticket.take();
        }
        self.slots.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(result: Result<UploadSlot, NodeError>) -> String {
        match result {
            Err(NodeError::Busy(why)) => why,
            Err(other) => panic!("expected Busy, got {other:?}"),
            Ok(_) => panic!("expected Busy, got a slot"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_client_gets_its_limit_then_waits_and_is_refused_while_others_go_on() {
        let slots = UploadSlots::default();
        let mut held = Vec::new();
        for _ in 0..UPLOADS_PER_CLIENT_MAX {
            held.push(slots.acquire(1, "10.0.0.1:5000").await.unwrap());
        }
        let started = Instant::now();
        let why = busy(slots.acquire(1, "10.0.0.1:5000").await);
        assert_eq!(started.elapsed(), UPLOAD_SLOT_WAIT);
        assert!(why.contains("64 uploads from 10.0.0.1:5000"), "{why}");
        assert!(why.contains("node 1"), "{why}");
        // Another client is not held up by the first one's limit.
        let other = slots.acquire(1, "10.0.0.2:5000").await.unwrap();
        assert_eq!(slots.in_use().get(), UPLOADS_PER_CLIENT_MAX + 1);
        drop(other);
        drop(held);
        assert_eq!(slots.in_use().get(), 0);
        assert!(slots.by_client().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_node_limit_holds_across_clients_and_a_freed_slot_lets_a_waiter_in() {
        let slots = UploadSlots::default();
        let mut held = Vec::new();
        for i in 0..UPLOADS_PER_NODE_MAX {
            held.push(slots.acquire(2, &format!("client-{i}")).await.unwrap());
        }
        let why = busy(slots.acquire(2, "late").await);
        assert!(
            why.contains("128 uploads, the most it takes at once"),
            "{why}"
        );
        // A waiter gets the first slot given back, well before its wait runs out.
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move {
                let started = Instant::now();
                let slot = slots.acquire(2, "late").await;
                (slot.is_ok(), started.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        held.pop();
        let (got, waited) = waiter.await.unwrap();
        assert!(got);
        assert_eq!(waited, Duration::from_secs(3));
    }
}
