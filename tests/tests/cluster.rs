//! End-to-end cluster tests: real `quiver-node` processes on loopback,
//! joined under one cluster CA, driven by the real CLI and the SDK.
//!
//! Waiting is always on a condition with a deadline (`wait_until`), never a
//! fixed sleep standing in for synchronisation.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quiver_client::proto::{CreateModelRequest, ReadConsistency};
use quiver_tests::{hash_file, quiver, write_random_file, NodeProcess};
use quiver_transfer::{ChunkStore, Hash};

const NODE: &str = env!("CARGO_BIN_EXE_e2e-quiver-node");
const CLI: &str = env!("CARGO_BIN_EXE_e2e-quiver");
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it returns Some, or panics naming `what` at the deadline.
fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<Option<NodeProcess>>,
    founder_peer: String,
    extra: Vec<String>,
}

impl Cluster {
    fn start(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let founder = Self::start_founder(&dir.path().join("node-1"), &extra);
        let founder_peer = founder
            .peer_addr
            .clone()
            .expect("serve prints its peer address");
        let mut cluster = Cluster {
            dir,
            nodes: vec![Some(founder)],
            founder_peer,
            extra,
        };
        for id in 2..=n as u64 {
            cluster.nodes.push(Some(cluster.start_joiner(id)));
        }
        cluster
    }

    fn start_founder(data: &Path, extra: &[String]) -> NodeProcess {
        let d = data.display().to_string();
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", &d];
        args.extend(extra.iter().map(String::as_str));
        NodeProcess::spawn(NODE, &args, data).unwrap()
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    fn start_joiner(&self, id: u64) -> NodeProcess {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        NodeProcess::join(
            NODE,
            &self.data_dir(1),
            &self.founder_peer,
            id,
            &self.data_dir(id),
            &extra,
        )
        .unwrap()
    }

    /// Restarts node `id` from its data dir (same ports).
    fn restart(&mut self, id: u64) {
        let node = if id == 1 {
            Self::start_founder(&self.data_dir(1), &self.extra)
        } else {
            self.start_joiner(id)
        };
        self.nodes[id as usize - 1] = Some(node);
    }

    fn node(&self, id: u64) -> &NodeProcess {
        self.nodes[id as usize - 1]
            .as_ref()
            .expect("node is running")
    }

    fn ep(&self, id: u64) -> String {
        self.node(id).endpoint.clone()
    }

    fn running(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64)
            .filter(|&id| self.nodes[id as usize - 1].is_some())
            .collect()
    }

    fn leader(&self) -> u64 {
        let ep = self.ep(self.running()[0]);
        wait_until("a leader", || {
            let out = quiver(CLI, &ep, &["cluster", "status", "--output", "json"]);
            (out.status == 0)
                .then(|| out.json()["leader_id"].as_u64())
                .flatten()
        })
    }

