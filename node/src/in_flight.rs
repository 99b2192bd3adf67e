//! A count of things in progress (uploads being received, downloads being sent) that can be
//! read and awaited: whoever starts one holds a ticket, and dropping the ticket ends it. Waiting
//! on the count, rather than polling it, is how a test sees a transfer end at a limit.

use std::sync::Arc;

use tokio::sync::watch;

/// The count. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct InFlight {
    count: Arc<watch::Sender<usize>>,
}

/// One thing in progress, counted until dropped.
pub struct InFlightTicket {
    count: Arc<watch::Sender<usize>>,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            count: Arc::new(watch::channel(0).0),
        }
    }
}

impl InFlight {
    /// Counts one more until the ticket is dropped.
    pub fn enter(&self) -> InFlightTicket {
        self.count.send_modify(|n| *n += 1);
        InFlightTicket {
            count: self.count.clone(),
        }
    }

    /// How many are in progress now.
    pub fn get(&self) -> usize {
        *self.count.borrow()
    }

    /// Resolves once `ready` holds for the count (at once if it holds now).
    pub async fn wait_until(&self, mut ready: impl FnMut(usize) -> bool) {
        let mut count = self.count.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = count.wait_for(|n| ready(*n)).await;
    }
}

impl Drop for InFlightTicket {
    fn drop(&mut self) {
        self.count.send_modify(|n| {
            assert!(*n > 0, "a ticket's count is at least one while it lives");
            *n -= 1;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn tickets_count_while_held_and_a_waiter_sees_the_count_fall() {
        let gauge = InFlight::default();
        let a = gauge.enter();
        let b = gauge.enter();
        assert_eq!(gauge.get(), 2);
        let waiter = tokio::spawn({
            let gauge = gauge.clone();
            async move { gauge.wait_until(|n| n == 0).await }
        });
        drop(a);
        assert_eq!(gauge.get(), 1);
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter wakes when the count reaches 0")
            .unwrap();
        assert_eq!(gauge.get(), 0);
    }
}
