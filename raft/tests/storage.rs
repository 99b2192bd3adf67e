//! The heed stores against openraft's storage suite, plus the properties the suite does not
//! cover: app state in snapshots, batch atomicity, durability across reopen.

mod common;

use std::collections::BTreeSet;

use common::{key, set, value, KvApp, KvCommand, KvResponse, FAIL_EXPORT_KEY};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader,
    RaftSnapshotBuilder, StorageError, StorageIOError, Vote,
};
use quiver_raft::{
    open_storage, LogStore, NodeId, SnapshotData, StateMachineStore, TypeConfig,
    SNAPSHOT_RETRY_PAUSE_DEFAULT,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

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

/// All the bytes of snapshot data, read from its start.
async fn bytes_of(data: &mut SnapshotData) -> Vec<u8> {
    data.seek(std::io::SeekFrom::Start(0)).await.expect("seek");
    let mut bytes = Vec::new();
    data.read_to_end(&mut bytes)
        .await
        .expect("read snapshot data");
    bytes
}

/// `bytes` received by `sm` as openraft receives a snapshot: written into the data it gives.
async fn received(sm: &mut StateMachineStore<KvApp>, bytes: &[u8]) -> Box<SnapshotData> {
    let mut data = sm.begin_receiving_snapshot().await.expect("begin");
    data.write_all(bytes).await.expect("receive");
    data.shutdown().await.expect("finish receiving");
    data
}

/// The temp files in a store's state directory (none once nothing is being built or received).
fn temp_files(data_dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("state"))
        .expect("list state dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    names.sort();
    names
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
    let mut snap = a.build_snapshot().await.expect("build");
    let bytes = bytes_of(&mut snap.snapshot).await;

    let mut lying_meta = snap.meta.clone();
    lying_meta.last_log_id = Some(log_id(1, 50));
    let data = received(&mut b, &bytes).await;
    let err = b
        .install_snapshot(&lying_meta, data)
        .await
        .expect_err("meta and data disagree");
    assert!(err.to_string().contains("meta says"), "{err}");

    let truncated = received(&mut b, &bytes[..bytes.len() - 1]).await;
    assert!(b.install_snapshot(&snap.meta, truncated).await.is_err());
    let nothing = b.begin_receiving_snapshot().await.expect("begin");
    assert!(b.install_snapshot(&snap.meta, nothing).await.is_err());

    // Nothing was installed.
    assert!(kv_pairs(&b).is_empty());
    assert_eq!(b.applied_state().await.expect("applied").0, None);
    assert!(b.get_current_snapshot().await.expect("get").is_none());
    assert_eq!(temp_files(dir_b.path()), Vec::<String>::new());
}

#[tokio::test]
async fn current_snapshot_never_moves_backwards() {
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    let (_la, mut old_src) = open_storage::<KvApp>(dir_a.path()).expect("open a");
    let (_lb, mut b) = open_storage::<KvApp>(dir_b.path()).expect("open b");
    old_src.apply([normal(1, 1, set(0))]).await.expect("apply");
    let mut old = old_src.build_snapshot().await.expect("old snapshot");
    let old_bytes = bytes_of(&mut old.snapshot).await;

    b.apply([normal(1, 1, set(0)), normal(1, 2, set(1))])
        .await
        .expect("apply");
    let newer = b.build_snapshot().await.expect("newer snapshot");
    // A concurrent, older build finishing late must not replace the newer file.
    let data = received(&mut b, &old_bytes).await;
    b.install_snapshot(&old.meta, data)
        .await
        .expect("install older");
    let current = b.get_current_snapshot().await.expect("get").expect("some");
    assert_eq!(current.meta, newer.meta);
}

fn fail_export(on: bool) -> KvCommand {
    match on {
        true => KvCommand::Set {
            key: FAIL_EXPORT_KEY.into(),
            value: "on".into(),
        },
        false => KvCommand::Delete {
            key: FAIL_EXPORT_KEY.into(),
        },
    }
}

/// A failed build is not an error: it answers with the current snapshot's meta (nothing newer,
/// so openraft purges nothing), or a meta with no log id when there is none, and the snapshot on
/// disk stays as it was. Builds asked for within the retry pause keep it too; the first one after
/// the pause builds.
#[tokio::test(start_paused = true)]
async fn a_failed_build_keeps_the_current_snapshot_and_retries_after_a_pause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = open_storage::<KvApp>(dir.path()).expect("open");
    let failures = sm.snapshot_build_failures();
    sm.apply([
        membership(1, 1),
        normal(1, 2, set(0)),
        normal(1, 3, fail_export(true)),
    ])
    .await
    .expect("apply");
    let membership_applied = sm.applied_state().await.expect("applied").1;

    // No snapshot yet: the failed build says "none", with the applied membership.
    let kept = sm
        .build_snapshot()
        .await
        .expect("a failed build is not an error");
    assert_eq!(kept.meta.last_log_id, None);
    assert_eq!(kept.meta.last_membership, membership_applied);
    assert_eq!(*failures.borrow(), 1);
    assert!(sm.get_current_snapshot().await.expect("get").is_none());

    // The fault is gone, but the pause has not passed: not tried.
    sm.apply([normal(1, 4, fail_export(false))])
        .await
        .expect("apply");
    let kept = sm.build_snapshot().await.expect("build");
    assert_eq!(kept.meta.last_log_id, None);
    assert_eq!(*failures.borrow(), 1, "not tried again within the pause");
    tokio::time::advance(SNAPSHOT_RETRY_PAUSE_DEFAULT).await;
    let built = sm.build_snapshot().await.expect("build");
    assert_eq!(built.meta.last_log_id, Some(log_id(1, 4)));

    // A failure after a success keeps that snapshot, on disk and in the answer; the data sent
    // to a follower is still that snapshot's.
    sm.apply([normal(1, 5, set(1)), normal(1, 6, fail_export(true))])
        .await
        .expect("apply");
    let kept = sm.build_snapshot().await.expect("build");
    assert_eq!(kept.meta, built.meta);
    assert_eq!(*failures.borrow(), 2);
    let current = sm
        .get_current_snapshot()
        .await
        .expect("get")
        .expect("current");
    assert_eq!(current.meta, built.meta);
    let follower_dir = tempfile::tempdir().expect("tempdir");
    let (_log_f, mut follower) = open_storage::<KvApp>(follower_dir.path()).expect("open");
    follower
        .install_snapshot(&current.meta, current.snapshot)
        .await
        .expect("install the kept snapshot");
    assert_eq!(kv_pairs(&follower), vec![(key(0), value(0))]);
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
    assert!(format!("{err:#}").contains("is already open"), "{err:#}");
    drop(first);
    open_storage::<KvApp>(dir.path()).expect("open again after drop");
}

