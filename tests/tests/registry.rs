//! End-to-end: a real `quiver-node` process on loopback, driven by the real
//! `quiver` CLI (and the SDK where a test must misbehave on purpose).

use std::io::Read;
use std::path::Path;
use std::sync::mpsc;

use quiver_client::proto::{UploadHeader, VersionMetadata};
use quiver_client::sdk::UploadFile;
use quiver_client::Client;
use quiver_tests::{hash_file, quiver, write_random_file, NodeProcess};
use quiver_transfer::{ChunkStore, Hash};

const NODE: &str = env!("CARGO_BIN_EXE_e2e-quiver-node");
const CLI: &str = env!("CARGO_BIN_EXE_e2e-quiver");

const LINEAGE: [&str; 6] = [
    "--data-snapshot",
    "snap-47",
    "--code-commit",
    "3f2a9c1",
    "--run-id",
    "run-812",
];

fn register(endpoint: &str, model: &str, artifacts: &[&Path]) -> quiver_tests::CliRun {
    let mut args = vec!["version", "register", model];
    let paths: Vec<String> = artifacts.iter().map(|p| p.display().to_string()).collect();
    for p in &paths {
        args.extend(["--artifact", p.as_str()]);
    }
    args.extend(LINEAGE);
    quiver(CLI, endpoint, &args)
}

fn lineage_metadata() -> VersionMetadata {
    VersionMetadata {
        data_snapshot_id: "snap-47".into(),
        code_commit: "3f2a9c1".into(),
        pipeline_run_id: "run-812".into(),
        ..Default::default()
    }
}

/// Registers one 64 MiB `weights.bin` into `reco` whose bytes come from
/// `reader` (which, in these tests, fails or stalls before the end).
async fn upload_64mib(
    client: &Client,
    reader: Box<dyn Read + Send>,
) -> Result<quiver_client::proto::ModelVersion, quiver_client::ClientError> {
    let header = UploadHeader {
        model: "reco".into(),
        metadata: Some(lineage_metadata()),
        ..Default::default()
    };
    let file = UploadFile {
        path: "weights.bin".into(),
        mode: 0o644,
        size_bytes: 64 << 20,
        reader,
    };
    client.register_stream(header, vec![file]).await
}

