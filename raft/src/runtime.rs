//! [`QuiverRuntime`]: openraft's async runtime for Quiver — tokio, with a random number generator
//! that a simulator can seed.
//!
//! openraft draws its election timeouts from `AsyncRuntime::thread_rng()`. With
//! `openraft::TokioRuntime` that is `rand::thread_rng()`, which nobody can seed, so two runs of
//! the same cluster schedule differ in who stands for election first. This runtime delegates
//! everything to tokio (spawn, sleep, timeouts, oneshot channels: the very same types) and only
//! replaces the RNG: a per-thread `StdRng`, seeded from OS entropy on first use (so a production
//! node behaves as before: random), and re-seedable with [`seed_thread_rng`]. The simulator runs
//! a whole cluster on one `current_thread` tokio runtime, i.e. on one OS thread, so seeding that
//! thread makes every node's draws a function of the seed.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

thread_local! {
    static THREAD_RNG: RefCell<StdRng> = RefCell::new(StdRng::from_entropy());
}

/// Re-seed this thread's Raft RNG (election timeouts of every node whose tasks run on this
/// thread). For simulation: production code never calls it and gets an entropy-seeded RNG.
pub fn seed_thread_rng(seed: u64) {
    THREAD_RNG.with(|rng| *rng.borrow_mut() = StdRng::seed_from_u64(seed));
}

/// A handle on this thread's Raft RNG; every draw reads the thread-local generator.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadRaftRng;

impl RngCore for ThreadRaftRng {
    fn next_u32(&mut self) -> u32 {
        THREAD_RNG.with(|rng| rng.borrow_mut().next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        THREAD_RNG.with(|rng| rng.borrow_mut().next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        THREAD_RNG.with(|rng| rng.borrow_mut().fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        THREAD_RNG.with(|rng| rng.borrow_mut().try_fill_bytes(dest))
    }
}

/// openraft's tokio runtime with a seedable RNG (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuiverRuntime;

type Tokio = TokioRuntime;

impl AsyncRuntime for QuiverRuntime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = ThreadRaftRng;
    type OneshotSender<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <Tokio as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRaftRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        Tokio::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn draws() -> Vec<u64> {
        let mut rng = QuiverRuntime::thread_rng();
        (0..8).map(|_| rng.gen_range(150..300)).collect()
    }

    #[test]
    fn a_seeded_thread_draws_the_same_timeouts_again() {
        seed_thread_rng(7);
        let first = draws();
        seed_thread_rng(7);
        assert_eq!(draws(), first);
        seed_thread_rng(8);
        assert_ne!(draws(), first, "another seed gives other draws");
    }

    #[test]
    fn threads_start_from_independent_entropy() {
        let a = std::thread::spawn(draws).join().expect("thread a");
        let b = std::thread::spawn(draws).join().expect("thread b");
        // 8 draws from 150 values each: equal only by (astronomically unlikely) chance.
        assert_ne!(a, b);
    }
}
