//! Which chunk to fetch next, from which peer: a state machine with no I/O and no clock.
//!
//! [`super::fetch_all`] asks [`FetchScheduler::next_action`] for work, runs each [`Assignment`] as a
//! request, and reports how it ended with [`FetchScheduler::on_outcome`]. Everything the
//! scheduler decides follows from those events, so it is tested with plain unit tests and runs
//! unchanged in the simulator.
//!
//! Policy:
//! - Chunks go in manifest order (lowest index first); a chunk is in flight at most once.
//! - At most `parallelism` requests in flight in total.
//! - Peer for a chunk: never a banned one; prefer a peer that has not failed this chunk yet, then
//!   the one with the fewest failures in a row (timeouts and errors; a success resets it), then
//!   the fewest requests in flight (a slow peer keeps requests longer and so gets fewer new ones),
//!   then the lowest index (determinism).
//! - `Corrupt` bans the peer for the rest of the fetch. `NotFound` does not count against the
//!   peer (it may simply not hold that chunk) but the chunk moves on to another peer.
//! - Every attempt counts toward `attempts_per_chunk_max`; when a chunk reaches it, the fetch
//!   gives up ([`GaveUp`]). No peer left that is not banned: [`Next::Stuck`].

use std::collections::BTreeSet;
use std::net::SocketAddr;

use crate::ChunkRef;

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Verified bytes received (and stored).
    Done,
    /// The peer reported its copy corrupt or sent bytes that failed verification.
    Corrupt,
    /// The peer does not hold the chunk.
    NotFound,
    /// Connection, TLS or protocol failure.
    Failed,
    /// No answer within the per-chunk timeout.
    Timeout,
}

/// Fetch `chunk` (index `chunk_index` in the scheduler's list) from `peer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub chunk_index: usize,
    pub chunk: ChunkRef,
    pub peer_index: usize,
    pub peer: SocketAddr,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Start this request (it is counted as in flight from now on).
    Fetch(Assignment),
    /// Nothing to start until a request in flight ends (there is at least one).
    Wait,
    /// Every chunk is done and nothing is in flight.
    Finished,
    /// A chunk still needs fetching and no peer is usable: all banned, or none given.
    Stuck { chunk_index: usize, chunk: ChunkRef },
}

/// A chunk failed on its last allowed attempt; the fetch cannot complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("chunk {} failed {attempts} attempts", chunk.hash)]
pub struct GaveUp {
    pub chunk_index: usize,
    pub chunk: ChunkRef,
    pub attempts: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Pending,
    InFlight { peer_index: usize },
    Done,
    GaveUp,
}

#[derive(Clone, Debug)]
struct PeerState {
    addr: SocketAddr,
    banned: bool,
    in_flight: usize,
    failures_in_a_row: u32,
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct FetchScheduler {
    chunks: Vec<ChunkRef>,
    states: Vec<ChunkState>,
    attempts: Vec<usize>,
    /// Peers on which each chunk already failed (any outcome but Done); usually empty.
    failed_on: Vec<Vec<usize>>,
    pending: BTreeSet<usize>,
    peers: Vec<PeerState>,
    banned_order: Vec<usize>,
    in_flight: usize,
    done: usize,
    parallelism: usize,
    attempts_per_chunk_max: usize,
}

impl FetchScheduler {
    /// `parallelism` and `attempts_per_chunk_max` are at least 1 (smaller values count as 1).
    pub fn new(
        chunks: Vec<ChunkRef>,
        peers: Vec<SocketAddr>,
        parallelism: usize,
        attempts_per_chunk_max: usize,
    ) -> FetchScheduler {
        let n = chunks.len();
        FetchScheduler {
            states: vec![ChunkState::Pending; n],
            attempts: vec![0; n],
            failed_on: vec![Vec::new(); n],
            pending: (0..n).collect(),
            peers: peers
                .into_iter()
                .map(|addr| PeerState {
                    addr,
                    banned: false,
                    in_flight: 0,
                    failures_in_a_row: 0,
                })
                .collect(),
            banned_order: Vec::new(),
            in_flight: 0,
            done: 0,
            parallelism: parallelism.max(1),
            attempts_per_chunk_max: attempts_per_chunk_max.max(1),
            chunks,
        }
    }