/// The log's segment files, oldest first.
fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let log_dir = dir.join(quiver_raft::LOG_DIR_NAME);
    let mut out: Vec<_> = std::fs::read_dir(&log_dir)
        .expect("list the log dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    out.sort();
    out
}

/// Offset just past the last non-zero byte of `path`: the end of what the log wrote into it
/// (the rest is the zero fill).
fn written_end(path: &std::path::Path) -> usize {
    let bytes = std::fs::read(path).expect("read segment");
    bytes
        .iter()
        .rposition(|b| *b != 0)
        .expect("something written")
        + 1
}

fn flip_byte(path: &std::path::Path, at: usize) {
    xor_byte(path, at, 0x55);
}

fn xor_byte(path: &std::path::Path, at: usize, mask: u8) {
    let mut bytes = std::fs::read(path).expect("read segment");
    bytes[at] ^= mask;
    std::fs::write(path, bytes).expect("write segment");
}

/// What a crash during the write of the record at `[start, end)` can leave of it: the sectors
/// (512 bytes) that did not reach the disk hold the zeros they held before. Here the record's
/// share of its last sector is lost (all of it, if it lies in one sector).
fn tear(path: &std::path::Path, start: usize, end: usize) {
    let boundary = (end - 1) / 512 * 512;
    let from = if boundary > start { boundary } else { start };
    let mut bytes = std::fs::read(path).expect("read segment");
    bytes[from..end].fill(0);
    std::fs::write(path, bytes).expect("write segment");
}