#[test]
fn register_list_download_and_everything_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let node = NodeProcess::start(NODE, &data).unwrap();
    let ep = node.endpoint.clone();

    let bundle = tmp.path().join("bundle");
    write_random_file(&bundle.join("weights.bin"), 9 << 20, 1).unwrap();
    write_random_file(&bundle.join("preprocess/vocab.txt"), 4321, 2).unwrap();
    std::fs::write(bundle.join("empty.cfg"), b"").unwrap();
    let signature = tmp.path().join("signature.json");
    std::fs::write(
        &signature,
        r#"{"inputs":[{"name":"features","dtype":"float32","shape":[-1,128]}],
            "outputs":[{"name":"score","dtype":"float32","shape":[-1]}]}"#,
    )
    .unwrap();

    quiver(
        CLI,
        &ep,
        &[
            "model",
            "create",
            "reco",
            "--namespace",
            "search",
            "--risk-tier",
            "high",
        ],
    )
    .ok();
    let sig = signature.display().to_string();
    let dir = bundle.display().to_string();
    let out = quiver(
        CLI,
        &ep,
        &[
            "version",
            "register",
            "reco",
            "--artifact",
            &dir,
            "--signature",
            &sig,
            "--data-snapshot",
            "snap-47",
            "--code-commit",
            "3f2a9c1",
            "--run-id",
            "run-812",
            "--param",
            "lr=0.001",
            "--metric",
            "auc=0.91",
        ],
    )
    .ok();
    assert_eq!(out.stdout.lines().last(), Some("reco/1"));

    let listed = quiver(CLI, &ep, &["version", "list", "reco", "--output", "json"])
        .ok()
        .json();
    let versions = listed.as_array().expect("a JSON array of versions");
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0]["version"], 1);
    assert_eq!(versions[0]["total_size_bytes"], (9 << 20) + 4321);
    assert_eq!(versions[0]["created_by"], "admin");

    quiver(CLI, &ep, &["alias", "set", "reco", "champion", "1"]).ok();
    quiver(
        CLI,
        &ep,
        &[
            "stage",
            "set",
            "reco/1",
            "production",
            "--reason",
            "eval passed",
        ],
    )
    .ok();

    let check_download = |ep: &str, reference: &str, out: &Path| {
        quiver(
            CLI,
            ep,
            &[
                "version",
                "download",
                reference,
                "--out",
                &out.display().to_string(),
            ],
        )
        .ok();
        for file in ["weights.bin", "preprocess/vocab.txt", "empty.cfg"] {
            assert_eq!(
                hash_file(&out.join(file)).unwrap(),
                hash_file(&bundle.join(file)).unwrap(),
                "{file} differs after download of {reference}"
            );
        }
    };
    check_download(&ep, "reco@champion", &tmp.path().join("dl1"));

    node.stop().unwrap();
    let node = NodeProcess::start(NODE, &data).unwrap();
    let ep = node.endpoint.clone();

    let shown = quiver(
        CLI,
        &ep,
        &["version", "show", "reco:production", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(shown["version"], 1);
    assert_eq!(shown["stage"], "production");
    assert_eq!(shown["aliases"][0], "champion");
    assert_eq!(shown["metadata"]["data_snapshot_id"], "snap-47");
    assert_eq!(shown["metadata"]["hyperparameters"]["lr"], "0.001");
    assert_eq!(shown["signature"]["inputs"][0]["shape"][1], 128);
    check_download(&ep, "reco/1", &tmp.path().join("dl2"));

    // The registry keeps working after the restart: the next number is 2.
    let other = tmp.path().join("other.bin");
    write_random_file(&other, 1000, 3).unwrap();
    let out = register(&ep, "reco", &[&other]).ok();
    assert_eq!(out.stdout.lines().last(), Some("reco/2"));
}

#[test]
fn bad_input_gets_an_exact_error_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(NODE, &tmp.path().join("node")).unwrap();
    let ep = node.endpoint.as_str();
    let file = tmp.path().join("w.bin");
    write_random_file(&file, 5000, 4).unwrap();

    let err = |args: &[&str]| quiver(CLI, ep, args).err();
    let line = |args: &[&str]| err(args).trim_end().to_string();

    quiver(CLI, ep, &["model", "create", "reco"]).ok();
    assert_eq!(
        line(&["model", "create", "reco"]),
        "error: already exists: model 'reco' already exists"
    );
    assert_eq!(
        line(&["model", "create", "Reco Model"]),
        "error: invalid argument: invalid name: \"Reco Model\" is not a valid name: use 1-64 \
         characters of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
    );
    let long = "a".repeat(65);
    assert!(line(&["model", "create", &long])
        .starts_with("error: invalid argument: invalid name: \"aaaa"));
    assert_eq!(
        line(&["model", "show", "nope"]),
        "error: not found: model 'nope' not found: create it with `quiver model create nope`"
    );
    assert_eq!(
        line(&["version", "show", "reco/3"]),
        "error: not found: version reco/3 not found (model 'reco' has 0 version(s))"
    );
    assert_eq!(
        line(&["alias", "get", "reco", "champion"]),
        "error: not found: alias 'champion' not found on model 'reco': set it with \
         `quiver alias set reco champion VERSION`"
    );
    assert_eq!(
        line(&["version", "show", "reco:production"]),
        "error: not found: model 'reco' has no version in stage production"
    );
    assert_eq!(
        register(ep, "nope", &[&file]).err().trim_end(),
        "error: not found: model 'nope' not found: create it with `quiver model create nope`"
    );
    let missing = tmp.path().join("missing.bin");
    assert_eq!(
        register(ep, "reco", &[&missing]).err().trim_end(),
        format!(
            "error: artifact path '{}' does not exist",
            missing.display()
        )
    );
    assert_eq!(
        line(&[
            "version",
            "register",
            "reco",
            "--artifact",
            &file.display().to_string()
        ]),
        "error: invalid argument: invalid metadata.data_snapshot_id: is required \
         (pass --data-snapshot ID) so the version can be traced to its origin"
    );

    // Too many tags, metrics, params; a tag value over its size limit.
    let many = |flag: &str, n: usize| -> Vec<String> {
        (0..n)
            .flat_map(|i| [flag.to_string(), format!("k{i}=1")])
            .collect()
    };
    let with_extra = |extra: Vec<String>| {
        let mut args: Vec<String> = ["version", "register", "reco", "--artifact"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(file.display().to_string());
        args.extend(LINEAGE.iter().map(|s| s.to_string()));
        args.extend(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        quiver(CLI, ep, &refs).err().trim_end().to_string()
    };
    assert_eq!(
        with_extra(many("--tag", 65)),
        "error: invalid argument: invalid tags: 65 tags is over the limit of 64"
    );
    assert_eq!(
        with_extra(many("--metric", 257)),
        "error: invalid argument: invalid metadata.metrics: 257 metrics is over the limit of 256"
    );
    assert_eq!(
        with_extra(many("--param", 257)),
        "error: invalid argument: invalid metadata.hyperparameters: 257 parameters is over the \
         limit of 256"
    );
    assert_eq!(
        with_extra(vec!["--tag".into(), format!("owner={}", "x".repeat(1025))]),
        "error: invalid argument: invalid tags.owner: 1025 bytes is over the limit of 1024"
    );
    assert_eq!(
        line(&["model", "create", "m2", "--description", &"d".repeat(4097)]),
        "error: invalid argument: invalid description: 4097 bytes is over the limit of 4096"
    );

    // None of that registered anything; a good registration is number 1.
    let listed = quiver(CLI, ep, &["version", "list", "reco", "--output", "json"])
        .ok()
        .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(0));
    assert_eq!(
        register(ep, "reco", &[&file]).ok().stdout.lines().last(),
        Some("reco/1")
    );
    let dup = register(ep, "reco", &[&file]).err();
    assert!(
        dup.trim_end()
            .starts_with("error: already exists: this bundle (manifest root ")
            && dup
                .trim_end()
                .ends_with(") is already registered as reco/1"),
        "{dup}"
    );
    assert_eq!(
        line(&["alias", "set", "reco", "champion", "7"]),
        "error: not found: version reco/7 not found (model 'reco' has 1 version(s))"
    );
    assert_eq!(
        line(&["stage", "set", "reco/1", "experimental", "--reason", "x"]),
        "error: failed precondition: version reco/1 is already in stage experimental"
    );
}

/// A reader that yields `fail_after` bytes, then fails: the client aborts
/// the upload midway.
struct FailingReader {
    left: u64,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("disk vanished"));
        }
        let n = buf.len().min(self.left as usize);
        buf[..n].fill(7);
        self.left -= n as u64;
        Ok(n)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_leaves_no_version_and_the_registry_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(NODE, &tmp.path().join("node")).unwrap();
    quiver(CLI, &node.endpoint, &["model", "create", "reco"]).ok();
    let client = quiver_tests::connect(&node.endpoint).await.unwrap();

    let interrupted = upload_64mib(&client, Box::new(FailingReader { left: 10 << 20 })).await;
    let e = interrupted.expect_err("an upload whose source fails must not register");
    assert!(e.to_string().contains("disk vanished"), "{e}");

    let listed = quiver(
        CLI,
        &node.endpoint,
        &["version", "list", "reco", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(0),
        "no version appears"
    );

    let file = tmp.path().join("w.bin");
    write_random_file(&file, 3 << 20, 5).unwrap();
    let out = register(&node.endpoint, "reco", &[&file]).ok();
    assert_eq!(out.stdout.lines().last(), Some("reco/1"));
}