    /// The next thing to do. Call until it returns [`Next::Wait`], then wait for an outcome.
    pub fn next_action(&mut self) -> Next {
        let Some(&chunk_index) = self.pending.first() else {
            return if self.in_flight == 0 {
                debug_assert_eq!(self.done, self.chunks.len());
                Next::Finished
            } else {
                Next::Wait
            };
        };
        let Some(peer_index) = self.pick_peer(chunk_index) else {
            return Next::Stuck {
                chunk_index,
                chunk: self.chunks[chunk_index].clone(),
            };
        };
        if self.in_flight >= self.parallelism {
            return Next::Wait;
        }
        self.pending.remove(&chunk_index);
        debug_assert_eq!(self.states[chunk_index], ChunkState::Pending);
        self.states[chunk_index] = ChunkState::InFlight { peer_index };
        self.attempts[chunk_index] += 1;
        self.in_flight += 1;
        self.peers[peer_index].in_flight += 1;
        debug_assert!(self.in_flight <= self.parallelism);
        Next::Fetch(Assignment {
            chunk_index,
            chunk: self.chunks[chunk_index].clone(),
            peer_index,
            peer: self.peers[peer_index].addr,
        })
    }

    /// Records how `assignment` (returned by [`FetchScheduler::next_action`]) ended. `Err` when the
    /// chunk has used all its attempts; the fetch should stop then.
    pub fn on_outcome(&mut self, assignment: &Assignment, outcome: Outcome) -> Result<(), GaveUp> {
        let c = assignment.chunk_index;
        let p = assignment.peer_index;
        assert_eq!(
            self.states[c],
            ChunkState::InFlight { peer_index: p },
            "outcome for an assignment that is not in flight"
        );
        self.in_flight -= 1;
        let peer = &mut self.peers[p];
        peer.in_flight -= 1;
        match outcome {
            Outcome::Done => {
                peer.failures_in_a_row = 0;
                self.states[c] = ChunkState::Done;
                self.done += 1;
                return Ok(());
            }
            Outcome::Corrupt => {
                if !peer.banned {
                    peer.banned = true;
                    self.banned_order.push(p);
                }
            }
            Outcome::NotFound => {}
            Outcome::Failed | Outcome::Timeout => {
                peer.failures_in_a_row = peer.failures_in_a_row.saturating_add(1);
            }
        }
        if !self.failed_on[c].contains(&p) {
            self.failed_on[c].push(p);
        }
        if self.attempts[c] >= self.attempts_per_chunk_max {
            self.states[c] = ChunkState::GaveUp;
            return Err(GaveUp {
                chunk_index: c,
                chunk: self.chunks[c].clone(),
                attempts: self.attempts[c],
            });
        }
        self.states[c] = ChunkState::Pending;
        self.pending.insert(c);
        Ok(())
    }

    fn pick_peer(&self, chunk_index: usize) -> Option<usize> {
        let failed_on = &self.failed_on[chunk_index];
        self.peers
            .iter()
            .enumerate()
            .filter(|(_, peer)| !peer.banned)
            .min_by_key(|(i, peer)| {
                (
                    failed_on.contains(i),
                    peer.failures_in_a_row,
                    peer.in_flight,
                    *i,
                )
            })
            .map(|(i, _)| i)
    }

    /// Peers banned for serving corrupt data, in the order they were banned.
    pub fn banned_peers(&self) -> Vec<SocketAddr> {
        self.banned_order
            .iter()
            .map(|&p| self.peers[p].addr)
            .collect()
    }

