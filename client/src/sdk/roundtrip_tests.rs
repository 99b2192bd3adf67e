//! The SDK against the in-process fake node: real gRPC, real files.

use std::fs;
use std::path::Path;

use super::*;
use crate::fake_node;
use crate::proto::CreateModelRequest;

async fn client_with_model(node: &fake_node::FakeNode, model: &str) -> Client {
    let client = Client::connect(&node.endpoint)
        .await
        .unwrap()
        .with_token(Some("qvr_alice".into()));
    client
        .create_model(CreateModelRequest {
            name: model.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    client
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fn big_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    crate::bench::SeededBytes::new(42).fill(&mut bytes);
    bytes
}

#[tokio::test]
async fn register_then_download_round_trips_files_modes_and_token() {
    let node = fake_node::start().await;
    let client = client_with_model(&node, "reco").await;
    let source = tempfile::tempdir().unwrap();
    let big = big_bytes(5 * 1024 * 1024 + 123);
    write(&source.path().join("model/weights.bin"), &big);
    write(&source.path().join("model/tok/vocab.txt"), b"a b c");
    write(&source.path().join("model/empty"), b"");
    write(&source.path().join("README.md"), b"readme");
    let sent = std::cell::Cell::new(0u64);
    let version = client
        .register_version(
            "reco",
            &[source.path().join("model"), source.path().join("README.md")],
            RegisterOptions::default(),
            &|bytes| sent.set(bytes),
        )
        .await
        .unwrap();
    let total = big.len() as u64 + 5 + 6;
    assert_eq!(sent.get(), total);
    assert_eq!((version.model.as_str(), version.version), ("reco", 1));
    assert_eq!(version.total_size_bytes, total);
    let paths: Vec<&str> = version.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        ["README.md", "empty", "tok/vocab.txt", "weights.bin"]
    );
    assert!(node
        .state
        .lock()
        .unwrap()
        .actors
        .iter()
        .all(|a| a == "Bearer qvr_alice"));

    let out = tempfile::tempdir().unwrap();
    let seen = std::sync::Mutex::new((0u64, 0u64));
    let summary = client
        .download_version("reco/1", out.path(), &|done, all| {
            *seen.lock().unwrap() = (done, all)
        })
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), (total, total));
    assert_eq!(summary.file_count, 4);
    assert_eq!(fs::read(out.path().join("weights.bin")).unwrap(), big);
    assert_eq!(
        fs::read(out.path().join("tok/vocab.txt")).unwrap(),
        b"a b c"
    );
    assert_eq!(fs::read(out.path().join("empty")).unwrap(), b"");

    let mut sunk = Vec::new();
    client
        .download_to_sink("reco/1", |index, data| {
            if index == 3 {
                sunk.extend_from_slice(data)
            }
        })
        .await
        .unwrap();
    assert_eq!(sunk, big);
}

/// A directory link under the output directory, where a version's file
/// goes, is refused: nothing lands where it points.
#[cfg(unix)]
#[tokio::test]
async fn a_download_never_writes_through_a_link_in_the_output_directory() {
    let node = fake_node::start().await;
    let client = client_with_model(&node, "reco").await;
    let source = tempfile::tempdir().unwrap();
    write(&source.path().join("model/sub/w.bin"), &big_bytes(10_000));
    client
        .register_version(
            "reco",
            &[source.path().join("model")],
            RegisterOptions::default(),
            &|_| {},
        )
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), out.path().join("sub")).unwrap();
    let error = client
        .download_version("reco/1", out.path(), &|_, _| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ClientError::SymlinkInOutput { path }
            if Path::new(path) == out.path().join("sub")),
        "{error:?}"
    );
    assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_download_cut_short_resumes_with_the_chunks_it_lacks_only() {
    let node = fake_node::start().await;
    let client = client_with_model(&node, "reco").await;
    let source = tempfile::tempdir().unwrap();
    let (a, b) = (big_bytes(3 << 20), big_bytes(5 << 20));
    write(&source.path().join("m/a.bin"), &a);
    write(&source.path().join("m/b.bin"), &b);
    client
        .register_version(
            "reco",
            &[source.path().join("m")],
            RegisterOptions::default(),
            &|_| {},
        )
        .await
        .unwrap();
    let (root, chunks) = {
        let state = node.state.lock().unwrap();
        let (version, manifest, _) = &state.versions[&("reco".to_string(), 1)];
        let chunks: usize = manifest.files.iter().map(|f| f.chunks.len()).sum();
        (version.manifest_root.clone(), chunks)
    };
    assert!(chunks >= 4, "{chunks} chunks: too few to cut in the middle");
    let out = tempfile::tempdir().unwrap();
    // Two cuts, each after 2 chunks, then a whole run: every chunk is sent once.
    node.state.lock().unwrap().cut_downloads_after = Some(2);
    for _ in 0..2 {
        let error = client
            .download_version("reco/1", out.path(), &|_, _| {})
            .await
            .unwrap_err();
        assert!(error.to_string().contains("connection cut"), "{error}");
        assert!(!out.path().join("a.bin").exists() && !out.path().join("b.bin").exists());
    }
    node.state.lock().unwrap().cut_downloads_after = None;
    let progress = std::sync::Mutex::new(Vec::new());
    client
        .download_version("reco/1", out.path(), &|done, total| {
            progress.lock().unwrap().push((done, total))
        })
        .await
        .unwrap();
    assert_eq!(fs::read(out.path().join("a.bin")).unwrap(), a);
    assert_eq!(fs::read(out.path().join("b.bin")).unwrap(), b);
    let mut names: Vec<_> = fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["a.bin", "b.bin"],
        "no partial file or record is left"
    );
    let state = node.state.lock().unwrap();
    assert_eq!(
        state.download_requests,
        [(0, String::new()), (2, root.clone()), (4, root)]
    );
    assert_eq!(state.chunks_sent, chunks, "no chunk was sent twice");
    let total = (a.len() + b.len()) as u64;
    let first = progress.lock().unwrap()[0];
    assert!(
        first.0 > 0 && first.0 < total && first.1 == total,
        "{first:?}"
    );
}

