//! The API's limits on its clients' connections and streams (`server::ApiLimits`), each met at
//! its edge by a real client over the real server on loopback. The durations are shortened
//! through `ApiLimits`, so these run the production code in milliseconds; no test sleeps to let
//! the server catch up: each waits for what it expects, within `BOUND`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quiver_api::proto::{
    self, models_client::ModelsClient, upload_message::Kind, versions_client::VersionsClient,
};
use quiver_node::server::{serve, ApiLimits};
use quiver_node::tls::ClusterCa;
use quiver_node::{Node, NodeConfig};
use rand::{rngs::StdRng, RngCore, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

/// The longest any test waits for what it expects before it fails.
const BOUND: Duration = Duration::from_secs(10);

/// A single-node cluster serving its API on loopback.
struct Served {
    node: Arc<Node>,
    api: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(limits: ApiLimits) -> Served {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = ClusterCa::create(&dir.path().join("ca"), "api-limits").expect("a cluster CA");
        let tls = ca.issue(1).expect("a node certificate");
        let peer = TcpListener::bind("127.0.0.1:0").await.expect("bind peer");
        let api = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
        let api_addr = api.local_addr().expect("api address");
        let node = Node::open(
            NodeConfig {
                node_id: 1,
                data_dir: dir.path().join("node"),
                api_addr: api_addr.to_string(),
                peer_addr: peer.local_addr().expect("peer address").to_string(),
                quic_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                region: "test".into(),
                zone: "test-a".into(),
                join: None,
                tls,
                write_quorum: None,
                snapshot_every: 10_000,
                heartbeat_ms: quiver_raft::HEARTBEAT_INTERVAL_MS,
                crash_drills: false,
                disk_reserve_bytes: 0,
            },
            peer,
        )
        .await
        .expect("open the node");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(node.clone(), api, limits, async {
            let _ = stopped.await;
        }));
        Served {
            node,
            api: api_addr,
            stop: Some(stop),
            server: Some(server),
            _dir: dir,
        }
    }

    /// A client channel of its own (one HTTP/2 connection).
    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.api))
            .expect("an endpoint")
            .connect()
            .await
            .expect("connect to the API")
    }

    async fn create_model(&self, name: &str) {
        ModelsClient::new(self.channel().await)
            .create_model(proto::CreateModelRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .expect("create the model");
    }

    /// The registry state's digest: equal digests, equal states.
    fn digest(&self) -> String {
        self.node
            .raft
            .read(|app, txn| Ok(app.digest(txn)?))
            .expect("read the digest")
    }

    async fn version_count(&self, model: &str) -> usize {
        VersionsClient::new(self.channel().await)
            .list_versions(proto::ListVersionsRequest {
                model: model.into(),
                ..Default::default()
            })
            .await
            .expect("list versions")
            .into_inner()
            .versions
            .len()
    }

    /// Stops serving (every client must have gone) and stops the node.
    async fn stop(mut self) {
        let _ = self.stop.take().expect("stopped once").send(());
        let server = self.server.take().expect("stopped once");
        timeout(BOUND, server)
            .await
            .expect("the server stops once its clients are gone")
            .expect("the server task")
            .expect("the server stops cleanly");
    }
}

fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn message(kind: Kind) -> proto::UploadMessage {
    proto::UploadMessage { kind: Some(kind) }
}