    /// Waits until every running node has applied the same log to the same state.
    fn converged_digest(&self) -> String {
        wait_until("equal state digests on every running node", || {
            let statuses: Vec<serde_json::Value> = self
                .running()
                .iter()
                .map(|&id| quiver(CLI, &self.ep(id), &["status", "--output", "json"]))
                .filter(|out| out.status == 0)
                .map(|out| out.json())
                .collect();
            if statuses.len() != self.running().len() {
                return None;
            }
            let first = &statuses[0];
            let same = statuses.iter().all(|s| {
                s["state_digest"] == first["state_digest"]
                    && s["last_applied_index"] == first["last_applied_index"]
            });
            same.then(|| {
                first["state_digest"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
        })
    }

    /// Whether node `id`'s chunk store holds every one of `hashes`: files and the small-chunk
    /// pack, read beside the running node (present, not verified).
    fn holds_all(&self, id: u64, hashes: &[Hash]) -> bool {
        match ChunkStore::open_read_only(self.data_dir(id).join("chunks")) {
            Ok(store) => hashes.iter().all(|h| store.contains(h)),
            Err(_) => false,
        }
    }

    fn chunk_path(&self, id: u64, hash: &Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.data_dir(id)
            .join("chunks")
            .join(&hex[..2])
            .join(&hex[2..])
    }
}

fn register(ep: &str, model: &str, file: &Path) -> String {
    register_files(ep, model, &[file])
}

/// Registers `files` as one version (each an `--artifact`); the CLI's last line.
fn register_files(ep: &str, model: &str, files: &[&Path]) -> String {
    let out = quiver_tests::register_version(CLI, ep, model, files).ok();
    out.stdout.lines().last().unwrap_or_default().to_string()
}

/// A small file beside a bundle: its one chunk goes to the small-chunk pack, not to a file.
fn small_config(dir: &Path) -> PathBuf {
    let path = dir.join("config.json");
    std::fs::write(&path, br#"{"hidden": 64, "layers": 2}"#).unwrap();
    path
}

fn download(ep: &str, reference: &str, out: &Path) -> quiver_tests::CliRun {
    quiver_tests::download_version(CLI, ep, reference, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_lose_no_acknowledged_write_when_the_leader_is_killed_under_load() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.leader();
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let (f1, f2) = (followers[0], followers[1]);

    // Register through a follower; read from the other one.
    quiver(CLI, &cluster.ep(f1), &["model", "create", "reco"]).ok();
    let bundle = cluster.dir.path().join("w.bin");
    write_random_file(&bundle, 5 << 20, 21).unwrap();
    assert_eq!(register(&cluster.ep(f1), "reco", &bundle), "reco/1");
    let shown = quiver(
        CLI,
        &cluster.ep(f2),
        &["version", "show", "reco/1", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(shown["status"], "ready");

    // A write load through a follower; SIGKILL the leader in the middle of it.
    let load = quiver_tests::connect(&cluster.ep(f1)).await.unwrap();
    let (acked_tx, acked_rx) = std::sync::mpsc::channel::<String>();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(async move {
        let mut seq = 0;
        while !*stop_rx.borrow_and_update() {
            seq += 1;
            let name = format!("load-{seq:05}");
            let request = CreateModelRequest {
                name: name.clone(),
                ..Default::default()
            };
            if load.create_model(request).await.is_ok() {
                let _ = acked_tx.send(name);
            }
        }
    });
    let mut acked = Vec::new();
    let recv = |acked: &mut Vec<String>, n: usize| {
        let target = acked.len() + n;
        while acked.len() < target {
            let name = acked_rx
                .recv_timeout(CONVERGE_TIMEOUT)
                .expect("the load keeps making progress");
            acked.push(name);
        }
    };
    let acked_rx_ref = &acked_rx;
    let _ = acked_rx_ref;
    tokio::task::block_in_place(|| recv(&mut acked, 20));
    cluster.nodes[leader as usize - 1]
        .take()
        .unwrap()
        .kill()
        .unwrap();
    tokio::task::block_in_place(|| recv(&mut acked, 20));
    stop_tx.send(true).unwrap();
    writer.await.unwrap();
    acked.extend(acked_rx.try_iter());

    cluster.restart(leader);
    let digest = tokio::task::block_in_place(|| cluster.converged_digest());
    assert_eq!(digest.len(), 64);

    for id in 1..=3u64 {
        let client = quiver_tests::connect(&cluster.ep(id)).await.unwrap();
        let names: std::collections::BTreeSet<String> = client
            .list_all_models("load-", "", ReadConsistency::Linearizable)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        for name in &acked {
            assert!(
                names.contains(name),
                "acknowledged write {name} missing on node {id}"
            );
        }
    }
    let out = cluster.dir.path().join("dl");
    download(&cluster.ep(leader), "reco/1", &out).ok();
    assert_eq!(
        hash_file(&out.join("w.bin")).unwrap(),
        hash_file(&bundle).unwrap()
    );
}

#[test]
fn a_fourth_node_catches_up_by_snapshot_and_serves_an_older_version() {
    let cluster = Cluster::start(3, &["--snapshot-every", "20"]);
    let ep = cluster.ep(1);
    quiver(CLI, &ep, &["model", "create", "reco"]).ok();
    let bundle = cluster.dir.path().join("w.bin");
    write_random_file(&bundle, 4 << 20, 31).unwrap();
    assert_eq!(register(&ep, "reco", &bundle), "reco/1");
    // A small version travels inside its command (decision 0010): no chunk store holds it, the
    // snapshot carries it to the new node.
    let config = small_config(cluster.dir.path());
    assert_eq!(register(&ep, "reco", &config), "reco/2");
    let config_chunk = Hash::of(&std::fs::read(&config).unwrap());
    for id in 1..=3 {
        let store = ChunkStore::open_read_only(cluster.data_dir(id).join("chunks"))
            .unwrap_or_else(|e| panic!("open node {id}'s chunk store: {e}"));
        assert!(
            !store.contains(&config_chunk),
            "node {id}'s chunk store holds the small version's chunk"
        );
    }
    for i in 0..60 {
        quiver(CLI, &ep, &["model", "create", &format!("filler-{i:02}")]).ok();
    }
    let leader = cluster.leader();
    let purged = wait_until("the leader to purge its log", || {
        let s = quiver(CLI, &cluster.ep(leader), &["status", "--output", "json"])
            .ok()
            .json();
        s["purged_index"].as_u64().filter(|&p| p > 1)
    });

    let fourth = cluster.start_joiner(4);
    let status = quiver(CLI, &fourth.endpoint, &["status", "--output", "json"])
        .ok()
        .json();
    assert!(
        status["snapshot_index"].as_u64().unwrap_or(0) >= purged,
        "node 4 must have installed a snapshot covering the purged log: {status}"
    );
    let members = quiver(
        CLI,
        &fourth.endpoint,
        &["cluster", "status", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(members["members"].as_array().map(Vec::len), Some(4));

    let out = cluster.dir.path().join("dl");
    download(&fourth.endpoint, "reco/1", &out).ok();
    assert_eq!(
        hash_file(&out.join("w.bin")).unwrap(),
        hash_file(&bundle).unwrap()
    );
    let out = cluster.dir.path().join("dl-config");
    download(&fourth.endpoint, "reco/2", &out).ok();
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        std::fs::read(&config).unwrap()
    );
}

#[test]
fn a_corrupt_chunk_is_never_served_and_is_repaired_from_a_peer() {
    let cluster = Cluster::start(3, &[]);
    quiver(CLI, &cluster.ep(1), &["model", "create", "reco"]).ok();
    let bundle = cluster.dir.path().join("w.bin");
    write_random_file(&bundle, 6 << 20, 41).unwrap();
    let config = small_config(cluster.dir.path());
    register_files(&cluster.ep(1), "reco", &[&bundle, &config]);
    // Repair brings every node a full copy, the config's chunk in the pack included.
    let mut all = quiver_tests::chunk_hashes(&bundle).unwrap();
    all.extend(quiver_tests::chunk_hashes(&config).unwrap());
    wait_until("every node to hold every chunk", || {
        (1..=3).all(|id| cluster.holds_all(id, &all)).then_some(())
    });
    // The victim is a chunk kept as a file, to flip its bytes on disk.
    let chunks = quiver_tests::file_chunk_hashes(&bundle).unwrap();

    // Node 1's copy of one chunk goes bad; node 3 loses the same chunk.
    let victim = chunks[1];
    let bad = cluster.chunk_path(1, &victim);
    let mut bytes = std::fs::read(&bad).unwrap();
    bytes[7] ^= 0x55;
    std::fs::write(&bad, &bytes).unwrap();
    std::fs::remove_file(cluster.chunk_path(3, &victim)).unwrap();

    // Node 3 must fetch it from a peer, avoiding node 1's corrupt copy.
    let out3 = cluster.dir.path().join("dl3");
    download(&cluster.ep(3), "reco/1", &out3).ok();
    assert_eq!(
        hash_file(&out3.join("w.bin")).unwrap(),
        hash_file(&bundle).unwrap()
    );

    // Node 1 never serves its corrupt bytes: it replaces them from a peer.
    let out1 = cluster.dir.path().join("dl1");
    download(&cluster.ep(1), "reco/1", &out1).ok();
    assert_eq!(
        hash_file(&out1.join("w.bin")).unwrap(),
        hash_file(&bundle).unwrap()
    );
    let repaired = std::fs::read(&bad).unwrap();
    assert_eq!(Hash::of(&repaired), victim, "node 1's copy was repaired");
}

/// `name`'s series on a node's `/metrics` page: peer label → value.
fn by_peer(metrics: &str, name: &str) -> std::collections::BTreeMap<String, u64> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| {
            let (labels, value) = rest.split_once("} ")?;
            let peer = labels.split_once("peer=\"")?.1.split_once('"')?.0;
            Some((peer.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn each_node_counts_the_chunk_bytes_it_moved_with_each_peer() {
    let cluster = Cluster::start(3, &["--metrics-listen", "127.0.0.1:0"]);
    quiver(CLI, &cluster.ep(1), &["model", "create", "reco"]).ok();
    // Over the inline limit (16 KiB): its chunks go to the chunk stores, over QUIC.
    let size_bytes = 1 << 20;
    let bundle = cluster.dir.path().join("w.bin");
    write_random_file(&bundle, size_bytes, 61).unwrap();
    assert_eq!(register(&cluster.ep(1), "reco", &bundle), "reco/1");
    let chunks = quiver_tests::chunk_hashes(&bundle).unwrap();
    wait_until("every node to hold every chunk", || {
        (1..=3)
            .all(|id| cluster.holds_all(id, &chunks))
            .then_some(())
    });
    let metrics = |id: u64| {
        let addr = cluster
            .node(id)
            .metrics_addr
            .clone()
            .expect("metrics address");
        let (status, body) = quiver_tests::http_get(&addr, "/metrics");
        assert_eq!(status, 200, "{body}");
        body
    };
    let total = |series: &std::collections::BTreeMap<String, u64>| series.values().sum::<u64>();
    // Node 1 took the upload and pushed it to its peers, named by node id.
    let pushed = by_peer(&metrics(1), "quiver_chunk_bytes_pushed_total");
    assert!(total(&pushed) > 0, "{pushed:?}");
    assert!(
        pushed.keys().all(|peer| peer == "2" || peer == "3"),
        "{pushed:?}"
    );
    // Each other node got every byte of it, pushed to it or fetched by its repair, and names
    // where from; what node 1 pushed to it, it received from node 1.
    for id in [2u64, 3] {
        wait_until("the node's metrics to count every byte it got", || {
            let text = metrics(id);
            let received = by_peer(&text, "quiver_chunk_bytes_received_total");
            let fetched = by_peer(&text, "quiver_chunk_bytes_fetched_total");
            let peers_ok = received
                .keys()
                .chain(fetched.keys())
                .all(|peer| ["1", "2", "3"].contains(&peer.as_str()) && *peer != id.to_string());
            assert!(peers_ok, "node {id}: {received:?} {fetched:?}");
            let pushed_here = pushed.get(&id.to_string()).copied().unwrap_or(0);
            let from_one = received.get("1").copied().unwrap_or(0);
            (total(&received) + total(&fetched) >= size_bytes && from_one >= pushed_here)
                .then_some(())
        });
    }
}

#[test]
fn membership_faults_get_clear_errors() {
    let cluster = Cluster::start(3, &[]);

    // A node whose certificate comes from another cluster's CA cannot join.
    let other = tempfile::tempdir().unwrap();
    let foreign_founder = Cluster::start_founder(&other.path().join("f"), &[]);
    drop(foreign_founder);
    let intruder = cluster.dir.path().join("intruder");
    let err = NodeProcess::join(
        NODE,
        &other.path().join("f"),
        &cluster.founder_peer,
        9,
        &intruder,
        &[],
    )
    .err()
    .expect("a node with a foreign certificate must not start");
    let text = format!("{err:#}");
    assert!(
        text.contains("certificate") || text.contains("UnknownIssuer") || text.contains("tls"),
        "the failure names the certificate problem: {text}"
    );

    // A duplicate node id is refused with the exact reason.
    let dup = cluster.dir.path().join("dup");
    let err = NodeProcess::join(
        NODE,
        &cluster.data_dir(1),
        &cluster.founder_peer,
        2,
        &dup,
        &[],
    )
    .err()
    .expect("a duplicate node id must not join");
    assert!(
        format!("{err:#}").contains("node id 2 is already a member at"),
        "{err:#}"
    );
    let members = quiver(
        CLI,
        &cluster.ep(1),
        &["cluster", "status", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(members["members"].as_array().map(Vec::len), Some(3));

    // A minority answers writes with "no quorum" (the majority is frozen).
    cluster.node(2).signal("STOP").unwrap();
    cluster.node(3).signal("STOP").unwrap();
    let started = Instant::now();
    let err = quiver(
        CLI,
        &cluster.ep(1),
        &["model", "create", "during-partition"],
    )
    .err();
    cluster.node(2).signal("CONT").unwrap();
    cluster.node(3).signal("CONT").unwrap();
    assert!(err.contains("no quorum"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    quiver(CLI, &cluster.ep(1), &["model", "create", "after-partition"]).ok();

    // Removing members down to the last voter is refused at the last one.
    quiver(CLI, &cluster.ep(1), &["cluster", "remove", "3"]).ok();
    quiver(CLI, &cluster.ep(1), &["cluster", "remove", "2"]).ok();
    let err = quiver(CLI, &cluster.ep(1), &["cluster", "remove", "1"]).err();
    assert!(
        err.contains("refusing to remove node 1: it is the last voter"),
        "{err}"
    );
}

#[test]
fn a_node_killed_during_replication_converges_after_restart() {
    let mut cluster = Cluster::start(3, &[]);
    quiver(CLI, &cluster.ep(1), &["model", "create", "reco"]).ok();
    // Node 3 is frozen, so the upload reaches W = 2 copies on nodes 1 and 2
    // only; then node 3 dies without ever receiving the chunks.
    cluster.node(3).signal("STOP").unwrap();
    let bundle = cluster.dir.path().join("w.bin");
    write_random_file(&bundle, 5 << 20, 51).unwrap();
    let config = small_config(cluster.dir.path());
    assert_eq!(
        register_files(&cluster.ep(1), "reco", &[&bundle, &config]),
        "reco/1"
    );
    let mut chunks = quiver_tests::chunk_hashes(&bundle).unwrap();
    chunks.extend(quiver_tests::chunk_hashes(&config).unwrap());
    for id in [1, 2] {
        assert!(
            cluster.holds_all(id, &chunks),
            "READY means W copies are durable: node {id} holds every chunk"
        );
    }
    assert!(!cluster.holds_all(3, &chunks), "node 3 was frozen");
    cluster.nodes[2].take().unwrap().kill().unwrap();
    cluster.restart(3);
    wait_until("node 3 to repair every chunk", || {
        cluster.holds_all(3, &chunks).then_some(())
    });
    cluster.converged_digest();
    let out = cluster.dir.path().join("dl");
    download(&cluster.ep(3), "reco/1", &out).ok();
    assert_eq!(
        hash_file(&out.join("w.bin")).unwrap(),
        hash_file(&bundle).unwrap()
    );
}

#[test]
fn failover_drills_report_a_new_leader_and_no_lost_writes() {
    let cluster = Cluster::start(3, &["--enable-crash-drills"]);
    let ep = cluster.ep(1);
    let report = quiver(
        CLI,
        &ep,
        &[
            "cluster", "drill", "failover", "--before", "0.3", "--after", "0.5", "--output", "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(report["mode"], "step-down");
    assert!(report["new_leader"].is_u64(), "{report}");
    assert_eq!(report["writes_lost"], 0, "{report}");
    assert!(
        report["writes_acknowledged"].as_u64().unwrap() > 0,
        "{report}"
    );

    let leader = cluster.leader();
    let survivor = (1..=3).find(|&id| id != leader).unwrap();
    let report = quiver(
        CLI,
        &cluster.ep(survivor),
        &[
            "cluster", "drill", "failover", "--mode", "kill", "--before", "0.3", "--after", "1",
            "--output", "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(report["old_leader"], leader);
    assert_ne!(report["new_leader"], leader, "{report}");
    assert!(report["time_to_first_write_ms"].is_u64(), "{report}");
    assert_eq!(report["writes_lost"], 0, "{report}");
    let status = std::process::Command::new("kill")
        .args(["-0", &cluster.node(leader).pid().to_string()])
        .status()
        .unwrap();
    assert!(
        !status.success() || {
            // A zombie until reaped still answers kill -0; its API must be gone.
            quiver(CLI, &cluster.ep(leader), &["status"]).status != 0
        }
    );
}

#[test]
fn crash_drills_are_refused_unless_enabled() {
    let cluster = Cluster::start(2, &[]);
    let err = quiver(
        CLI,
        &cluster.ep(1),
        &[
            "cluster", "drill", "failover", "--mode", "kill", "--before", "0", "--after", "0",
        ],
    )
    .err();
    assert!(err.contains("start it with --enable-crash-drills"), "{err}");
}

#[test]
fn a_download_goes_to_the_nearest_node_by_region_label() {
    let dir = tempfile::tempdir().unwrap();
    let n1_dir = dir.path().join("node-1");
    let d1 = n1_dir.display().to_string();
    let n1 = NodeProcess::spawn(
        NODE,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &d1,
            "--region",
            "eu",
        ],
        &n1_dir,
    )
    .unwrap();
    let peer = n1.peer_addr.clone().unwrap();
    let n2 = NodeProcess::join(
        NODE,
        &n1_dir,
        &peer,
        2,
        &dir.path().join("node-2"),
        &["--region", "us"],
    )
    .unwrap();
    quiver(CLI, &n1.endpoint, &["model", "create", "reco"]).ok();
    let bundle = dir.path().join("w.bin");
    write_random_file(&bundle, 2 << 20, 61).unwrap();
    register(&n1.endpoint, "reco", &bundle);

    let out = dir.path().join("dl");
    let o = out.display().to_string();
    let run = quiver(
        CLI,
        &n1.endpoint,
        &[
            "version", "download", "reco/1", "--out", &o, "--region", "us",
        ],
    )
    .ok();
    assert!(
        run.stderr
            .contains(&format!("pulling from the nearest node, {}", n2.endpoint)),
        "a client in region us pulls from the us node: {}",
        run.stderr
    );
    assert_eq!(
        hash_file(&out.join("w.bin")).unwrap(),
        hash_file(&bundle).unwrap()
    );
}