#[tokio::test]
async fn a_resumed_download_of_a_moved_alias_starts_again() {
    let node = fake_node::start().await;
    let client = client_with_model(&node, "reco").await;
    let source = tempfile::tempdir().unwrap();
    for (name, seed_len) in [("v1", 3 << 20), ("v2", (3 << 20) + 7)] {
        write(
            &source.path().join(name).join("w.bin"),
            &big_bytes(seed_len),
        );
        client
            .register_version(
                "reco",
                &[source.path().join(name).join("w.bin")],
                RegisterOptions::default(),
                &|_| {},
            )
            .await
            .unwrap();
    }
    node.state
        .lock()
        .unwrap()
        .aliases
        .insert(("reco".into(), "prod".into()), 1);
    node.state.lock().unwrap().cut_downloads_after = Some(1);
    let out = tempfile::tempdir().unwrap();
    client
        .download_version("reco@prod", out.path(), &|_, _| {})
        .await
        .unwrap_err();
    {
        let mut state = node.state.lock().unwrap();
        state.aliases.insert(("reco".into(), "prod".into()), 2);
        state.cut_downloads_after = None;
    }
    client
        .download_version("reco@prod", out.path(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(
        fs::read(out.path().join("w.bin")).unwrap(),
        big_bytes((3 << 20) + 7)
    );
    let state = node.state.lock().unwrap();
    let resumes: Vec<u64> = state.download_requests.iter().map(|r| r.0).collect();
    assert_eq!(
        resumes,
        [0, 1, 0],
        "refused as changed, then from the start"
    );
}

#[tokio::test]
async fn a_corrupt_chunk_fails_the_download_and_leaves_nothing_that_looks_complete() {
    let node = fake_node::start().await;
    let client = client_with_model(&node, "reco").await;
    let source = tempfile::tempdir().unwrap();
    write(&source.path().join("w.bin"), &big_bytes(100_000));
    client
        .register_version(
            "reco",
            &[source.path().join("w.bin")],
            RegisterOptions::default(),
            &|_| {},
        )
        .await
        .unwrap();
    node.state.lock().unwrap().corrupt_downloads = true;
    let out = tempfile::tempdir().unwrap();
    let error = client
        .download_version("reco/1", out.path(), &|_, _| {})
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, ClientError::Verify(_)), "{error:?}");
    assert!(
        text.starts_with("chunk ") && text.ends_with(" of file 'w.bin' failed verification"),
        "{text}"
    );
    let names: Vec<_> = fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| n.ends_with(super::PARTIAL_SUFFIX)),
        "{names:?}"
    );
    // Once the node serves intact bytes, the same download completes.
    node.state.lock().unwrap().corrupt_downloads = false;
    client
        .download_version("reco/1", out.path(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(
        fs::read(out.path().join("w.bin")).unwrap(),
        big_bytes(100_000)
    );
}

#[tokio::test]
async fn node_errors_keep_their_code_and_message() {
    let node = fake_node::start().await;
    let client = client_with_model(&node, "reco").await;
    let error = client
        .get_version("reco/9", crate::proto::ReadConsistency::Stale)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(tonic::Code::NotFound));
    assert_eq!(
        error.to_string(),
        "not found: version reco/9 does not exist"
    );

    let error = client
        .create_model(CreateModelRequest {
            name: "reco".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(tonic::Code::AlreadyExists));

    let source = tempfile::tempdir().unwrap();
    write(&source.path().join("w.bin"), b"x");
    let error = client
        .register_version(
            "nope",
            &[source.path().join("w.bin")],
            RegisterOptions::default(),
            &|_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "not found: model 'nope' does not exist");
}

#[tokio::test]
async fn listing_follows_page_tokens() {
    let node = fake_node::start().await;
    let client = client_with_model(&node, "a").await;
    for name in ["b", "c", "other"] {
        client
            .create_model(CreateModelRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let all = client
        .list_all_models("", "", crate::proto::ReadConsistency::Linearizable)
        .await
        .unwrap();
    let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "other"]);
}

#[tokio::test]
async fn benchmarks_run_at_toy_size() {
    let node = fake_node::start().await;
    let client = Client::connect(&node.endpoint).await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let report = crate::bench::ingest(
        &client,
        &crate::bench::IngestOptions {
            size_bytes: 3 * 1024 * 1024 + 1,
            files: 2,
            scratch_dir: scratch.path().to_path_buf(),
            seed: 5,
        },
        &|_| {},
    )
    .await
    .unwrap();
    assert!(report.upload_mb_per_s > 0.0 && report.download_mb_per_s > 0.0);
    assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0);

    let report = crate::bench::registry(
        &client,
        &crate::bench::RegistryOptions {
            clients: 2,
            duration: std::time::Duration::from_millis(200),
            model: None,
            register_only: false,
        },
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.figures.len(), 5);
    assert!(
        report.figures.iter().all(|f| f.count > 0),
        "{:?}",
        report.figures
    );
    let state = node.state.lock().unwrap();
    let registered = state
        .versions
        .keys()
        .filter(|(m, _)| *m == report.model)
        .count() as u64;
    assert_eq!(registered, report.figures[0].count);
}