/// An upload of one file `data.bin` of `data`, as messages: header, file, data in pieces of
/// `piece_bytes`, commit (without a root: the node's own is taken).
fn upload_messages(model: &str, data: &[u8], piece_bytes: usize) -> Vec<proto::UploadMessage> {
    let mut messages = vec![
        message(Kind::Header(proto::UploadHeader {
            model: model.into(),
            metadata: Some(proto::VersionMetadata {
                data_snapshot_id: "snapshot-1".into(),
                code_commit: "0123abc".into(),
                pipeline_run_id: "run-1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
        message(Kind::File(proto::FileStart {
            path: "data.bin".into(),
            size_bytes: data.len() as u64,
            mode: 0o644,
        })),
    ];
    messages.extend(
        data.chunks(piece_bytes)
            .map(|piece| message(Kind::Data(piece.to_vec()))),
    );
    messages.push(message(Kind::Commit(proto::UploadCommit::default())));
    messages
}

/// Registers `data` as a version of `model` in one go.
async fn register(served: &Served, model: &str, data: &[u8]) -> proto::ModelVersion {
    let messages = upload_messages(model, data, 1 << 20);
    VersionsClient::new(served.channel().await)
        .max_encoding_message_size(usize::MAX)
        .register_version(tokio_stream::iter(messages))
        .await
        .expect("register the version")
        .into_inner()
}

// ------------------------------------------------------------------------------ uploads

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_goes_quiet_is_abandoned_at_its_idle_timeout_and_frees_its_slot() {
    let idle = Duration::from_millis(300);
    let served = Served::start(ApiLimits {
        upload_idle_timeout: idle,
        ..ApiLimits::default()
    })
    .await;
    served.create_model("quiet").await;
    let before = served.digest();

    // Header, file and some of its bytes; then the client stays connected and sends nothing.
    let data = seeded_bytes(1, 4096);
    let mut messages = upload_messages("quiet", &data, 1024).into_iter();
    let (tx, rx) = mpsc::channel(8);
    for m in messages.by_ref().take(3) {
        tx.send(m).await.expect("queue a message");
    }
    let started = Instant::now();
    let answer = timeout(
        BOUND,
        VersionsClient::new(served.channel().await).register_version(ReceiverStream::new(rx)),
    )
    .await
    .expect("the node answers a quiet upload within the bound");
    let status = answer.expect_err("a quiet upload is refused");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("sent nothing for 300ms")
            && status.message().contains("nothing was registered"),
        "the message names the timeout: {status:?}"
    );
    assert!(started.elapsed() >= idle, "refused before its timeout");
    // The slot is given back before the answer leaves the node.
    assert_eq!(
        served.node.uploads.in_use().get(),
        0,
        "its upload slot is free"
    );
    assert_eq!(served.digest(), before, "nothing was registered");
    assert_eq!(served.version_count("quiet").await, 0);
    drop(tx); // held until here: the stream never ended, it only went quiet

    let v = register(&served, "quiet", &data).await;
    assert_eq!(v.version, 1, "the next upload goes through");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_with_gaps_under_its_idle_timeout_is_not_cut_however_long_it_takes() {
    let idle = Duration::from_millis(1000);
    // Well under the timeout, so a loaded machine's late wake-ups do not reach it.
    let gap = idle * 6 / 10;
    let served = Served::start(ApiLimits {
        upload_idle_timeout: idle,
        ..ApiLimits::default()
    })
    .await;
    served.create_model("steady").await;
    let data = seeded_bytes(2, 2048);
    let messages = upload_messages("steady", &data, 1024);
    let gaps = messages.len() - 1;
    let (tx, rx) = mpsc::channel(1);
    let sender = tokio::spawn(async move {
        for (i, m) in messages.into_iter().enumerate() {
            if i > 0 {
                // Pacing the client, not waiting for the server: the gap is what is tested.
                tokio::time::sleep(gap).await;
            }
            tx.send(m).await.expect("the node reads the upload");
        }
    });
    let started = Instant::now();
    let v = timeout(
        BOUND,
        VersionsClient::new(served.channel().await).register_version(ReceiverStream::new(rx)),
    )
    .await
    .expect("the upload ends within the bound")
    .expect("an upload that keeps sending is registered")
    .into_inner();
    assert_eq!(v.version, 1);
    assert!(
        started.elapsed() >= gap * gaps as u32 && gap * gaps as u32 > idle * 2,
        "the upload took several idle timeouts in all"
    );
    sender.await.expect("the sender");
    assert_eq!(served.node.uploads.in_use().get(), 0);
    served.stop().await;
}

// ---------------------------------------------------------------------------- downloads

/// A channel whose HTTP/2 windows are small (64 KiB), so a download larger than them blocks
/// the node's sends as soon as the client stops reading.
async fn narrow_channel(served: &Served) -> Channel {
    Channel::from_shared(format!("http://{}", served.api))
        .expect("an endpoint")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect to the API")
}

fn chunk_count(header: &proto::DownloadMessage) -> usize {
    match &header.kind {
        Some(proto::download_message::Kind::Header(h)) => h
            .manifest
            .as_ref()
            .expect("a manifest")
            .files
            .iter()
            .map(|f| f.chunks.len())
            .sum(),
        other => panic!("a download begins with its header, not {other:?}"),
    }
}

/// Reads a download to its end: the chunks received and how it ended.
async fn read_rest(
    stream: &mut tonic::Streaming<proto::DownloadMessage>,
) -> (usize, Result<(), tonic::Status>) {
    let mut chunks = 0;
    loop {
        match timeout(BOUND, stream.message()).await {
            Err(_) => panic!("the download neither ends nor sends within the bound"),
            Ok(Ok(Some(_))) => chunks += 1,
            Ok(Ok(None)) => return (chunks, Ok(())),
            Ok(Err(status)) => return (chunks, Err(status)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_whose_client_stops_reading_is_dropped_at_its_send_timeout() {
    let send_timeout = Duration::from_millis(500);
    let served = Served::start(ApiLimits {
        download_send_timeout: send_timeout,
        ..ApiLimits::default()
    })
    .await;
    served.create_model("big").await;
    // Far more than the windows plus what the node queues (a few chunks of ~1 MiB).
    let data = seeded_bytes(3, 24 << 20);
    register(&served, "big", &data).await;

    let mut stalled = VersionsClient::new(narrow_channel(&served).await)
        .download_version(proto::DownloadRequest {
            reference: "big/1".into(),
        })
        .await
        .expect("start the download")
        .into_inner();
    let header = timeout(BOUND, stalled.message())
        .await
        .expect("the header within the bound")
        .expect("the header")
        .expect("a header");
    let total = chunk_count(&header);
    assert!(
        total > 12,
        "the version has {total} chunks: too few to block the node"
    );
    // The client now reads nothing; the node's task ends at its send timeout.
    let started = Instant::now();
    timeout(BOUND, served.node.downloads.wait_until(|n| n == 0))
        .await
        .expect("the node drops a download its client does not read");
    assert!(
        started.elapsed() >= send_timeout,
        "dropped before its timeout"
    );

    // The node goes on serving: another client downloads the whole version.
    let mut reader = VersionsClient::new(served.channel().await)
        .max_decoding_message_size(usize::MAX)
        .download_version(proto::DownloadRequest {
            reference: "big/1".into(),
        })
        .await
        .expect("start another download")
        .into_inner();
    let (received, end) = read_rest(&mut reader).await;
    end.expect("a client that reads gets the whole version");
    assert_eq!(received, total + 1, "the header and every chunk");

    // The stalled client, reading again, gets what was queued and then the reason.
    let (received, end) = read_rest(&mut stalled).await;
    let status = end.expect_err("a dropped download ends with an error, not as if whole");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("read nothing for 500ms"),
        "the message names the timeout: {status:?}"
    );
    assert!(received < total, "{received} of {total} chunks were sent");
    drop((stalled, reader));
    served.stop().await;
}
