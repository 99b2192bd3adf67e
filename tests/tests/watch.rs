//! Watch end to end (issue 15, must-show 2), on a real 3-node cluster: a watch served by one
//! node sees every change in commit order; the node stops (its watch ends, naming where to
//! resume) and starts again; the watch resumed there after the last revision received sees
//! exactly the events it had not, none twice. A `Watcher` through that node and another moves
//! to the other on its own and misses nothing either. `quiver watch` prints the same events.
//! Hostile watch requests are refused naming the field, and change nothing.
//!
//! Waiting is on a condition with a deadline, never a fixed sleep.

use std::path::Path;
use std::time::Duration;

use quiver_client::proto::{WatchBatch, WatchEvent, WatchRequest};
use quiver_client::sdk::{WatchItem, Watcher};
use quiver_tests::{
    connect, quiver, register_version, start_cluster, write_random_file, NodeProcess,
};
use tonic::{Code, Streaming};

const NODE: &str = env!("CARGO_BIN_EXE_e2e-quiver-node");
const CLI: &str = env!("CARGO_BIN_EXE_e2e-quiver");
const DEADLINE: Duration = Duration::from_secs(60);

/// Events of `stream` until a batch's revision reaches `through`.
async fn events_through(stream: &mut Streaming<WatchBatch>, through: u64) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        loop {
            let batch = stream.message().await.unwrap().expect("the watch went on");
            out.extend(batch.events);
            if batch.revision >= through {
                return;
            }
        }
    })
    .await
    .expect("the watch reached the revision in time");
    out
}

/// The latest revision, as a fresh watch on `endpoint` starts from it.
async fn latest(endpoint: &str) -> u64 {
    let client = connect(endpoint).await.unwrap();
    let mut stream = client.watch(WatchRequest::default()).await.unwrap();
    stream.message().await.unwrap().unwrap().revision
}

fn change(cli_endpoint: &str, args: &[&str]) {
    quiver(CLI, cli_endpoint, args).ok();
}

fn register(endpoint: &str, dir: &Path, seed: u64) {
    let file = dir.join(format!("weights-{seed}.bin"));
    write_random_file(&file, 4096, seed).unwrap();
    register_version(CLI, endpoint, "reco", &[&file]).ok();
}

