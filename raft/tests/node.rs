//! `RaftNode` end to end on one node: writes, restart from disk, snapshot-driven log purging.

mod common;

use common::{
    all_pairs, config, expected_pairs, key, set, value, KvApp, KvCommand, KvResponse,
    FAIL_EXPORT_KEY, WAIT,
};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{BasicNode, RaftLogReader, RaftMetrics, ServerState};
use quiver_raft::{open_storage, NodeId, RaftNode, WriteError};

const NODE: u64 = 1;

async fn write_n(node: &RaftNode<KvApp>, range: std::ops::Range<usize>) {
    for i in range {
        let resp = node.write(set(i)).await.expect("write");
        assert_eq!(resp, KvResponse { previous: None }, "key {i} is new");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_state_and_accepts_writes() {
    let dir = tempfile::tempdir().expect("tempdir");

    let node = RaftNode::<KvApp>::start(config(NODE, dir.path()))
        .await
        .expect("start");
    assert_eq!(node.node_id(), NODE);
    assert_eq!(node.wait_for_leader(WAIT).await.expect("leader"), NODE);
    write_n(&node, 0..50).await;
    // Responses come from the app, after apply.
    let resp = node
        .write(KvCommand::Set {
            key: key(0),
            value: value(0),
        })
        .await
        .expect("overwrite");
    assert_eq!(resp.previous, Some(value(0)));
    node.linearizable_barrier()
        .await
        .expect("barrier on the leader");

    // The app is told each entry's log index; it is authoritative for what is applied, while
    // metrics are published asynchronously and are waited for.
    let before = app_last_index(&node);
    assert!(before >= 51, "51 commands were applied, got index {before}");
    let m = wait_applied(&node, before).await;
    assert_eq!(m.last_applied.map(|l| l.index), Some(before));
    let before_term = m.vote.leader_id().term;
    assert_eq!(all_pairs(&node).expect("read"), expected_pairs(50));
    node.shutdown().await.expect("shutdown");
    drop(node);

    let node = RaftNode::<KvApp>::start(config(NODE, dir.path()))
        .await
        .expect("restart");
    // The state is on disk: readable before any election or re-apply.
    assert_eq!(all_pairs(&node).expect("read"), expected_pairs(50));
    assert_eq!(app_last_index(&node), before);
    let m = wait_applied(&node, before).await;
    assert_eq!(
        m.last_applied.map(|l| l.index),
        Some(before),
        "last_applied restored"
    );
    assert!(m.vote.leader_id().term >= before_term, "vote restored");

    assert_eq!(
        node.wait_for_leader(WAIT).await.expect("leader again"),
        NODE
    );
    write_n(&node, 50..60).await;
    assert_eq!(all_pairs(&node).expect("read"), expected_pairs(60));
    let after = app_last_index(&node);
    assert!(after >= before + 10, "{after} vs {before}");
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_applied_pairs_state_with_its_applied_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = RaftNode::<KvApp>::start(config(NODE, dir.path()))
        .await
        .expect("start");
    node.wait_for_leader(WAIT).await.expect("leader");
    write_n(&node, 0..10).await;
    let (applied, (pairs, app_index)) = node
        .read_applied(|app, rtxn| Ok((app.all(rtxn)?, app.last_index(rtxn)?)))
        .expect("read_applied");
    assert_eq!(pairs, expected_pairs(10));
    // The last entry the app saw is the last applied one (blank and membership entries come
    // first, at lower indexes).
    assert_eq!(applied, app_index);
    node.shutdown().await.expect("shutdown");
    assert!(
        node.read_applied(|_, _| Ok(())).is_err(),
        "refused once shut down"
    );
}

fn app_last_index(node: &RaftNode<KvApp>) -> u64 {
    node.read(|app, rtxn| app.last_index(rtxn))
        .expect("read")
        .expect("the app applied something")
}

async fn wait_applied(node: &RaftNode<KvApp>, index: u64) -> RaftMetrics<NodeId, BasicNode> {
    node.raft()
        .wait(Some(WAIT))
        .applied_index_at_least(Some(index), "metrics catch up with the app")
        .await
        .expect("metrics reach the applied index")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_bound_the_log_and_restart_recovers() {
    const SINCE_LAST: u64 = 20;
    const KEEP: u64 = 5;
    const WRITES: usize = 100;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(NODE, dir.path());
    cfg.snapshot_logs_since_last = SINCE_LAST;
    cfg.logs_to_keep_after_snapshot = KEEP;
    let purge_batch = cfg.raft_config().expect("config").purge_batch_size;

    let node = RaftNode::<KvApp>::start(cfg.clone()).await.expect("start");
    node.wait_for_leader(WAIT).await.expect("leader");
    write_n(&node, 0..WRITES).await;
    let last = app_last_index(&node);
    assert!(last >= WRITES as u64);

    // Ask for a final snapshot (a no-op if one is being built right now), then wait for the
    // policy's steady state: a snapshot within SINCE_LAST of the end, and the log purged up to
    // within KEEP + one purge batch of that snapshot.
    node.raft()
        .trigger()
        .snapshot()
        .await
        .expect("trigger snapshot");
    let m = node
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| {
                let Some(snap) = m.snapshot else { return false };
                let Some(purged) = m.purged else { return false };
                snap.index + SINCE_LAST > last && purged.index + KEEP + purge_batch > snap.index
            },
            "snapshot and purge caught up",
        )
        .await
        .expect("snapshot and purge");
    let snapshot = m.snapshot.expect("snapshot");
    node.shutdown().await.expect("shutdown");
    drop(node);

    // On disk: the log starts after the purge point, holds no holes, and is bounded.
    let snapshot_on_disk = {
        let (mut log, mut sm) = open_storage::<KvApp>(dir.path()).expect("open storage");
        let state = log.get_log_state().await.expect("log state");
        let purged = state.last_purged_log_id.expect("log was purged");
        let last_log = state.last_log_id.expect("log not empty");
        assert!(purged.index > 0, "first index advanced");
        assert!(
            last_log.index - purged.index < SINCE_LAST + KEEP + purge_batch,
            "log holds {} entries",
            last_log.index - purged.index
        );
        let entries = log.try_get_log_entries(0..).await.expect("entries");
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        let want: Vec<u64> = (purged.index + 1..=last_log.index).collect();
        assert_eq!(indexes, want);
        let current = sm
            .get_current_snapshot()
            .await
            .expect("current snapshot")
            .expect("a snapshot on disk");
        // The triggered build may finish after the wait was satisfied: at least as new.
        assert!(current.meta.last_log_id >= Some(snapshot));
        current.meta.last_log_id
    };

    let node = RaftNode::<KvApp>::start(cfg).await.expect("restart");
    node.wait_for_leader(WAIT).await.expect("leader again");
    assert_eq!(all_pairs(&node).expect("read"), expected_pairs(WRITES));
    let m = node.metrics();
    assert_eq!(m.state, ServerState::Leader);
    // Loaded from the snapshot file (a new build could only move it forward).
    assert!(
        m.snapshot.is_some() && m.snapshot >= snapshot_on_disk,
        "snapshot remembered"
    );
    assert!(app_last_index(&node) >= last);
    write_n(&node, WRITES..WRITES + 5).await;
    assert_eq!(all_pairs(&node).expect("read"), expected_pairs(WRITES + 5));
    node.shutdown().await.expect("shutdown");
}

/// A snapshot build that fails (here the app's export) does not stop the node: it keeps
/// committing and applying, its log is not purged, and the build asked for once the fault is gone
/// succeeds. Before, the build's error reached openraft's core, which stopped: every later write
/// failed as fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_snapshot_build_is_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(NODE, dir.path());
    // Builds only when asked for, and at once after a failure.
    cfg.snapshot_logs_since_last = 10_000;
    cfg.snapshot_retry_pause = std::time::Duration::ZERO;
    let node = RaftNode::<KvApp>::start(cfg).await.expect("start");
    node.wait_for_leader(WAIT).await.expect("leader");
    write_n(&node, 0..10).await;
    let fault = KvCommand::Set {
        key: FAIL_EXPORT_KEY.into(),
        value: "on".into(),
    };
    node.write(fault).await.expect("plant the fault");

    let mut failures = node.snapshot_build_failures();
    assert_eq!(*failures.borrow(), 0);
    node.raft()
        .trigger()
        .snapshot()
        .await
        .expect("trigger snapshot");
    tokio::time::timeout(WAIT, failures.wait_for(|&n| n >= 1))
        .await
        .expect("the build fails in time")
        .expect("the store is open");

    // Still running: writes commit and are applied; no snapshot was taken, nothing purged.
    write_n(&node, 10..20).await;
    let m = node.metrics();
    assert!(m.running_state.is_ok(), "{:?}", m.running_state);
    assert_eq!((m.snapshot, m.purged), (None, None));

    // The fault is gone: the next build succeeds and covers every write. (openraft took the
    // failed build's answer before it applied the writes above: both come through its one
    // notification queue, in order, so it is not "building" any more.)
    node.write(KvCommand::Delete {
        key: FAIL_EXPORT_KEY.into(),
    })
    .await
    .expect("clear the fault");
    let last = app_last_index(&node);
    node.raft()
        .trigger()
        .snapshot()
        .await
        .expect("trigger snapshot");
    let m = node
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= last),
            "a snapshot once the fault is gone",
        )
        .await
        .expect("snapshot");
    assert_eq!(*failures.borrow(), 1, "only the asked-for build failed");
    assert_eq!(all_pairs(&node).expect("read"), expected_pairs(20));
    node.shutdown().await.expect("shutdown");
    drop(node);

    // The snapshot on disk is that build's.
    let (_log, mut sm) = open_storage::<KvApp>(dir.path()).expect("open storage");
    let current = sm
        .get_current_snapshot()
        .await
        .expect("current snapshot")
        .expect("a snapshot on disk");
    assert_eq!(current.meta.last_log_id, m.snapshot);
}