    /// Chunks fetched so far.
    pub fn done_count(&self) -> usize {
        self.done
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Attempts made so far for chunk `chunk_index`.
    pub fn attempts(&self, chunk_index: usize) -> usize {
        self.attempts[chunk_index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hash;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn chunks(n: usize) -> Vec<ChunkRef> {
        (0..n)
            .map(|i| ChunkRef {
                hash: Hash::of(&i.to_le_bytes()),
                size_bytes: 1,
            })
            .collect()
    }

    fn peers(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16)))
            .collect()
    }

    fn fetch(next: Next) -> Assignment {
        match next {
            Next::Fetch(a) => a,
            other => panic!("expected Fetch, got {other:?}"),
        }
    }

    #[test]
    fn spreads_chunks_over_peers_within_the_parallelism() {
        let mut s = FetchScheduler::new(chunks(5), peers(2), 3, 4);
        let a: Vec<Assignment> = (0..3).map(|_| fetch(s.next_action())).collect();
        assert_eq!(
            a.iter()
                .map(|a| (a.chunk_index, a.peer_index))
                .collect::<Vec<_>>(),
            vec![(0, 0), (1, 1), (2, 0)]
        );
        assert_eq!(s.next_action(), Next::Wait);
        assert_eq!(s.in_flight(), 3);
        s.on_outcome(&a[1], Outcome::Done).expect("done");
        // Peer 1 now has nothing in flight: it gets the next chunk.
        let b = fetch(s.next_action());
        assert_eq!((b.chunk_index, b.peer_index), (3, 1));
        for x in [&a[0], &a[2], &b] {
            s.on_outcome(x, Outcome::Done).expect("done");
        }
        let c = fetch(s.next_action());
        assert_eq!(c.chunk_index, 4);
        assert_eq!(
            s.next_action(),
            Next::Wait,
            "nothing pending, one in flight"
        );
        s.on_outcome(&c, Outcome::Done).expect("done");
        assert_eq!(s.next_action(), Next::Finished);
        assert_eq!(s.done_count(), 5);
        assert!(s.banned_peers().is_empty());
    }

    #[test]
    fn nothing_to_fetch_is_finished_at_once() {
        let mut s = FetchScheduler::new(Vec::new(), peers(1), 8, 4);
        assert_eq!(s.next_action(), Next::Finished);
        let mut s = FetchScheduler::new(Vec::new(), Vec::new(), 8, 4);
        assert_eq!(s.next_action(), Next::Finished);
    }

    #[test]
    fn a_corrupt_peer_is_banned_and_its_chunk_goes_elsewhere() {
        let mut s = FetchScheduler::new(chunks(3), peers(2), 1, 4);
        let a = fetch(s.next_action());
        assert_eq!(a.peer_index, 0);
        s.on_outcome(&a, Outcome::Corrupt)
            .expect("one attempt used");
        assert_eq!(s.banned_peers(), vec![peers(2)[0]]);
        // The same chunk again, from the other peer; and every later chunk too.
        for expected_chunk in 0..3 {
            let b = fetch(s.next_action());
            assert_eq!((b.chunk_index, b.peer_index), (expected_chunk, 1));
            s.on_outcome(&b, Outcome::Done).expect("done");
        }
        assert_eq!(s.next_action(), Next::Finished);
        assert_eq!(s.attempts(0), 2);
    }

    #[test]
    fn a_verified_result_from_a_peer_banned_meanwhile_is_kept() {
        let mut s = FetchScheduler::new(chunks(3), peers(2), 3, 4);
        let a = fetch(s.next_action());
        let b = fetch(s.next_action());
        let c = fetch(s.next_action());
        assert_eq!(
            [a.peer_index, b.peer_index, c.peer_index],
            [0, 1, 0],
            "round robin by load"
        );
        s.on_outcome(&a, Outcome::Corrupt).expect("retry");
        // c was in flight on peer 0 when it was banned; its bytes were verified: keep them.
        s.on_outcome(&c, Outcome::Done).expect("done");
        s.on_outcome(&b, Outcome::Done).expect("done");
        let d = fetch(s.next_action());
        assert_eq!((d.chunk_index, d.peer_index), (0, 1));
        s.on_outcome(&d, Outcome::Done).expect("done");
        assert_eq!(s.next_action(), Next::Finished);
        assert_eq!(s.done_count(), 3);
        assert_eq!(s.banned_peers(), vec![peers(2)[0]]);
    }