/// A reader that yields `before` bytes, signals, then blocks until released.
struct StallingReader {
    before: u64,
    reached: Option<mpsc::Sender<()>>,
    release: mpsc::Receiver<()>,
}

impl Read for StallingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.before == 0 {
            if let Some(tx) = self.reached.take() {
                let _ = tx.send(());
            }
            let _ = self.release.recv();
            return Err(std::io::Error::other("released"));
        }
        let n = buf.len().min(self.before as usize);
        buf[..n].fill(9);
        self.before -= n as u64;
        Ok(n)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_upload_restarts_with_no_partial_version() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let node = NodeProcess::start(NODE, &data).unwrap();
    quiver(CLI, &node.endpoint, &["model", "create", "reco"]).ok();
    let client = quiver_tests::connect(&node.endpoint).await.unwrap();

    let (reached_tx, reached_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let upload = tokio::spawn(async move {
        let reader = StallingReader {
            before: 12 << 20,
            reached: Some(reached_tx),
            release: release_rx,
        };
        upload_64mib(&client, Box::new(reader)).await
    });
    tokio::task::spawn_blocking(move || reached_rx.recv())
        .await
        .unwrap()
        .expect("the upload reaches its stall point");
    node.kill().unwrap();
    release_tx.send(()).unwrap();
    assert!(upload.await.unwrap().is_err(), "the upload cannot succeed");

    let node = NodeProcess::start(NODE, &data).unwrap();
    let listed = quiver(
        CLI,
        &node.endpoint,
        &["version", "list", "reco", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(0));
    let file = tmp.path().join("w.bin");
    write_random_file(&file, 2 << 20, 6).unwrap();
    let out = register(&node.endpoint, "reco", &[&file]).ok();
    assert_eq!(out.stdout.lines().last(), Some("reco/1"));
}

#[test]
fn a_corrupt_chunk_fails_its_download_by_name_and_other_versions_are_unaffected() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let node = NodeProcess::start(NODE, &data).unwrap();
    let ep = node.endpoint.as_str();
    quiver(CLI, ep, &["model", "create", "reco"]).ok();
    let a = tmp.path().join("a/weights.bin");
    let b = tmp.path().join("b/weights.bin");
    write_random_file(&a, 6 << 20, 7).unwrap();
    write_random_file(&b, 6 << 20, 8).unwrap();
    register(ep, "reco", &[&a]).ok();
    register(ep, "reco", &[&b]).ok();

    let victim = quiver_tests::file_chunk_hashes(&a).unwrap()[1];
    let hex = victim.to_hex();
    let path = data.join("chunks").join(&hex[..2]).join(&hex[2..]);
    let mut bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("chunk file {} should exist: {e}", path.display()));
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let out_a = tmp.path().join("dl-a");
    let e = quiver(
        CLI,
        ep,
        &[
            "version",
            "download",
            "reco/1",
            "--out",
            &out_a.display().to_string(),
        ],
    )
    .err();
    // The node's scrub may find the rotten copy first and remove it; either way the download
    // fails naming the chunk.
    assert!(
        e.contains(&format!("chunk {hex}"))
            && (e.contains("is corrupt") || e.contains("not found in the chunk store")),
        "the error names the corrupt chunk: {e}"
    );
    assert!(
        !out_a.join("weights.bin").exists(),
        "no file is put in place from a failed download"
    );

    let out_b = tmp.path().join("dl-b");
    quiver(
        CLI,
        ep,
        &[
            "version",
            "download",
            "reco/2",
            "--out",
            &out_b.display().to_string(),
        ],
    )
    .ok();
    assert_eq!(
        hash_file(&out_b.join("weights.bin")).unwrap(),
        hash_file(&b).unwrap()
    );
}