/// Open the stores in `dir` with `options`, append entries 0..n of term 1 one write each, and
/// close them.
async fn append_one_by_one(dir: &std::path::Path, n: u64, options: quiver_raft::LogOptions) {
    let (mut log, _sm) = quiver_raft::open_storage_with::<KvApp>(dir, options).expect("open");
    for i in 0..n {
        log.blocking_append([normal(1, i, set(i as usize))])
            .await
            .expect("append");
    }
}

async fn log_ids(log: &mut LogStore<KvApp>) -> Vec<LogId<NodeId>> {
    log.try_get_log_entries(0..)
        .await
        .expect("entries")
        .iter()
        .map(|e| e.log_id)
        .collect()
}

/// A record torn by a crash (part of it never reached the disk) ends the log at reopen: the
/// entries before it are kept, and appending continues in its place.
#[tokio::test]
async fn a_torn_last_record_is_cut_and_appending_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    append_one_by_one(dir.path(), 5, Default::default()).await;
    let segment = &segments(dir.path())[0];
    let end = written_end(segment);
    tear(segment, end - end / 5, end); // five records of the same length

    let (mut log, _sm) = open_storage::<KvApp>(dir.path()).expect("reopen");
    assert_eq!(
        log_ids(&mut log).await,
        (0..4).map(|i| log_id(1, i)).collect::<Vec<_>>(),
        "entry 4 was torn"
    );
    log.blocking_append([normal(2, 4, set(4))])
        .await
        .expect("append after the cut");
    drop(log);
    drop(_sm);
    let (mut log, _sm) = open_storage::<KvApp>(dir.path()).expect("reopen again");
    assert_eq!(log_ids(&mut log).await.last(), Some(&log_id(2, 4)));
    assert_eq!(
        log.get_log_state().await.expect("state").last_log_id,
        Some(log_id(2, 4))
    );
}

/// A crash can persist a later write and tear an earlier one. Recovery cuts at the torn record
/// and clears everything behind it, so the later (stale) record cannot come back after a record
/// of the same length is written in the torn one's place.
#[tokio::test]
async fn a_stale_record_behind_a_rewritten_one_is_not_revived() {
    let dir = tempfile::tempdir().expect("tempdir");
    append_one_by_one(dir.path(), 3, Default::default()).await;
    // Tear entry 1 (the middle record): it and, behind it, entry 2 are cut at reopen.
    let segment = segments(dir.path())[0].clone();
    let end = written_end(&segment);
    let record = end / 3; // three records of the same length
    tear(&segment, record, 2 * record);
    {
        let (mut log, _sm) = open_storage::<KvApp>(dir.path()).expect("reopen");
        assert_eq!(log_ids(&mut log).await, vec![log_id(1, 0)]);
        assert_eq!(
            written_end(&segment),
            record,
            "the torn record and the stale one behind it are cleared"
        );
        // Entry 1 again, from a new leader: a record exactly as long as the torn one, so that
        // the stale entry 2 (term 1) follows it byte for byte.
        log.blocking_append([normal(2, 1, set(1))])
            .await
            .expect("rewrite entry 1");
    }
    let (mut log, _sm) = open_storage::<KvApp>(dir.path()).expect("reopen again");
    assert_eq!(
        log_ids(&mut log).await,
        vec![log_id(1, 0), log_id(2, 1)],
        "the stale entry 2 of term 1 must not follow entry 1 of term 2"
    );
}