/// A node whose log is purged but whose snapshot file is gone builds the snapshot as it starts;
/// if that build fails, the node does not start. (openraft would start it without the snapshot
/// its log relies on, now that a failed build is not an error, and the first follower needing
/// it would stop the leader.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_log_without_its_snapshot_gets_one_at_start_or_the_start_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(NODE, dir.path());
    cfg.snapshot_logs_since_last = 20;
    cfg.logs_to_keep_after_snapshot = 5;
    let snapshot_file = dir
        .path()
        .join(quiver_raft::STATE_DIR_NAME)
        .join(quiver_raft::SNAPSHOT_FILE_NAME);

    let node = RaftNode::<KvApp>::start(cfg.clone()).await.expect("start");
    node.wait_for_leader(WAIT).await.expect("leader");
    write_n(&node, 0..60).await;
    node.raft()
        .wait(Some(WAIT))
        .metrics(|m| m.purged.is_some(), "log purged")
        .await
        .expect("purged");
    node.shutdown().await.expect("shutdown");
    drop(node);

    std::fs::remove_file(&snapshot_file).expect("lose the snapshot file");
    let node = RaftNode::<KvApp>::start(cfg.clone())
        .await
        .expect("restart builds the snapshot");
    assert!(snapshot_file.exists(), "built again at start");
    node.wait_for_leader(WAIT).await.expect("leader");
    node.write(KvCommand::Set {
        key: FAIL_EXPORT_KEY.into(),
        value: "on".into(),
    })
    .await
    .expect("plant the fault");
    node.shutdown().await.expect("shutdown");
    drop(node);

    std::fs::remove_file(&snapshot_file).expect("lose the snapshot file");
    let error = RaftNode::<KvApp>::start(cfg)
        .await
        .err()
        .expect("no snapshot can be built: the start fails");
    assert!(
        format!("{error:#}").contains("injected export failure"),
        "{error:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_storage_and_refuses_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = RaftNode::<KvApp>::start(config(NODE, dir.path()))
        .await
        .expect("start");
    node.wait_for_leader(WAIT).await.expect("leader");
    write_n(&node, 0..3).await;
    let clone = node.clone();
    node.shutdown().await.expect("shutdown");
    node.shutdown().await.expect("second shutdown is a no-op");

    // A clone that outlives shutdown does not keep the environments open.
    let (_log, _sm) = open_storage::<KvApp>(dir.path()).expect("storage released");
    assert!(clone.read(|app, rtxn| app.all(rtxn)).is_err());
    match clone.write(set(9)).await {
        Err(WriteError::Fatal(_)) => {}
        other => panic!("write after shutdown: {other:?}"),
    }
    assert!(matches!(
        clone.linearizable_barrier().await,
        Err(WriteError::Fatal(_))
    ));
}