    #[test]
    fn when_every_peer_is_banned_the_fetch_is_stuck() {
        let mut s = FetchScheduler::new(chunks(2), peers(2), 2, 10);
        let a = fetch(s.next_action());
        let b = fetch(s.next_action());
        s.on_outcome(&a, Outcome::Corrupt).expect("retry");
        s.on_outcome(&b, Outcome::Corrupt).expect("retry");
        assert_eq!(
            s.next_action(),
            Next::Stuck {
                chunk_index: 0,
                chunk: chunks(2)[0].clone()
            }
        );
        let mut none = FetchScheduler::new(chunks(1), Vec::new(), 2, 10);
        assert!(matches!(
            none.next_action(),
            Next::Stuck { chunk_index: 0, .. }
        ));
    }

    #[test]
    fn a_failed_chunk_prefers_a_peer_that_has_not_failed_it() {
        let mut s = FetchScheduler::new(chunks(1), peers(3), 4, 4);
        let a = fetch(s.next_action());
        assert_eq!(a.peer_index, 0);
        s.on_outcome(&a, Outcome::NotFound).expect("retry");
        let b = fetch(s.next_action());
        assert_eq!(b.peer_index, 1);
        s.on_outcome(&b, Outcome::NotFound).expect("retry");
        let c = fetch(s.next_action());
        assert_eq!(c.peer_index, 2);
        s.on_outcome(&c, Outcome::Done).expect("done");
        assert_eq!(s.next_action(), Next::Finished);
    }

    #[test]
    fn slow_and_failing_peers_get_new_work_last() {
        let mut s = FetchScheduler::new(chunks(6), peers(2), 8, 4);
        let a = fetch(s.next_action());
        assert_eq!(a.peer_index, 0);
        s.on_outcome(&a, Outcome::Timeout).expect("retry");
        // Peer 0 has a failure in a row: everything goes to peer 1 although it is busier.
        let on_1: Vec<Assignment> = (0..4).map(|_| fetch(s.next_action())).collect();
        assert!(on_1.iter().all(|x| x.peer_index == 1), "{on_1:?}");
        assert_eq!(on_1[0].chunk_index, 0, "the timed-out chunk goes first");
        // NotFound does not count against a peer; Failed does.
        let mut t = FetchScheduler::new(chunks(3), peers(2), 1, 4);
        let x = fetch(t.next_action());
        t.on_outcome(&x, Outcome::NotFound).expect("retry");
        let y = fetch(t.next_action());
        assert_eq!(
            y.peer_index, 1,
            "chunk 0 moves on to the peer that has not failed it"
        );
        t.on_outcome(&y, Outcome::Done).expect("done");
        let z = fetch(t.next_action());
        assert_eq!(z.peer_index, 0, "peer 0 is not penalised for NotFound");
        t.on_outcome(&z, Outcome::Failed).expect("retry");
        let w = fetch(t.next_action());
        assert_eq!(w.peer_index, 1);
        t.on_outcome(&w, Outcome::Done).expect("done");
        let v = fetch(t.next_action());
        assert_eq!(v.peer_index, 1, "peer 0 failed last time");
    }

    #[test]
    fn a_success_clears_a_peers_failures() {
        let mut s = FetchScheduler::new(chunks(3), peers(2), 1, 4);
        let a = fetch(s.next_action());
        s.on_outcome(&a, Outcome::Failed).expect("retry");
        let b = fetch(s.next_action());
        assert_eq!(b.peer_index, 1);
        s.on_outcome(&b, Outcome::Failed).expect("retry");
        // Both failed once; chunk 0 failed on both: lowest index wins the tie.
        let c = fetch(s.next_action());
        assert_eq!((c.chunk_index, c.peer_index), (0, 0));
        s.on_outcome(&c, Outcome::Done).expect("done");
        let d = fetch(s.next_action());
        assert_eq!(
            d.peer_index, 0,
            "peer 0 succeeded last, peer 1 still has a failure"
        );
    }