/// Node memory stays bounded while an artifact larger than the bound goes in
/// and out: a node that buffered a whole artifact would exceed it.
#[test]
fn a_bundle_larger_than_the_memory_bound_streams_through_the_node() {
    const RSS_BYTES_MAX: u64 = 256 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(NODE, &tmp.path().join("node")).unwrap();
    let ep = node.endpoint.as_str();
    let bundle = tmp.path().join("bundle");
    write_random_file(&bundle.join("shard-0.bin"), 160 << 20, 11).unwrap();
    write_random_file(&bundle.join("shard-1.bin"), 128 << 20, 12).unwrap();
    quiver(CLI, ep, &["model", "create", "big"]).ok();
    register(ep, "big", &[&bundle]).ok();
    let out = tmp.path().join("dl");
    quiver(
        CLI,
        ep,
        &[
            "version",
            "download",
            "big/1",
            "--out",
            &out.display().to_string(),
        ],
    )
    .ok();
    for f in ["shard-0.bin", "shard-1.bin"] {
        assert_eq!(
            hash_file(&out.join(f)).unwrap(),
            hash_file(&bundle.join(f)).unwrap()
        );
    }
    let peak = node.peak_rss_bytes().unwrap();
    assert!(
        peak < RSS_BYTES_MAX,
        "node peak RSS {} MiB while moving a 288 MiB bundle (bound {} MiB)",
        peak >> 20,
        RSS_BYTES_MAX >> 20
    );
}