/// Damage that is not a torn tail (a bad record in a closed segment, a missing segment) stops the
/// log from opening, instead of leaving a silent hole of acknowledged entries; a segment that was
/// being started when the node stopped is removed.
#[tokio::test]
async fn damage_inside_the_log_refuses_to_open_and_an_unfinished_segment_is_removed() {
    let options = quiver_raft::LogOptions {
        segment_bytes_target: 2048,
    };
    let open =
        |dir: &std::path::Path| quiver_raft::open_storage_with::<KvApp>(dir, options).map(|_| ());

    let unfinished = tempfile::tempdir().expect("tempdir");
    append_one_by_one(unfinished.path(), 60, options).await;
    let log_dir = unfinished.path().join(quiver_raft::LOG_DIR_NAME);
    let stray = log_dir.join("00000000000000000099.wal.new");
    std::fs::write(&stray, [0u8; 64]).expect("write a stray new segment");
    open(unfinished.path()).expect("opens");
    assert!(!stray.exists(), "the unfinished segment is removed");

    let bad_record = tempfile::tempdir().expect("tempdir");
    append_one_by_one(bad_record.path(), 60, options).await;
    let closed = &segments(bad_record.path())[1];
    flip_byte(closed, 100);
    let err = open(bad_record.path()).expect_err("a bad record in a closed segment");
    assert!(format!("{err:#}").contains("is damaged"), "{err:#}");

    let missing = tempfile::tempdir().expect("tempdir");
    append_one_by_one(missing.path(), 60, options).await;
    std::fs::remove_file(&segments(missing.path())[1]).expect("remove a segment");
    let err = open(missing.path()).expect_err("a missing segment");
    assert!(format!("{err:#}").contains("is missing"), "{err:#}");
}

/// A byte flipped in the middle of the active segment is not a torn write (every sector of the
/// record holds written bytes): the store refuses to open instead of cutting the log there and
/// dropping the entries after it, and the failed open changes nothing on disk.
#[tokio::test]
async fn a_byte_flipped_inside_the_active_segment_refuses_to_open_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    append_one_by_one(dir.path(), 20, Default::default()).await;
    let segment = segments(dir.path())[0].clone();
    let middle = written_end(&segment) / 2;
    let before = std::fs::read(&segment).expect("read");
    flip_byte(&segment, middle);
    let err = match open_storage::<KvApp>(dir.path()) {
        Ok(_) => panic!("a flipped byte in the middle of the log must not open"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("is damaged") && err.contains("refuses to start"),
        "{err}"
    );
    let mut after = std::fs::read(&segment).expect("read");
    after[middle] ^= 0x55;
    assert_eq!(after, before, "the failed open wrote nothing");
    flip_byte(&segment, middle);
    let (mut log, _sm) = open_storage::<KvApp>(dir.path()).expect("the repaired log opens");
    assert_eq!(log_ids(&mut log).await.len(), 20, "nothing was dropped");
}

/// A log in `dir` to damage: 12 entries of term 1, the vote for term 7, 4 entries of term 7, in
/// one segment. Returns the segment, its bytes, where its written records end, and the ids.
async fn log_to_damage(
    dir: &std::path::Path,
) -> (std::path::PathBuf, Vec<u8>, usize, Vec<LogId<NodeId>>) {
    append_one_by_one(dir, 12, Default::default()).await;
    {
        let (mut log, _sm) = open_storage::<KvApp>(dir).expect("open");
        log.save_vote(&Vote::new(7, 1)).await.expect("vote");
        log.blocking_append((12..16).map(|i| normal(7, i, set(i as usize))))
            .await
            .expect("append");
    }
    let segment = segments(dir)[0].clone();
    let pristine = std::fs::read(&segment).expect("read");
    let end = written_end(&segment);
    let ids = (0..12)
        .map(|i| log_id(1, i))
        .chain((12..16).map(|i| log_id(7, i)))
        .collect();
    (segment, pristine, end, ids)
}

