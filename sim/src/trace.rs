//! The run's ordered event log and its blake3 hash.
//!
//! Every component records what it did (an RPC delivered or lost, a fault, a client op submitted
//! or acknowledged, a leader seen) with the virtual time. The events are hashed as they come, so
//! two runs agree on the hash exactly when they did the same things in the same order at the
//! same virtual times: the determinism test compares hashes. Lines are kept only when asked for
//! (`--dump-trace`); a long sweep holds just the hasher.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Most lines kept for a dump; later events are still hashed.
pub const TRACE_LINES_KEPT_MAX: usize = 2_000_000;

pub struct Trace {
    start: Instant,
    hasher: blake3::Hasher,
    events: u64,
    lines: Option<Vec<String>>,
}

impl Trace {
    /// A trace whose clock starts now (virtual time).
    pub fn new(keep_lines: bool) -> Self {
        Trace {
            start: Instant::now(),
            hasher: blake3::Hasher::new(),
            events: 0,
            lines: keep_lines.then(Vec::new),
        }
    }

    /// Virtual time since the run began.
    pub fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn record(&mut self, event: &str) {
        let us = self.elapsed().as_micros();
        let line = format!("{:>6}.{:03} {event}", us / 1_000, us % 1_000);
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        self.events += 1;
        if let Some(lines) = &mut self.lines {
            if lines.len() < TRACE_LINES_KEPT_MAX {
                lines.push(line);
            }
        }
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn hash_hex(&self) -> String {
        self.hasher.finalize().to_hex().to_string()
    }

    pub fn take_lines(&mut self) -> Vec<String> {
        self.lines.take().unwrap_or_default()
    }
}

/// The trace shared by the simulator's tasks. All of them run on one thread; the mutex is never
/// contended and never held across an await.
#[derive(Clone)]
pub struct SharedTrace(Arc<Mutex<Trace>>);

impl SharedTrace {
    pub fn new(keep_lines: bool) -> Self {
        SharedTrace(Arc::new(Mutex::new(Trace::new(keep_lines))))
    }

    pub fn record(&self, event: impl AsRef<str>) {
        self.lock().record(event.as_ref());
    }

    pub fn elapsed(&self) -> Duration {
        self.lock().elapsed()
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.elapsed().as_millis() as u64
    }

    pub fn start(&self) -> Instant {
        self.lock().start()
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Trace> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_hash_covers_events_their_order_and_their_time() {
        let run = |events: &'static [(&'static str, u64)]| async move {
            let mut t = Trace::new(true);
            for (e, after_ms) in events {
                tokio::time::sleep(Duration::from_millis(*after_ms)).await;
                t.record(e);
            }
            (t.hash_hex(), t.take_lines())
        };
        let (a, lines) = run(&[("x", 0), ("y", 5)]).await;
        assert_eq!(lines, vec!["     0.000 x", "     5.000 y"]);
        assert_eq!(run(&[("x", 0), ("y", 5)]).await.0, a);
        assert_ne!(run(&[("y", 0), ("x", 5)]).await.0, a, "order");
        assert_ne!(run(&[("x", 0), ("y", 6)]).await.0, a, "time");
    }
}