#[test]
fn up_runs_a_local_registry_that_stops_cleanly_on_sigterm_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dot-quiver");
    let dir = data.display().to_string();
    let args = ["up", "--port", "0", "--data-dir", dir.as_str()];
    let node = NodeProcess::spawn(NODE, &args, &data).unwrap();
    quiver(CLI, &node.endpoint, &["model", "create", "demo"]).ok();
    node.stop().unwrap();
    let node = NodeProcess::spawn(NODE, &args, &data).unwrap();
    let shown = quiver(
        CLI,
        &node.endpoint,
        &["model", "show", "demo", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(shown["name"], "demo");
}

fn node_gc(data: &Path, extra: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(NODE)
        .args(["gc", "--data-dir"])
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_the_chunks_of_an_interrupted_upload_and_keeps_every_version() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let node = NodeProcess::start(NODE, &data).unwrap();
    quiver(CLI, &node.endpoint, &["model", "create", "reco"]).ok();
    let file = tmp.path().join("w.bin");
    write_random_file(&file, 3 << 20, 71).unwrap();
    register(&node.endpoint, "reco", &[&file]).ok();
    let client = quiver_tests::connect(&node.endpoint).await.unwrap();
    let interrupted = upload_64mib(&client, Box::new(FailingReader { left: 12 << 20 })).await;
    assert!(interrupted.is_err());

    let (ok, text) = node_gc(&data, &[]);
    assert!(
        !ok && text.contains("is in use by another process"),
        "{text}"
    );
    node.stop().unwrap();

    let (ok, text) = node_gc(&data, &["--dry-run"]);
    assert!(ok, "{text}");
    assert!(text.starts_with("would remove "), "{text}");
    assert!(
        !text.starts_with("would remove 0 "),
        "the interrupted upload left chunks: {text}"
    );
    let (ok, text) = node_gc(&data, &[]);
    assert!(
        ok && text.starts_with("removed ") && !text.starts_with("removed 0 "),
        "{text}"
    );
    let (ok, text) = node_gc(&data, &[]);
    assert!(ok && text.starts_with("removed 0 "), "{text}");

    let node = NodeProcess::start(NODE, &data).unwrap();
    let out = tmp.path().join("dl");
    quiver(
        CLI,
        &node.endpoint,
        &[
            "version",
            "download",
            "reco/1",
            "--out",
            &out.display().to_string(),
        ],
    )
    .ok();
    assert_eq!(
        hash_file(&out.join("w.bin")).unwrap(),
        hash_file(&file).unwrap()
    );
}

/// `bytes` (64 MiB) that stop after `pause_at` until `resume` says go on: an upload that is
/// still in progress while its node collects garbage.
struct PausingReader {
    bytes: std::sync::Arc<Vec<u8>>,
    sent: usize,
    pause_at: usize,
    resume: Option<mpsc::Receiver<()>>,
}

impl Read for PausingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.sent == self.pause_at {
            if let Some(resume) = self.resume.take() {
                resume
                    .recv()
                    .map_err(|_| std::io::Error::other("test ended"))?;
            }
        }
        let end = if self.sent < self.pause_at {
            self.pause_at
        } else {
            self.bytes.len()
        };
        let n = buf.len().min(end - self.sent);
        buf[..n].copy_from_slice(&self.bytes[self.sent..self.sent + n]);
        self.sent += n;
        Ok(n)
    }
}