/// Property, over seeded random single-byte changes anywhere in what the log wrote (entries and
/// a vote): opening either refuses, naming the damage, or reads back exactly the entries and the
/// vote that were written. It never silently drops an acknowledged entry or the vote.
#[tokio::test]
async fn any_single_byte_change_is_refused_or_harmless() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().expect("tempdir");
    let (segment, pristine, end, want) = log_to_damage(dir.path()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let (mut refused, mut harmless) = (0, 0);
    for _ in 0..200 {
        std::fs::write(&segment, &pristine).expect("restore");
        let at = rng.gen_range(0..end);
        xor_byte(&segment, at, rng.gen_range(1..=255u8));
        match open_storage::<KvApp>(dir.path()) {
            Err(e) => {
                let e = format!("{e:#}");
                assert!(e.contains("is damaged"), "byte {at}: {e}");
                refused += 1;
            }
            Ok((mut log, _sm)) => {
                assert_eq!(log_ids(&mut log).await, want, "byte {at} changed");
                assert_eq!(
                    log.read_vote().await.expect("vote"),
                    Some(Vote::new(7, 1)),
                    "byte {at} changed"
                );
                harmless += 1;
            }
        }
    }
    assert!(refused > 150, "{refused} refused, {harmless} harmless");
}

/// Segments roll over at their target size, and a purge deletes the ones whose entries are all
/// purged; the vote and the purge point, recorded in older segments, survive that and a reopen.
#[tokio::test]
async fn segments_roll_over_and_purged_ones_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = quiver_raft::LogOptions {
        segment_bytes_target: 2048,
    };
    {
        let (mut log, _sm) =
            quiver_raft::open_storage_with::<KvApp>(dir.path(), options).expect("open");
        log.save_vote(&Vote::new(7, 1)).await.expect("vote");
        for i in 0..60 {
            log.blocking_append([normal(7, i, set(i as usize))])
                .await
                .expect("append");
        }
        let rolled = segments(dir.path()).len();
        assert!(
            rolled >= 4,
            "{rolled} segments for 60 entries of ~100 bytes"
        );
        log.purge(log_id(7, 49)).await.expect("purge");
        let kept = segments(dir.path()).len();
        assert!(
            kept < rolled && kept >= 1,
            "{kept} of {rolled} segments kept"
        );
        assert_eq!(
            log_ids(&mut log).await,
            (50..60).map(|i| log_id(7, i)).collect::<Vec<_>>()
        );
    }
    let (mut log, _sm) =
        quiver_raft::open_storage_with::<KvApp>(dir.path(), options).expect("reopen");
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(7, 1)));
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(7, 49)));
    assert_eq!(state.last_log_id, Some(log_id(7, 59)));
    assert_eq!(
        log_ids(&mut log).await,
        (50..60).map(|i| log_id(7, i)).collect::<Vec<_>>()
    );
}

/// A data directory written by the LMDB log store is migrated at open: vote, purge point and
/// entries come over, and the LMDB files are gone.
#[tokio::test]
async fn an_lmdb_log_is_migrated_at_open() {
    use quiver_raft::heed::byteorder::BigEndian;
    use quiver_raft::heed::types::{Bytes, Str, U64};
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join(quiver_raft::LOG_DIR_NAME);
    std::fs::create_dir_all(&log_dir).expect("mkdir");
    {
        // The old store's layout: `entries` (big-endian index → entry JSON), `meta` (JSON).
        // SAFETY: opened once in this test and closed before the store opens it.
        let env = unsafe {
            quiver_raft::heed::EnvOpenOptions::new()
                .max_dbs(2)
                .map_size(1 << 30)
                .open(&log_dir)
        }
        .expect("open lmdb");
        let mut wtxn = env.write_txn().expect("txn");
        let entries: quiver_raft::heed::Database<U64<BigEndian>, Bytes> =
            env.create_database(&mut wtxn, Some("entries")).expect("db");
        let meta: quiver_raft::heed::Database<Str, Bytes> =
            env.create_database(&mut wtxn, Some("meta")).expect("db");
        for i in 3..6 {
            let json = serde_json::to_vec(&normal(2, i, set(i as usize))).expect("json");
            entries.put(&mut wtxn, &i, &json).expect("put");
        }
        let vote = serde_json::to_vec(&Vote::new(2, 1)).expect("json");
        meta.put(&mut wtxn, "vote", &vote).expect("put");
        let purged = serde_json::to_vec(&log_id(1, 2)).expect("json");
        meta.put(&mut wtxn, "last_purged", &purged).expect("put");
        wtxn.commit().expect("commit");
        env.prepare_for_closing().wait();
    }
    {
        let (mut log, _sm) = open_storage::<KvApp>(dir.path()).expect("open migrates");
        assert!(
            !log_dir.join("data.mdb").exists(),
            "the LMDB files are removed"
        );
        assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(2, 1)));
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
        assert_eq!(
            log_ids(&mut log).await,
            (3..6).map(|i| log_id(2, i)).collect::<Vec<_>>()
        );
        log.blocking_append([normal(2, 6, set(6))])
            .await
            .expect("append after migration");
    }
    let (mut log, _sm) = open_storage::<KvApp>(dir.path()).expect("reopen");
    assert_eq!(log_ids(&mut log).await.len(), 4);
}

