//! Opening a node's storage: the log store and the state machine store side by side under one
//! data dir, and knowing when both are closed again. Not in the crate root: both stores use the
//! root's items (`App`, `EnvLease`, `open_env`), so the root must not use the stores back.

use std::path::Path;

use crate::durability::LogDiskHandle;
use crate::log_store::{LogOptions, LogStore};
use crate::state_store::StateMachineStore;
use crate::{env_lease, App, EnvsReleased, LOG_DIR_NAME, STATE_DIR_NAME};

/// Open (creating if needed) the log store at `dir/log` and the state machine store at
/// `dir/state`.
///
/// Each environment can be open only once per process (heed refuses a second open); both are
/// closed when the returned stores and everything cloned from them are dropped.
pub fn open_storage<A: App>(dir: &Path) -> anyhow::Result<(LogStore<A>, StateMachineStore<A>)> {
    open_storage_with(dir, LogOptions::default())
}

/// Like [`open_storage`], with the log store's options.
pub fn open_storage_with<A: App>(
    dir: &Path,
    log_options: LogOptions,
) -> anyhow::Result<(LogStore<A>, StateMachineStore<A>)> {
    let (log, state, _released) = open_storage_tracked(dir, None, log_options)?;
    Ok((log, state))
}

/// Like [`open_storage`], and also returns a handle that resolves once every clone of both
/// stores is gone, i.e. once both environments are closed. `log_disk`: a test harness's disk
/// model told about every log write (`None` in production; see `durability.rs`).
pub(crate) fn open_storage_tracked<A: App>(
    dir: &Path,
    log_disk: Option<LogDiskHandle>,
    log_options: LogOptions,
) -> anyhow::Result<(LogStore<A>, StateMachineStore<A>, EnvsReleased)> {
    let (lease, released) = env_lease();
    let log = LogStore::open(
        &dir.join(LOG_DIR_NAME),
        lease.clone(),
        log_disk,
        log_options,
    )?;
    let state = StateMachineStore::open(&dir.join(STATE_DIR_NAME), lease)?;
    Ok((log, state, released))
}
