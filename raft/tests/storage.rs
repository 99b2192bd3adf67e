//! The heed stores against openraft's storage suite, plus the properties the suite does not
//! cover: app state in snapshots, batch atomicity, durability across reopen.

mod common;

use std::collections::BTreeSet;

use common::{key, set, value, KvApp, KvCommand, KvResponse};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader,
    RaftSnapshotBuilder, StorageError, StorageIOError, Vote,
};
use quiver_raft::{open_storage, LogStore, NodeId, StateMachineStore, TypeConfig};
use tempfile::TempDir;

type C = TypeConfig<KvApp>;

struct HeedStoreBuilder;

impl StoreBuilder<C, LogStore<KvApp>, StateMachineStore<KvApp>, TempDir> for HeedStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore<KvApp>, StateMachineStore<KvApp>), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let (log, sm) = open_storage::<KvApp>(dir.path())
            .map_err(|e| StorageIOError::write(AnyError::error(format!("{e:#}"))))?;
        Ok((dir, log, sm))
    }
}

/// openraft's own conformance suite (it runs each case on a fresh runtime, so a plain test).
#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(HeedStoreBuilder).expect("openraft storage suite");
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn normal(term: u64, index: u64, cmd: KvCommand) -> Entry<C> {
    batch(term, index, vec![cmd])
}

/// An entry carrying several commands (concurrent writes batched by the node).
fn batch(term: u64, index: u64, cmds: Vec<KvCommand>) -> Entry<C> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(cmds),
    }
}

fn membership(term: u64, index: u64) -> Entry<C> {
    let nodes = std::collections::BTreeMap::from([(1, BasicNode::new("a"))]);
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1])], nodes)),
    }
}

fn kv_pairs(sm: &StateMachineStore<KvApp>) -> Vec<(String, String)> {
    sm.read(|app, rtxn| app.all(rtxn)).expect("read kv")
}

#[tokio::test]
async fn apply_returns_app_responses_and_records_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = open_storage::<KvApp>(dir.path()).expect("open");

    let responses = sm
        .apply([
            membership(1, 1),
            normal(1, 2, set(0)),
            normal(
                1,
                3,
                KvCommand::Set {
                    key: key(0),
                    value: "second".into(),
                },
            ),
            batch(
                1,
                4,
                vec![KvCommand::Delete { key: key(0) }, set(1), set(0)],
            ),
        ])
        .await
        .expect("apply");
    assert_eq!(
        responses,
        vec![
            vec![],
            vec![KvResponse { previous: None }],
            vec![KvResponse {
                previous: Some(value(0))
            }],
            vec![
                KvResponse {
                    previous: Some("second".into())
                },
                KvResponse { previous: None },
                KvResponse { previous: None },
            ],
        ],
        "one response per command, in order, a batch's commands applied in order"
    );
    let (applied, mem) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(log_id(1, 4)));
    assert_eq!(mem.log_id(), &Some(log_id(1, 1)));
    assert_eq!(
        sm.read(|app, rtxn| app.last_index(rtxn)).expect("read"),
        Some(4)
    );
    assert_eq!(kv_pairs(&sm), vec![(key(0), value(0)), (key(1), value(1))]);
}

#[tokio::test]
async fn a_failing_command_rolls_back_its_whole_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = open_storage::<KvApp>(dir.path()).expect("open");
    sm.apply([normal(1, 1, set(0))]).await.expect("first batch");

    let err = sm
        .apply([normal(1, 2, set(1)), normal(1, 3, KvCommand::FailStorage)])
        .await
        .expect_err("batch with a failing command");
    assert!(
        err.to_string().contains("injected storage failure"),
        "{err}"
    );

    // Neither the good command before the failure nor last_applied moved.
    assert_eq!(kv_pairs(&sm), vec![(key(0), value(0))]);
    let (applied, _) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(log_id(1, 1)));
}

#[tokio::test]
async fn applying_an_entry_twice_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = open_storage::<KvApp>(dir.path()).expect("open");
    sm.apply([normal(1, 1, set(0)), normal(1, 2, set(1))])
        .await
        .expect("apply");
    assert!(sm.apply([normal(1, 2, set(2))]).await.is_err());
    assert_eq!(kv_pairs(&sm), vec![(key(0), value(0)), (key(1), value(1))]);
}