fn key(e: &WatchEvent) -> (u64, String, u64, String) {
    (e.revision, e.kind.clone(), e.version, e.alias.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_its_node_restarts_with_nothing_missed_or_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(NODE, dir.path(), 3).unwrap();
    let a = nodes[0].endpoint.clone();
    let b = nodes[2].endpoint.clone();
    change(&a, &["model", "create", "reco"]);

    // A watch of reco served by node 3, and a Watcher through node 3 then node 1.
    let client_b = connect(&b).await.unwrap();
    let mut on_b = client_b
        .watch(WatchRequest {
            model: "reco".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let start = on_b.message().await.unwrap().unwrap();
    assert!(
        start.events.is_empty(),
        "the first batch says where the watch starts"
    );
    let r0 = start.revision;
    let mut watcher = Watcher::new(
        vec![client_b.clone(), connect(&a).await.unwrap()],
        WatchRequest {
            model: "reco".into(),
            after_revision: Some(r0),
            ..Default::default()
        },
    )
    .unwrap();
    let (items_tx, mut items) = tokio::sync::mpsc::unbounded_channel();
    let following = tokio::spawn(async move {
        loop {
            match watcher.next().await {
                Ok(item) => {
                    if items_tx.send(item).is_err() {
                        return;
                    }
                }
                Err(e) => panic!("the watcher failed: {e}"),
            }
        }
    });

    register(&a, dir.path(), 1);
    change(&a, &["alias", "set", "reco", "champion", "1"]);
    change(
        &a,
        &["stage", "set", "reco/1", "staging", "--reason", "try"],
    );
    let before_stop = latest(&a).await;
    let seen_before = events_through(&mut on_b, before_stop).await;
    assert!(seen_before.len() >= 3, "{seen_before:?}");
    let last = before_stop;

    // Node 3 stops: its watch ends (UNAVAILABLE, naming where to resume) rather than hold the
    // shutdown; changes go on through node 1 meanwhile.
    nodes.pop().unwrap().stop().unwrap();
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match on_b.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the watch ended when its node stopped");
    if let Some(status) = ended {
        assert!(
            matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ),
            "{status:?}"
        );
    }
    register(&a, dir.path(), 2);
    change(&a, &["alias", "set", "reco", "champion", "2"]);
    change(
        &a,
        &["stage", "set", "reco/2", "production", "--reason", "ship"],
    );
    change(&a, &["model", "update", "reco", "--description", "ranked"]);

    // Node 3 starts again from its data dir and serves the watch resumed after `last`.
    let node_b = NodeProcess::join(
        NODE,
        &dir.path().join("node-1"),
        nodes[0].peer_addr.as_deref().unwrap(),
        3,
        &dir.path().join("node-3"),
        &[],
    )
    .unwrap();
    let final_revision = latest(&a).await;
    let client_b = connect(&node_b.endpoint).await.unwrap();
    let mut resumed = client_b
        .watch(WatchRequest {
            model: "reco".into(),
            after_revision: Some(last),
            ..Default::default()
        })
        .await
        .unwrap();
    let first = resumed.message().await.unwrap().unwrap();
    assert_eq!(first.revision, last, "the resumed watch starts where asked");
    let seen_after = events_through(&mut resumed, final_revision).await;

    // Everything node 1 has for reco since r0, each once, in order.
    let mut reference = connect(&a)
        .await
        .unwrap()
        .watch(WatchRequest {
            model: "reco".into(),
            after_revision: Some(r0),
            ..Default::default()
        })
        .await
        .unwrap();
    let whole = events_through(&mut reference, final_revision).await;
    let seen: Vec<_> = seen_before.iter().chain(&seen_after).map(key).collect();
    let expected: Vec<_> = whole.iter().map(key).collect();
    assert_eq!(seen, expected, "missed or repeated events");
    assert!(
        whole
            .iter()
            .any(|e| e.kind == "stage" && e.version == 2 && e.to_stage == 3),
        "reco/2 entering production is an event: {whole:?}"
    );
    assert!(whole.iter().any(|e| e.kind == "model"), "{whole:?}");

    // The Watcher moved to node 1 by itself, and saw the same events.
    let mut followed = Vec::new();
    let mut resumed_on = None;
    tokio::time::timeout(DEADLINE, async {
        while let Some(item) = items.recv().await {
            match item {
                WatchItem::Batch(batch) => {
                    followed.extend(batch.events);
                    if batch.revision >= final_revision {
                        return;
                    }
                }
                WatchItem::Resumed { endpoint, after } => resumed_on = Some((endpoint, after)),
                WatchItem::Behind(message) => panic!("behind: {message}"),
            }
        }
    })
    .await
    .expect("the watcher reached the final revision");
    following.abort();
    let (endpoint, after) = resumed_on.expect("the watcher resumed elsewhere");
    assert_eq!(endpoint, a);
    assert!(after >= r0);
    assert_eq!(followed.iter().map(key).collect::<Vec<_>>(), expected);

    // `quiver watch` prints the same events, one JSON object per line.
    let r0_text = r0.to_string();
    let count = whole.len().to_string();
    let run = quiver(
        CLI,
        &a,
        &[
            "watch", "--model", "reco", "--after", &r0_text, "--count", &count, "--output", "json",
        ],
    )
    .ok();
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let revisions: Vec<u64> = lines
        .iter()
        .map(|l| l["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(
        revisions,
        whole.iter().map(|e| e.revision).collect::<Vec<_>>()
    );
    drop(node_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_watch_requests_are_refused_naming_the_field_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(NODE, &dir.path().join("node-1")).unwrap();
    let ep = node.endpoint.clone();
    change(&ep, &["model", "create", "reco"]);
    let client = connect(&ep).await.unwrap();
    let before = latest(&ep).await;
    let long = "a".repeat(100_000);
    let cases: Vec<(WatchRequest, &str)> = vec![
        (
            WatchRequest {
                model: "reco".into(),
                endpoint: "e".into(),
                ..Default::default()
            },
            "at most one",
        ),
        (
            WatchRequest {
                model: long.clone(),
                ..Default::default()
            },
            "model",
        ),
        (
            WatchRequest {
                model: "a\0b".into(),
                ..Default::default()
            },
            "model",
        ),
        (
            WatchRequest {
                model: "../etc".into(),
                ..Default::default()
            },
            "model",
        ),
        (
            WatchRequest {
                model: "mödel".into(),
                ..Default::default()
            },
            "model",
        ),
        (
            WatchRequest {
                endpoint: "C:\\x".into(),
                ..Default::default()
            },
            "endpoint",
        ),
        (
            WatchRequest {
                reference: "reco/3".into(),
                ..Default::default()
            },
            "reference",
        ),
        (
            WatchRequest {
                reference: "reco:nowhere".into(),
                ..Default::default()
            },
            "reco:nowhere",
        ),
        (
            WatchRequest {
                reference: format!("reco@{long}"),
                ..Default::default()
            },
            "alias",
        ),
        (
            WatchRequest {
                model: "reco".into(),
                after_revision: Some(u64::MAX),
                ..Default::default()
            },
            "after_revision",
        ),
    ];
    for (request, names) in cases {
        let e = client.watch(request.clone()).await.unwrap_err();
        assert!(
            matches!(e.code(), Some(Code::InvalidArgument) | Some(Code::NotFound)),
            "{request:?}: {e}"
        );
        let text = e.to_string();
        assert!(text.contains(names), "{request:?}: {text}");
        assert!(text.len() <= 1100, "{} bytes", text.len());
    }
    // A model that does not exist is not found; nothing changed; the node still serves.
    let e = client
        .watch(WatchRequest {
            model: "nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    assert_eq!(latest(&ep).await, before);
    change(&ep, &["model", "create", "still-serving"]);
    assert!(latest(&ep).await > before);
}