/// The configuration of this file's property tests: a fixed seed, no failure files.
fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5157_4552),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

/// How a snapshot's bytes are damaged on the way: cut, padded, one byte changed, bytes inserted.
#[derive(Clone, Debug)]
enum SnapshotDamage {
    Cut(proptest::sample::Index),
    Pad(Vec<u8>),
    Flip(proptest::sample::Index, u8),
    Insert(proptest::sample::Index, Vec<u8>),
}

fn snapshot_damage() -> impl proptest::strategy::Strategy<Value = SnapshotDamage> {
    use proptest::prelude::*;
    prop_oneof![
        any::<proptest::sample::Index>().prop_map(SnapshotDamage::Cut),
        proptest::collection::vec(any::<u8>(), 1..8).prop_map(SnapshotDamage::Pad),
        (any::<proptest::sample::Index>(), 1u8..)
            .prop_map(|(at, mask)| SnapshotDamage::Flip(at, mask)),
        (
            any::<proptest::sample::Index>(),
            proptest::collection::vec(any::<u8>(), 1..8)
        )
            .prop_map(|(at, bytes)| SnapshotDamage::Insert(at, bytes)),
    ]
}

/// A store's whole observable state: its app's pairs, what it says it applied, its current
/// snapshot's meta.
async fn observed(
    sm: &mut StateMachineStore<KvApp>,
) -> (
    Vec<(String, String)>,
    String,
    Option<openraft::SnapshotMeta<NodeId, BasicNode>>,
) {
    let applied = format!("{:?}", sm.applied_state().await.expect("applied"));
    let current = sm
        .get_current_snapshot()
        .await
        .expect("current snapshot")
        .map(|s| s.meta);
    (kv_pairs(sm), applied, current)
}

/// Property, over a real snapshot damaged on a disk or on its way to a follower (cut, padded,
/// bytes inserted, one byte changed anywhere, the app's own bytes included): installing it never
/// panics and is refused, leaving the follower's state, applied log id and current snapshot as
/// they were.
#[test]
fn installing_a_damaged_snapshot_is_refused_without_a_trace() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let (_log, snapshot) = runtime.block_on(async {
        let (log, mut leader) = open_storage::<KvApp>(leader_dir.path()).expect("open leader");
        let mut entries = vec![membership(1, 1)];
        entries.extend((0..5).map(|i| normal(1, i as u64 + 2, set(i))));
        leader.apply(entries).await.expect("apply");
        let mut snap = leader.build_snapshot().await.expect("build snapshot");
        let bytes = bytes_of(&mut snap.snapshot).await;
        (log, (snap.meta, bytes))
    });
    let (meta, pristine) = snapshot;

    proptest!(proptest_config(64), |(damage in snapshot_damage())| {
        let mut data = pristine.clone();
        match &damage {
            SnapshotDamage::Cut(at) => data.truncate(at.index(data.len())),
            SnapshotDamage::Pad(bytes) => data.extend_from_slice(bytes),
            SnapshotDamage::Flip(at, mask) => {
                let at = at.index(data.len());
                data[at] ^= mask;
            }
            SnapshotDamage::Insert(at, bytes) => {
                let at = at.index(data.len() + 1);
                data.splice(at..at, bytes.iter().copied());
            }
        }
        runtime.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let (_log, mut follower) = open_storage::<KvApp>(dir.path()).expect("open follower");
            follower.apply([normal(1, 1, set(99))]).await.expect("pre-existing state");
            let before = observed(&mut follower).await;
            let data = received(&mut follower, &data).await;
            let installed = follower.install_snapshot(&meta, data).await;
            prop_assert!(installed.is_err(), "a damaged snapshot was installed: {:?}", damage);
            prop_assert_eq!(observed(&mut follower).await, before);
            prop_assert_eq!(temp_files(dir.path()), Vec::<String>::new());
            Ok(())
        })?;
    });
}