#[test]
fn config_defaults_and_validation() {
    let dir = std::path::PathBuf::from("/nonexistent");
    let cfg = quiver_raft::RaftNodeConfig::new(7, dir, "10.0.0.7:7000".into());
    assert_eq!(cfg.snapshot_logs_since_last, 10_000);
    assert_eq!(cfg.logs_to_keep_after_snapshot, 1_000);
    let raft = cfg.raft_config().expect("valid");
    assert_eq!(raft.cluster_name, "quiver");
    // openraft's "heartbeat interval" is the replication RPC timeout; Quiver sends the
    // heartbeats itself.
    assert_eq!(
        raft.heartbeat_interval,
        quiver_raft::HEARTBEAT_INTERVAL_MS * quiver_raft::REPLICATION_TIMEOUT_HEARTBEATS
    );
    assert!(!raft.enable_heartbeat);
    assert_eq!(
        (raft.election_timeout_min, raft.election_timeout_max),
        (
            quiver_raft::ELECTION_TIMEOUT_MIN_MS,
            quiver_raft::ELECTION_TIMEOUT_MAX_MS
        )
    );
    assert_eq!(raft.max_in_snapshot_log_to_keep, 1_000);
    assert_eq!(raft.purge_batch_size, quiver_raft::PURGE_BATCH_SIZE_MAX);

    let mut tiny = cfg.clone();
    tiny.snapshot_logs_since_last = 3;
    assert_eq!(tiny.raft_config().expect("valid").purge_batch_size, 3);
    tiny.snapshot_logs_since_last = 0;
    assert!(tiny.raft_config().is_err());

    // Timers scale with the heartbeat: elections after 3 to 6 missed heartbeats.
    let mut geo = cfg.clone();
    geo.heartbeat_ms = 200;
    let raft = geo.raft_config().expect("valid");
    assert_eq!(
        (
            raft.heartbeat_interval,
            raft.election_timeout_min,
            raft.election_timeout_max
        ),
        (400, 600, 1_200)
    );
    geo.heartbeat_ms = 5;
    let err = geo.raft_config().expect_err("too short");
    assert!(format!("{err:#}").contains("heartbeat"), "{err:#}");
}