#[tokio::test]
async fn snapshot_carries_app_state_to_another_store_and_survives_reopen() {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let follower_dir = tempfile::tempdir().expect("tempdir");
    let (_log_l, mut leader) = open_storage::<KvApp>(leader_dir.path()).expect("open leader");

    let mut entries = vec![membership(1, 1)];
    entries.extend((0..10).map(|i| normal(1, i as u64 + 2, set(i))));
    leader.apply(entries).await.expect("apply");
    let snap = leader.build_snapshot().await.expect("build snapshot");
    assert_eq!(snap.meta.last_log_id, Some(log_id(1, 11)));

    let meta = snap.meta.clone();
    let want_pairs = kv_pairs(&leader);
    assert_eq!(want_pairs.len(), 10);
    {
        let (_log_f, mut follower) =
            open_storage::<KvApp>(follower_dir.path()).expect("open follower");
        follower
            .apply([normal(1, 1, set(99))])
            .await
            .expect("pre-existing state");
        let mut data = follower.begin_receiving_snapshot().await.expect("begin");
        *data = *snap.snapshot;
        follower
            .install_snapshot(&meta, data)
            .await
            .expect("install");

        // The snapshot replaced the follower's state wholesale.
        assert_eq!(kv_pairs(&follower), want_pairs);
        assert_eq!(
            follower
                .read(|app, rtxn| app.last_index(rtxn))
                .expect("read"),
            Some(11)
        );
        assert_eq!(
            follower.applied_state().await.expect("applied"),
            leader.applied_state().await.expect("applied")
        );
    }

    // Reopen: state and the current snapshot come back from disk.
    let (_log_f, mut follower) = open_storage::<KvApp>(follower_dir.path()).expect("reopen");
    assert_eq!(kv_pairs(&follower), want_pairs);
    let current = follower
        .get_current_snapshot()
        .await
        .expect("get current snapshot")
        .expect("a current snapshot after reopen");
    assert_eq!(current.meta, meta);
    let (applied, mem) = follower.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(1, 11)));
    assert_eq!(mem.log_id(), &Some(log_id(1, 1)));
}

#[tokio::test]
async fn install_refuses_data_that_contradicts_its_meta() {
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    let (_la, mut a) = open_storage::<KvApp>(dir_a.path()).expect("open a");
    let (_lb, mut b) = open_storage::<KvApp>(dir_b.path()).expect("open b");
    a.apply([normal(1, 1, set(0))]).await.expect("apply");
    let snap = a.build_snapshot().await.expect("build");

    let mut lying_meta = snap.meta.clone();
    lying_meta.last_log_id = Some(log_id(1, 50));
    let err = b
        .install_snapshot(&lying_meta, snap.snapshot.clone())
        .await
        .expect_err("meta and data disagree");
    assert!(err.to_string().contains("meta says"), "{err}");

    let mut truncated = snap.snapshot.clone();
    truncated.get_mut().pop();
    assert!(b.install_snapshot(&snap.meta, truncated).await.is_err());

    // Nothing was installed.
    assert!(kv_pairs(&b).is_empty());
    assert_eq!(b.applied_state().await.expect("applied").0, None);
    assert!(b.get_current_snapshot().await.expect("get").is_none());
}

#[tokio::test]
async fn current_snapshot_never_moves_backwards() {
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    let (_la, mut old_src) = open_storage::<KvApp>(dir_a.path()).expect("open a");
    let (_lb, mut b) = open_storage::<KvApp>(dir_b.path()).expect("open b");
    old_src.apply([normal(1, 1, set(0))]).await.expect("apply");
    let old = old_src.build_snapshot().await.expect("old snapshot");

    b.apply([normal(1, 1, set(0)), normal(1, 2, set(1))])
        .await
        .expect("apply");
    let newer = b.build_snapshot().await.expect("newer snapshot");
    // A concurrent, older build finishing late must not replace the newer file.
    b.install_snapshot(&old.meta, old.snapshot.clone())
        .await
        .expect("install older");
    let current = b.get_current_snapshot().await.expect("get").expect("some");
    assert_eq!(current.meta, newer.meta);
}

#[tokio::test]
async fn log_survives_reopen_and_tracks_purge() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _sm) = open_storage::<KvApp>(dir.path()).expect("open");
        log.blocking_append((0..5).map(|i| normal(1, i, set(i as usize))))
            .await
            .expect("append 0..5");
        log.save_vote(&Vote::new(3, 1)).await.expect("vote");
        log.purge(log_id(1, 1)).await.expect("purge");
        log.truncate(log_id(1, 4)).await.expect("truncate");
    }

    let (mut log, _sm) = open_storage::<KvApp>(dir.path()).expect("reopen");
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(3, 1)));
    // The committed index is deliberately not stored (log_store.rs explains why).
    assert_eq!(log.read_committed().await.expect("committed"), None);
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1)));
    assert_eq!(state.last_log_id, Some(log_id(1, 3)));
    let indexes: Vec<u64> = log
        .try_get_log_entries(0..100)
        .await
        .expect("entries")
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(indexes, vec![2, 3]);

    // Appending continues right after the last entry, and after a purge beyond it.
    log.blocking_append([normal(2, 4, set(4))])
        .await
        .expect("append 4");
    log.purge(log_id(2, 10)).await.expect("purge past the end");
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id, Some(log_id(2, 10)));
    assert!(log
        .try_get_log_entries(0..)
        .await
        .expect("entries")
        .is_empty());
    log.blocking_append([normal(2, 11, set(11))])
        .await
        .expect("append 11");
    assert!(log.purge(log_id(2, 5)).await.is_err(), "purge backwards");
}

#[test]
fn opening_the_same_dir_twice_in_one_process_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open_storage::<KvApp>(dir.path()).expect("open");
    let err = open_storage::<KvApp>(dir.path())
        .err()
        .expect("second open of the same environment");
    assert!(
        format!("{err:#}").contains("open LMDB environment"),
        "{err:#}"
    );
    drop(first);
    open_storage::<KvApp>(dir.path()).expect("open again after drop");
}