/// Chunks in `data`'s store now.
fn stored(data: &Path) -> std::collections::BTreeSet<Hash> {
    let store = ChunkStore::open_read_only(data.join("chunks")).unwrap();
    store.list().unwrap().into_iter().collect()
}

/// Polls `data`'s store (every 50 ms, at most 60 s) until `done` holds for its chunks.
fn wait_for_store(
    data: &Path,
    what: &str,
    done: impl Fn(&std::collections::BTreeSet<Hash>) -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if done(&stored(data)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// While the node runs (`--gc-grace-secs 1`), the chunks of an interrupted upload are removed;
/// those of a registered version and of an upload still in progress (older than the chunks
/// removed) stay, and that upload then registers and downloads intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_node_collects_an_interrupted_upload_and_keeps_versions_and_uploads_in_progress()
{
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let dir = data.display().to_string();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &dir,
        "--gc-grace-secs",
        "1",
    ];
    let node = NodeProcess::spawn(NODE, &args, &data).unwrap();
    quiver(CLI, &node.endpoint, &["model", "create", "reco"]).ok();
    let file = tmp.path().join("w.bin");
    write_random_file(&file, 3 << 20, 71).unwrap();
    register(&node.endpoint, "reco", &[&file]).ok();
    let version: std::collections::BTreeSet<Hash> = quiver_tests::chunk_hashes(&file)
        .unwrap()
        .into_iter()
        .collect();
    assert!(version.is_subset(&stored(&data)));
    let client = quiver_tests::connect(&node.endpoint).await.unwrap();

    // An upload that sends 12 MiB, then waits. The node has cut every chunk of those bytes but
    // the last (the chunker holds the tail until more comes).
    let weights = tmp.path().join("weights.bin");
    write_random_file(&weights, 64 << 20, 72).unwrap();
    let head = tmp.path().join("head.bin");
    let bytes = std::sync::Arc::new(std::fs::read(&weights).unwrap());
    std::fs::write(&head, &bytes[..12 << 20]).unwrap();
    let mut head_chunks = quiver_tests::chunk_hashes(&head).unwrap();
    head_chunks.pop();
    let pinned: std::collections::BTreeSet<Hash> = head_chunks.into_iter().collect();
    assert!(pinned.len() >= 2);
    let (resume, paused) = mpsc::channel();
    let reader = PausingReader {
        bytes,
        sent: 0,
        pause_at: 12 << 20,
        resume: Some(paused),
    };
    let in_progress = tokio::spawn({
        let client = client.clone();
        async move { upload_64mib(&client, Box::new(reader)).await }
    });
    wait_for_store(&data, "the paused upload's chunks are stored", |now| {
        pinned.is_subset(now)
    });

    // An upload that fails after 12 MiB: its chunks are garbage.
    let interrupted = upload_64mib(&client, Box::new(FailingReader { left: 12 << 20 })).await;
    assert!(interrupted.is_err());
    let garbage: Vec<Hash> = stored(&data)
        .into_iter()
        .filter(|h| !version.contains(h) && !pinned.contains(h))
        .collect();
    assert!(!garbage.is_empty(), "the interrupted upload stored chunks");
    wait_for_store(
        &data,
        "the interrupted upload's chunks are collected",
        |now| garbage.iter().all(|h| !now.contains(h)),
    );
    let now = stored(&data);
    assert!(version.is_subset(&now), "a registered version lost chunks");
    assert!(pinned.is_subset(&now), "the upload in progress lost chunks");

    resume.send(()).unwrap();
    let registered = in_progress
        .await
        .unwrap()
        .expect("the paused upload registers");
    assert_eq!(registered.version, 2);
    for (reference, original) in [("reco/1", &file), ("reco/2", &weights)] {
        let out = tmp.path().join(reference.replace('/', "-"));
        let o = out.display().to_string();
        quiver(
            CLI,
            &node.endpoint,
            &["version", "download", reference, "--out", &o],
        )
        .ok();
        let name = original.file_name().unwrap();
        assert_eq!(
            hash_file(&out.join(name)).unwrap(),
            hash_file(original).unwrap(),
            "{reference} downloads intact"
        );
    }
}

#[test]
fn small_versions_travel_in_their_command_and_bigger_ones_through_the_chunk_store() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let node = NodeProcess::start(NODE, &data).unwrap();
    quiver(CLI, &node.endpoint, &["model", "create", "reco"]).ok();

    // 8 KiB of distinct bytes (a file twice counts once): under the 16 KiB inline limit.
    let small = tmp.path().join("small");
    write_random_file(&small.join("a.json"), 3 << 10, 1).unwrap();
    std::fs::copy(small.join("a.json"), small.join("b.json")).unwrap();
    write_random_file(&small.join("c.txt"), 5 << 10, 2).unwrap();
    // 20 KiB: over it, so the chunk held back first must reach the store too.
    let big = tmp.path().join("big");
    write_random_file(&big.join("a.bin"), 10 << 10, 3).unwrap();
    write_random_file(&big.join("b.bin"), 10 << 10, 4).unwrap();
    let out = register(&node.endpoint, "reco", &[&small]).ok();
    assert_eq!(out.stdout.lines().last(), Some("reco/1"));
    let out = register(&node.endpoint, "reco", &[&big]).ok();
    assert_eq!(out.stdout.lines().last(), Some("reco/2"));

    let chunk = |path: &Path| Hash::of(&std::fs::read(path).unwrap());
    let store = ChunkStore::open_read_only(data.join("chunks")).unwrap();
    for file in ["a.json", "c.txt"] {
        assert!(
            !store.contains(&chunk(&small.join(file))),
            "{file}'s chunk went to the chunk store"
        );
    }
    for file in ["a.bin", "b.bin"] {
        assert!(
            store.contains(&chunk(&big.join(file))),
            "{file}'s chunk is not in the chunk store"
        );
    }
    drop(store);
    // `quiver status` reports them beside the chunk count: 3 KiB + 5 KiB (b.json is a.json).
    let status = quiver(CLI, &node.endpoint, &["status", "--output", "json"])
        .ok()
        .json();
    assert_eq!(status["inline_bytes"], 8 << 10, "{status}");

    // Both survive a restart and download byte for byte.
    node.stop().unwrap();
    let node = NodeProcess::start(NODE, &data).unwrap();
    for (reference, dir, files) in [
        ("reco/1", &small, &["a.json", "b.json", "c.txt"][..]),
        ("reco/2", &big, &["a.bin", "b.bin"][..]),
    ] {
        let out = tmp
            .path()
            .join(format!("dl-{}", reference.replace('/', "-")));
        let o = out.display().to_string();
        quiver(
            CLI,
            &node.endpoint,
            &["version", "download", reference, "--out", &o],
        )
        .ok();
        for file in files {
            assert_eq!(
                std::fs::read(out.join(file)).unwrap(),
                std::fs::read(dir.join(file)).unwrap(),
                "{reference} {file}"
            );
        }
    }
}