/// What a recording `LogDisk` saw: (`before_write` synced flags, `after_write` synced flags,
/// the directory each `before_write` named).
#[derive(Default)]
struct Recorded {
    before: Vec<bool>,
    after: Vec<bool>,
    dirs: Vec<std::path::PathBuf>,
}

struct RecordingDisk {
    skip_fsync: bool,
    seen: std::sync::Mutex<Recorded>,
}

impl quiver_raft::LogDisk for RecordingDisk {
    fn skip_fsync(&self) -> bool {
        self.skip_fsync
    }

    fn before_write(&self, log_dir: &std::path::Path, synced: bool) {
        let mut seen = self.seen.lock().expect("lock");
        seen.before.push(synced);
        seen.dirs.push(log_dir.to_path_buf());
    }

    fn after_write(&self, synced: bool) {
        self.seen.lock().expect("lock").after.push(synced);
    }
}

/// Writes through a node with a harness disk attached; returns what the disk saw.
async fn writes_seen_by_disk(skip_fsync: bool) -> Recorded {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = std::sync::Arc::new(RecordingDisk {
        skip_fsync,
        seen: Default::default(),
    });
    let mut cfg = config(NODE, dir.path());
    cfg.log_disk = Some(quiver_raft::LogDiskHandle(disk.clone()));
    let node = RaftNode::<KvApp>::start(cfg).await.expect("start");
    node.wait_for_leader(WAIT).await.expect("leader");
    write_n(&node, 0..5).await;
    node.shutdown().await.expect("shutdown");
    drop(node);
    let seen = std::mem::take(&mut *disk.seen.lock().expect("lock"));
    seen
}

/// The durability seam: a harness disk hears about every log write (vote, appends, committed),
/// each before and after, naming the log directory; the log stays fully synced unless the planted
/// `skip_fsync` turns its fsyncs off, and then every write says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harness_disk_is_told_about_every_log_write_and_only_the_plant_skips_fsync() {
    let synced = writes_seen_by_disk(false).await;
    assert!(
        synced.before.len() >= 7,
        "vote, initial membership, 5 appends at least: {:?}",
        synced.before
    );
    assert_eq!(
        synced.before.len(),
        synced.after.len(),
        "each write completes"
    );
    assert!(synced.before.iter().chain(&synced.after).all(|s| *s));
    assert!(
        synced
            .dirs
            .iter()
            .all(|d| d.ends_with(quiver_raft::LOG_DIR_NAME)),
        "{:?}",
        synced.dirs
    );

    let planted = writes_seen_by_disk(true).await;
    assert!(planted.before.len() >= 7, "{:?}", planted.before);
    assert!(planted.before.iter().chain(&planted.after).all(|s| !s));
}