/// How the log's bytes are damaged: a range overwritten with arbitrary bytes, or with zeros
/// (what a lost write leaves), or everything from a point on zeroed or cut off.
#[derive(Clone, Debug)]
enum LogDamage {
    Overwrite(proptest::sample::Index, Vec<u8>),
    Zero(proptest::sample::Index, usize),
    ZeroTail(proptest::sample::Index),
    Truncate(proptest::sample::Index),
}

fn log_damage() -> impl proptest::strategy::Strategy<Value = LogDamage> {
    use proptest::prelude::*;
    prop_oneof![
        (
            any::<proptest::sample::Index>(),
            proptest::collection::vec(any::<u8>(), 1..64)
        )
            .prop_map(|(at, bytes)| LogDamage::Overwrite(at, bytes)),
        (any::<proptest::sample::Index>(), 1usize..1024)
            .prop_map(|(at, len)| LogDamage::Zero(at, len)),
        any::<proptest::sample::Index>().prop_map(LogDamage::ZeroTail),
        any::<proptest::sample::Index>().prop_map(LogDamage::Truncate),
    ]
}

/// Property, over seeded damage to arbitrary byte ranges of what the log wrote (entries and a
/// vote): opening never panics; it refuses, naming the damage and writing nothing, or it reads
/// back a prefix of the entries that were written: never an entry that was not written, never
/// one after a hole.
#[test]
fn damaged_byte_ranges_are_refused_or_read_back_as_a_prefix() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (segment, pristine, end, written) = runtime.block_on(log_to_damage(dir.path()));

    proptest!(proptest_config(64), |(damage in log_damage())| {
        let mut bytes = pristine.clone();
        match &damage {
            LogDamage::Overwrite(at, with) => {
                let at = at.index(end);
                let to = (at + with.len()).min(bytes.len());
                bytes[at..to].copy_from_slice(&with[..to - at]);
            }
            LogDamage::Zero(at, len) => {
                let at = at.index(end);
                let to = (at + len).min(bytes.len());
                bytes[at..to].fill(0);
            }
            LogDamage::ZeroTail(at) => {
                let at = at.index(end);
                bytes[at..].fill(0);
            }
            LogDamage::Truncate(at) => bytes.truncate(at.index(end)),
        }
        std::fs::write(&segment, &bytes).expect("damage");
        let opened = open_storage::<KvApp>(dir.path());
        match opened {
            Err(e) => {
                let e = format!("{e:#}");
                prop_assert!(e.contains("is damaged"), "{:?}: {}", damage, e);
                let after = std::fs::read(&segment).expect("read");
                prop_assert!(after == bytes, "a refused open wrote to the log: {:?}", damage);
            }
            Ok((mut log, _sm)) => {
                let read = runtime.block_on(log_ids(&mut log));
                prop_assert!(
                    written.starts_with(&read),
                    "{:?}: read back {:?}",
                    damage,
                    read
                );
            }
        }
        std::fs::write(&segment, &pristine).expect("restore");
        // Each case starts from the same log: no other segment was made.
        prop_assert_eq!(segments(dir.path()), vec![segment.clone()]);
    });
}