    #[test]
    fn a_chunk_gives_up_after_the_attempt_limit() {
        let mut s = FetchScheduler::new(chunks(2), peers(1), 1, 3);
        for attempt in 1..=2 {
            let a = fetch(s.next_action());
            assert_eq!(
                (a.chunk_index, s.attempts(0)),
                (0, attempt),
                "retried chunk first"
            );
            s.on_outcome(&a, Outcome::Timeout).expect("attempts left");
        }
        let a = fetch(s.next_action());
        assert_eq!(a.chunk_index, 0);
        let err = s
            .on_outcome(&a, Outcome::Failed)
            .expect_err("third failure");
        assert_eq!(
            err,
            GaveUp {
                chunk_index: 0,
                chunk: chunks(1)[0].clone(),
                attempts: 3
            }
        );
        assert_eq!(
            err.to_string(),
            format!("chunk {} failed 3 attempts", chunks(1)[0].hash)
        );
    }

    #[test]
    #[should_panic(expected = "not in flight")]
    fn an_outcome_for_an_unknown_assignment_is_a_bug() {
        let mut s = FetchScheduler::new(chunks(1), peers(1), 1, 1);
        let a = fetch(s.next_action());
        s.on_outcome(&a, Outcome::Done).expect("done");
        let _ = s.on_outcome(&a, Outcome::Done);
    }

    /// Random outcomes (seeded): the invariants hold at every step, and every run ends in
    /// Finished, GaveUp or Stuck within a bounded number of steps.
    #[test]
    fn random_outcomes_keep_the_invariants() {
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let n_chunks = rng.gen_range(0..20);
            let n_peers = rng.gen_range(0..4);
            let parallelism = rng.gen_range(1..6);
            let attempts_max = rng.gen_range(1..5);
            let mut s =
                FetchScheduler::new(chunks(n_chunks), peers(n_peers), parallelism, attempts_max);
            let mut in_flight: Vec<Assignment> = Vec::new();
            let mut steps = 0;
            let end = loop {
                steps += 1;
                assert!(steps < 10_000, "seed {seed}: no progress");
                match s.next_action() {
                    Next::Fetch(a) => {
                        assert!(
                            in_flight.iter().all(|x| x.chunk_index != a.chunk_index),
                            "seed {seed}: chunk in flight twice"
                        );
                        assert!(
                            !s.banned_peers().contains(&a.peer),
                            "seed {seed}: banned peer used"
                        );
                        assert!(s.attempts(a.chunk_index) <= attempts_max);
                        in_flight.push(a);
                        assert!(in_flight.len() <= parallelism);
                        assert_eq!(in_flight.len(), s.in_flight());
                        continue;
                    }
                    Next::Wait => assert!(
                        !in_flight.is_empty(),
                        "seed {seed}: Wait with nothing in flight"
                    ),
                    Next::Finished => {
                        assert!(in_flight.is_empty());
                        assert_eq!(s.done_count(), n_chunks);
                        break "finished";
                    }
                    Next::Stuck { .. } => {
                        assert!(n_peers == 0 || s.banned_peers().len() == n_peers);
                        break "stuck";
                    }
                }
                let a = in_flight.swap_remove(rng.gen_range(0..in_flight.len()));
                let outcome = match rng.gen_range(0..10) {
                    0..=5 => Outcome::Done,
                    6 => Outcome::Corrupt,
                    7 => Outcome::NotFound,
                    8 => Outcome::Failed,
                    _ => Outcome::Timeout,
                };
                if let Err(gave_up) = s.on_outcome(&a, outcome) {
                    assert_eq!(gave_up.attempts, attempts_max);
                    break "gave up";
                }
            };
            if n_chunks > 0 && n_peers == 0 {
                assert_eq!(end, "stuck", "seed {seed}");
            }
        }
    }
}