/// Group commit: many concurrent client writes share Raft entries (so log transactions, each
/// one fsync) instead of costing one each; every write gets its own answer; all of them survive
/// a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries_and_survive_a_restart() {
    const WRITES: usize = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = std::sync::Arc::new(RecordingDisk {
        skip_fsync: false,
        seen: Default::default(),
    });
    let mut cfg = config(NODE, dir.path());
    cfg.log_disk = Some(quiver_raft::LogDiskHandle(disk.clone()));
    let node = RaftNode::<KvApp>::start(cfg).await.expect("start");
    node.wait_for_leader(WAIT).await.expect("leader");
    let before = disk.seen.lock().expect("lock").after.len();
    let writes = (0..WRITES)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(async move { node.write(set(i)).await })
        })
        .collect::<Vec<_>>();
    for write in writes {
        let response = write.await.expect("join").expect("write acknowledged");
        assert_eq!(response, KvResponse { previous: None }, "its own answer");
    }
    let transactions = disk.seen.lock().expect("lock").after.len() - before;
    assert!(
        transactions < WRITES / 4,
        "{WRITES} concurrent writes took {transactions} log transactions"
    );
    node.shutdown().await.expect("shutdown");
    drop(node);

    let node = RaftNode::<KvApp>::start(config(NODE, dir.path()))
        .await
        .expect("restart");
    node.wait_for_leader(WAIT)
        .await
        .expect("leader after restart");
    assert_eq!(
        all_pairs(&node).expect("read"),
        expected_pairs(WRITES),
        "every acknowledged write survived"
    );
    node.shutdown().await.expect("shutdown");
}

/// `RaftNode::handle_peer` decodes whatever a peer (or the simulator's network) hands it. Hostile
/// bodies — empty, NUL bytes, over-long or non-JSON, unicode, a target of u64::MAX, a body of the
/// wrong kind for its method — are refused without touching the state, and the node keeps
/// serving writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_requests_are_refused_and_change_nothing() {
    use quiver_raft::{Body, Method, PeerRefusal};

    let dir = tempfile::tempdir().expect("tempdir");
    let node = RaftNode::<KvApp>::start(config(NODE, dir.path()))
        .await
        .expect("start");
    node.wait_for_leader(WAIT).await.expect("leader");
    write_n(&node, 0..3).await;
    let before = all_pairs(&node).expect("read");
    let applied = app_last_index(&node);

    let long = vec![b'{'; 1 << 20];
    let payloads: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\0\0\0".to_vec(),
        long,
        "{\"cmd\": \"ünïcödé\u{202e}\"}".as_bytes().to_vec(),
        b"{\"timeout_ms\": 18446744073709551616}".to_vec(),
        b"../../etc/passwd".to_vec(),
        b"null".to_vec(),
    ];
    let json_methods = [
        Method::Forward,
        Method::ReadIndex,
        Method::AddMember,
        Method::RemoveMember,
        Method::TransferLeader,
    ];
    for json in &payloads {
        for method in json_methods {
            let refused = node.handle_peer(method, Body::Json(json.clone())).await;
            assert!(
                matches!(refused, Err(PeerRefusal::Undecodable(_))),
                "{method:?} with {} bytes: {refused:?}",
                json.len()
            );
        }
        for method in [Method::AppendEntries, Method::Vote] {
            let raft = Body::Raft {
                target: NODE,
                json: json.clone(),
            };
            let refused = node.handle_peer(method, raft).await;
            assert!(
                matches!(refused, Err(PeerRefusal::Undecodable(_))),
                "{method:?}: {refused:?}"
            );
        }
        let snapshot = Body::Snapshot {
            target: NODE,
            header_json: json.clone(),
            data: json.clone(),
        };
        let refused = node.handle_peer(Method::InstallSnapshot, snapshot).await;
        assert!(
            matches!(refused, Err(PeerRefusal::Undecodable(_))),
            "InstallSnapshot: {refused:?}"
        );
    }
    for target in [0, NODE + 1, u64::MAX] {
        let vote = Body::Raft {
            target,
            json: b"{}".to_vec(),
        };
        let refused = node.handle_peer(Method::Vote, vote).await;
        assert!(
            matches!(refused, Err(PeerRefusal::WrongTarget(_))),
            "target {target}: {refused:?}"
        );
    }
    // The largest budget a peer can ask for is capped (the read index answers at once here).
    let extreme = Body::Json(b"{\"timeout_ms\": 18446744073709551615}".to_vec());
    let answered = node.handle_peer(Method::ReadIndex, extreme).await;
    assert!(answered.is_ok(), "{answered:?}");
    // A body of the wrong kind for its method.
    let refused = node
        .handle_peer(Method::AppendEntries, Body::Json(b"{}".to_vec()))
        .await;
    assert!(
        matches!(refused, Err(PeerRefusal::Undecodable(_))),
        "{refused:?}"
    );

    assert_eq!(all_pairs(&node).expect("read"), before, "nothing changed");
    assert_eq!(app_last_index(&node), applied);
    write_n(&node, 3..5).await;
    assert_eq!(
        all_pairs(&node).expect("read"),
        expected_pairs(5),
        "still serving"
    );
    node.shutdown().await.expect("shutdown");
}
