//! Many seeds on several threads.
//!
//! Each worker thread takes the next seed and runs it with [`crate::run::run`], which builds its
//! own single-threaded runtime and seeds that thread's RNGs: a seed's run is the same whether it
//! runs alone or in a sweep, on whichever thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::config::{SeedRange, SimConfig};
use crate::report::SeedOutcome;
use crate::run::run;

/// Most worker threads a sweep may use.
pub const SWEEP_THREADS_MAX: usize = 64;

/// Run every seed of `seeds` with `base`'s other settings on `threads` threads; `on_done` is
/// called as each seed finishes (in completion order). Returns the outcomes in seed order.
pub fn sweep(
    base: &SimConfig,
    seeds: SeedRange,
    threads: usize,
    on_done: impl Fn(&SeedOutcome) + Sync,
) -> Vec<SeedOutcome> {
    let threads = threads.clamp(1, SWEEP_THREADS_MAX);
    let next = AtomicU64::new(seeds.start);
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= seeds.end {
                    break;
                }
                let mut cfg = base.clone();
                cfg.seed = seed;
                let outcome = SeedOutcome {
                    seed,
                    result: run(&cfg).map_err(|e| format!("{e:#}")),
                };
                on_done(&outcome);
                outcomes
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(outcome);
            });
        }
    });
    let mut outcomes = outcomes
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    outcomes.sort_by_key(|o| o.seed);
    outcomes
}
