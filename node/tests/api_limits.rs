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
use quiver_node::auth::{node_principal, PresentedToken};
use quiver_node::command::Op;
use quiver_node::domain::Actor;
use quiver_node::server::{serve, ApiLimits};
use quiver_node::tls::ClusterCa;
use quiver_node::{Node, NodeConfig};
use rand::{rngs::StdRng, RngCore, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

/// Adds the test's admin token to every request.
#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel whose requests carry the test's admin token.
type Authed = InterceptedService<Channel, Bearer>;

/// The longest any test waits for what it expects before it fails.
const BOUND: Duration = Duration::from_secs(10);

/// A single-node cluster serving its API on loopback.
struct Served {
    node: Arc<Node>,
    api: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    /// The cluster CA's certificate (PEM), which the clients verify the node with.
    ca_pem: String,
    /// The cluster's first admin's token (`qvr_…`).
    token: String,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(limits: ApiLimits) -> Served {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = ClusterCa::create(&dir.path().join("ca"), "api-limits").expect("a cluster CA");
        let tls = ca.issue(1).expect("a node certificate");
        let ca_pem = tls.ca_cert_pem.clone();
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
                chunk_gc_grace: None,
                allow_anonymous_reads: false,
            },
            peer,
        )
        .await
        .expect("open the node");
        let token = PresentedToken::random();
        node.propose(
            Actor {
                name: node_principal(1),
                authenticated: true,
            },
            Op::Bootstrap {
                id: token.id.clone(),
                principal: "admin".into(),
                secret_hash: token.secret_hash(),
            },
        )
        .await
        .expect("bootstrap the first admin");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(node.clone(), api, limits, async {
            let _ = stopped.await;
        }));
        Served {
            node,
            api: api_addr,
            stop: Some(stop),
            server: Some(server),
            token: token.to_string(),
            ca_pem,
            _dir: dir,
        }
    }

    /// A client channel of its own (one HTTP/2 connection), its requests carrying the admin's
    /// token.
    async fn channel(&self) -> Authed {
        let channel = self.endpoint().connect().await.expect("connect to the API");
        self.authed(channel)
    }

    /// The API's endpoint over TLS, verified with the cluster CA.
    fn endpoint(&self) -> Endpoint {
        Channel::from_shared(format!("https://{}", self.api))
            .expect("an endpoint")
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&self.ca_pem))
                    .domain_name(quiver_raft::PEER_TLS_SERVER_NAME),
            )
            .expect("a TLS configuration")
    }

    fn authed(&self, channel: Channel) -> Authed {
        let value = format!("Bearer {}", self.token)
            .parse()
            .expect("a header value");
        InterceptedService::new(channel, Bearer(value))
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
async fn narrow_channel(served: &Served) -> Authed {
    let channel = served
        .endpoint()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect to the API");
    served.authed(channel)
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
            ..Default::default()
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
            ..Default::default()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_download_sends_the_chunks_from_where_it_stopped_of_the_same_version_only() {
    let served = Served::start(ApiLimits::default()).await;
    served.create_model("big").await;
    let data = seeded_bytes(5, 6 << 20);
    register(&served, "big", &data).await;
    let download = |resume_from_chunk: u64, resume_manifest_root: String| {
        let served = &served;
        async move {
            let mut client =
                VersionsClient::new(served.channel().await).max_decoding_message_size(usize::MAX);
            client
                .download_version(proto::DownloadRequest {
                    reference: "big/1".into(),
                    resume_from_chunk,
                    resume_manifest_root,
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    let mut whole = download(0, String::new()).await.expect("a whole download");
    let header = timeout(BOUND, whole.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let total = chunk_count(&header);
    let Some(proto::download_message::Kind::Header(header)) = header.kind else {
        unreachable!("chunk_count checked the header")
    };
    let root = header.version.unwrap().manifest_root;
    let mut all = Vec::new();
    while let Some(message) = timeout(BOUND, whole.message()).await.unwrap().unwrap() {
        all.push(message);
    }
    assert_eq!(all.len(), total);
    assert!(
        total >= 3,
        "{total} chunks: too few to resume in the middle"
    );

    for from in [1, total as u64 - 1, total as u64] {
        let mut resumed = download(from, root.clone())
            .await
            .expect("a resumed download");
        let mut messages = Vec::new();
        while let Some(message) = timeout(BOUND, resumed.message()).await.unwrap().unwrap() {
            messages.push(message);
        }
        assert!(matches!(
            messages[0].kind,
            Some(proto::download_message::Kind::Header(_))
        ));
        assert_eq!(
            messages[1..],
            all[from as usize..],
            "resumed from chunk {from}"
        );
    }

    // Another version's root, or none, or a hostile one: refused, naming the fix.
    for wrong in [
        String::new(),
        "0".repeat(64),
        "x".repeat(100_000),
        "\0/../é".into(),
    ] {
        let status = download(1, wrong)
            .await
            .expect_err("a changed root is refused");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status
                .message()
                .contains("download it again from the start"),
            "{status:?}"
        );
        assert!(
            status.message().len() < 1000,
            "the root is not echoed whole"
        );
    }
    for past in [total as u64 + 1, u64::MAX] {
        let status = download(past, root.clone())
            .await
            .expect_err("past the end");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("resume_from_chunk"), "{status:?}");
    }
    served.stop().await;
}

// ------------------------------------------------------------------ raw HTTP/2 connections

/// Just enough of an HTTP/2 client, written by hand, to do what tonic's client never does:
/// open more streams than the server announced (tonic's client queues such a request until a
/// stream ends), withhold all flow-control window, and stop answering pings.
mod raw_h2 {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;

    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const FLAG_END_STREAM: u8 = 0x1;
    pub const FLAG_ACK: u8 = 0x1;
    const FLAG_END_HEADERS: u8 = 0x4;
    pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
    const SETTINGS_ENABLE_PUSH: u16 = 0x2;
    const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;

    #[derive(Debug)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// A SETTINGS frame's value of `id`, if it carries one.
        pub fn setting(&self, id: u16) -> Option<u32> {
            self.payload.chunks_exact(6).find_map(|s| {
                (u16::from_be_bytes([s[0], s[1]]) == id)
                    .then(|| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
            })
        }

        /// An RST_STREAM frame's error code.
        pub fn error_code(&self) -> u32 {
            u32::from_be_bytes(self.payload[..4].try_into().expect("an error code"))
        }
    }

    pub struct Connection {
        socket: TlsStream<TcpStream>,
        next_stream: u32,
        /// `Bearer <token>`, sent with every request.
        authorization: String,
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).expect("a small frame");
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    /// A header field as an HPACK literal without indexing, new name, no Huffman coding.
    fn header(block: &mut Vec<u8>, name: &str, value: &str) {
        assert!(name.len() < 127 && value.len() < 127, "one-byte lengths");
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend(name.as_bytes());
        block.push(value.len() as u8);
        block.extend(value.as_bytes());
    }

    impl Connection {
        /// Connects and sends the preface with our settings: no push, and streams' initial
        /// window `initial_window_bytes` (0: the server cannot send a byte of any body).
        pub async fn open(
            addr: SocketAddr,
            initial_window_bytes: u32,
            token: &str,
            ca_pem: &str,
        ) -> Connection {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            tcp.set_nodelay(true).expect("nodelay");
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
                roots
                    .add(ca.expect("a CA certificate"))
                    .expect("a usable CA");
            }
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let name = ServerName::try_from(quiver_raft::PEER_TLS_SERVER_NAME).expect("a name");
            let mut socket = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .expect("TLS handshake");
            let mut settings = Vec::new();
            for (id, value) in [
                (SETTINGS_ENABLE_PUSH, 0),
                (SETTINGS_INITIAL_WINDOW_SIZE, initial_window_bytes),
            ] {
                settings.extend(id.to_be_bytes());
                settings.extend(value.to_be_bytes());
            }
            let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            out.extend(frame(SETTINGS, 0, 0, &settings));
            socket.write_all(&out).await.expect("send the preface");
            Connection {
                socket,
                next_stream: 1,
                authorization: format!("Bearer {token}"),
            }
        }

        /// The bytes that open a stream with a unary or server-streaming gRPC request for
        /// `path` carrying `message`; with `end`, the request ends there. Returns the stream's
        /// id and the bytes, to be sent with [`Connection::send`].
        pub fn request(&mut self, path: &str, message: &[u8], end: bool) -> (u32, Vec<u8>) {
            let id = self.next_stream;
            self.next_stream += 2;
            let mut block = Vec::new();
            for (name, value) in [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", path),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("authorization", self.authorization.as_str()),
            ] {
                header(&mut block, name, value);
            }
            let mut body = vec![0u8];
            body.extend(u32::try_from(message.len()).expect("small").to_be_bytes());
            body.extend(message);
            let mut out = frame(HEADERS, FLAG_END_HEADERS, id, &block);
            out.extend(frame(
                DATA,
                if end { FLAG_END_STREAM } else { 0 },
                id,
                &body,
            ));
            (id, out)
        }

        pub fn reset(stream: u32, code: u32) -> Vec<u8> {
            frame(RST_STREAM, 0, stream, &code.to_be_bytes())
        }

        pub async fn send(&mut self, bytes: &[u8]) {
            self.socket.write_all(bytes).await.expect("send frames");
        }

        /// The next frame, answering SETTINGS and PING as a live client does; `None` once the
        /// server has closed the connection.
        pub async fn next(&mut self) -> Option<Frame> {
            let frame = self.next_unanswered().await?;
            if frame.kind == SETTINGS && frame.flags & FLAG_ACK == 0 {
                self.send(&self::frame(SETTINGS, FLAG_ACK, 0, &[])).await;
            }
            if frame.kind == PING && frame.flags & FLAG_ACK == 0 {
                self.send(&self::frame(PING, FLAG_ACK, 0, &frame.payload))
                    .await;
            }
            Some(frame)
        }

        /// The next frame as it arrives, answering nothing: for a peer that has stopped
        /// reading and reads again only to see what the server did meanwhile.
        pub async fn next_unanswered(&mut self) -> Option<Frame> {
            let mut head = [0u8; 9];
            self.socket.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            self.socket.read_exact(&mut payload).await.ok()?;
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
            Some(Frame {
                kind: head[3],
                flags: head[4],
                stream: stream & 0x7fff_ffff,
                payload,
            })
        }
    }
}

const DOWNLOAD_PATH: &str = "/quiver.v1.Versions/DownloadVersion";

fn download_request(reference: &str) -> Vec<u8> {
    prost::Message::encode_to_vec(&proto::DownloadRequest {
        reference: reference.into(),
        ..Default::default()
    })
}

/// Reads frames until `done` says so, failing on a GOAWAY, a closed connection or the bound.
async fn read_until(conn: &mut raw_h2::Connection, mut done: impl FnMut(&raw_h2::Frame) -> bool) {
    timeout(BOUND, async {
        loop {
            let frame = conn
                .next()
                .await
                .expect("the server keeps the connection open");
            assert_ne!(
                frame.kind,
                raw_h2::GOAWAY,
                "the server closed the connection: {frame:?}"
            );
            if done(&frame) {
                return;
            }
        }
    })
    .await
    .expect("the server answers within the bound");
}

// --------------------------------------------------------------------- streams per connection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_has_at_most_its_streams_open_and_the_next_is_refused_until_one_ends() {
    let limits = ApiLimits::default();
    let max = limits.streams_per_connection_max;
    let served = Served::start(limits).await;
    served.create_model("small").await;
    register(&served, "small", &seeded_bytes(4, 1024)).await;

    // With no window the node can send no body: every download stays open after its headers.
    let mut conn = raw_h2::Connection::open(served.api, 0, &served.token, &served.ca_pem).await;
    let mut announced = None;
    read_until(&mut conn, |f| {
        if f.kind == raw_h2::SETTINGS && f.flags & raw_h2::FLAG_ACK == 0 {
            announced = f.setting(raw_h2::SETTINGS_MAX_CONCURRENT_STREAMS);
            return true;
        }
        false
    })
    .await;
    assert_eq!(announced, Some(max), "the server announces its limit");

    let request = download_request("small/1");
    let mut bytes = Vec::new();
    let mut open = Vec::new();
    for _ in 0..=max {
        let (id, frames) = conn.request(DOWNLOAD_PATH, &request, true);
        open.push(id);
        bytes.extend(frames);
    }
    let one_more = open.pop().expect("the last stream");
    conn.send(&bytes).await;

    // Each of the first `max` gets its response headers (and no more: no window); the one
    // beyond them is refused by HTTP/2 itself.
    let mut answered = std::collections::BTreeSet::new();
    let mut refused = Vec::new();
    read_until(&mut conn, |f| {
        match f.kind {
            raw_h2::HEADERS => {
                assert_ne!(f.stream, one_more, "the stream over the limit was opened");
                assert_eq!(
                    f.flags & raw_h2::FLAG_END_STREAM,
                    0,
                    "a download failed: {f:?}"
                );
                assert!(answered.insert(f.stream), "headers twice on {}", f.stream);
            }
            raw_h2::RST_STREAM => {
                assert_eq!(
                    f.stream, one_more,
                    "only the stream over the limit is refused"
                );
                refused.push(f.error_code());
            }
            raw_h2::DATA => panic!("the server sent a body without window: {f:?}"),
            _ => {}
        }
        answered.len() == open.len() && !refused.is_empty()
    })
    .await;
    assert_eq!(answered.len(), max as usize);
    assert!(!answered.contains(&one_more));
    // (Its request's body, already sent, may draw a second reset: STREAM_CLOSED.)
    assert_eq!(
        refused.first(),
        Some(&raw_h2::REFUSED_STREAM),
        "{refused:?}"
    );

    // Another connection is not held up by this one's streams.
    let v = VersionsClient::new(served.channel().await)
        .get_version(proto::GetVersionRequest {
            reference: "small/1".into(),
            ..Default::default()
        })
        .await
        .expect("another connection is served")
        .into_inner();
    assert_eq!(v.version, 1);

    // Once one stream ends, the next one opens.
    let (again, frames) = conn.request(DOWNLOAD_PATH, &request, true);
    let mut bytes = raw_h2::Connection::reset(open[0], raw_h2::CANCEL);
    bytes.extend(frames);
    conn.send(&bytes).await;
    read_until(&mut conn, |f| {
        assert!(
            !(f.kind == raw_h2::RST_STREAM && f.stream == again),
            "a stream opened after one ended is refused: {f:?}"
        );
        f.kind == raw_h2::HEADERS && f.stream == again
    })
    .await;
    drop(conn);
    served.stop().await;
}

// ------------------------------------------------------------------------------ keepalive

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stops_answering_pings_is_closed_and_its_upload_slot_freed() {
    let limits = ApiLimits {
        keepalive_interval: Duration::from_millis(300),
        keepalive_timeout: Duration::from_millis(300),
        ..ApiLimits::default()
    };
    // The upload idle timeout stays at its 60 s: only the keepalive can free the slot in time.
    assert!(limits.upload_idle_timeout > BOUND);
    let served = Served::start(limits).await;
    served.create_model("gone").await;

    let mut conn =
        raw_h2::Connection::open(served.api, 65_535, &served.token, &served.ca_pem).await;
    read_until(&mut conn, |f| {
        f.kind == raw_h2::SETTINGS && f.flags & raw_h2::FLAG_ACK == 0
    })
    .await;
    let header = upload_messages("gone", &[0u8; 16], 16).swap_remove(0);
    let (_, frames) = conn.request(
        "/quiver.v1.Versions/RegisterVersion",
        &prost::Message::encode_to_vec(&header),
        false,
    );
    conn.send(&frames).await;
    timeout(BOUND, served.node.uploads.in_use().wait_until(|n| n == 1))
        .await
        .expect("the upload takes a slot");

    // From here the client reads nothing, so it answers no ping: as a peer that vanished.
    let started = Instant::now();
    timeout(BOUND, served.node.uploads.in_use().wait_until(|n| n == 0))
        .await
        .expect("the node closes the silent connection and frees its upload's slot");
    assert!(
        started.elapsed() >= limits.keepalive_interval,
        "closed before a ping could go unanswered"
    );
    // What the server sent meanwhile: a ping, then the end of the connection.
    let mut pinged = false;
    timeout(BOUND, async {
        while let Some(f) = conn.next_unanswered().await {
            pinged |= f.kind == raw_h2::PING && f.flags & raw_h2::FLAG_ACK == 0;
        }
    })
    .await
    .expect("the connection is closed");
    assert!(pinged, "the server pinged the silent client");

    // The node goes on serving.
    assert_eq!(served.version_count("gone").await, 0);
    served.stop().await;
}
