//! End-to-end tests of the chunk protocol on 127.0.0.1 (port 0), with throwaway CAs. Every test
//! is bounded by `TEST_TIMEOUT`; none sleeps to synchronise.

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::{client_config, endpoint, TransportTuning};
use super::dev_tls::DevCa;
use super::wire::{Op, RequestHeader, ResponseHeader, Status, RESPONSE_HEADER_BYTES};
use super::*;
use crate::{ChunkRef, ChunkStore, Hash, StoreError};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `test` on a two-worker runtime, failing it if it takes longer than [`TEST_TIMEOUT`].
fn run<F: Future<Output = ()>>(test: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            tokio::time::timeout(TEST_TIMEOUT, test)
                .await
                .expect("test took longer than TEST_TIMEOUT");
        });
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

struct Cluster {
    ca: DevCa,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster::named("Quiver test cluster CA")
    }

    fn named(ca_name: &str) -> Cluster {
        Cluster {
            ca: DevCa::new(ca_name).expect("CA"),
        }
    }

    fn node(&self, name: &str) -> QuicTls {
        self.ca.issue(name).expect("node certificate")
    }
}

/// Chunk `seed` of `len` bytes (deterministic, distinct per seed).
fn chunk(seed: u64, len: usize) -> (ChunkRef, Vec<u8>) {
    let mut data = vec![0u8; len];
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.finalize_xof().fill(&mut data);
    (
        ChunkRef {
            hash: Hash::of(&data),
            size_bytes: len as u32,
        },
        data,
    )
}

fn chunks(n: u64, len: usize) -> Vec<(ChunkRef, Vec<u8>)> {
    (0..n).map(|i| chunk(i, len + i as usize)).collect()
}

fn temp_store() -> (tempfile::TempDir, Arc<ChunkStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::open(dir.path().join("chunks")).expect("open store");
    (dir, Arc::new(store))
}

/// Flips a byte of the stored chunk, so that the store reports it corrupt.
fn corrupt_on_disk(store: &ChunkStore, hash: &Hash) {
    let mut bytes = store.get(hash).expect("read chunk");
    bytes[0] ^= 0xff;
    store
        .overwrite_unchecked(hash, &bytes)
        .expect("write chunk");
    assert!(matches!(store.get(hash), Err(StoreError::Corrupt { .. })));
}

/// A source that counts calls, to show what a server did (or did not) do.
#[derive(Default)]
struct Counting {
    inner: MemoryChunkSource,
    gets: AtomicUsize,
    puts: AtomicUsize,
    contains: AtomicUsize,
}

impl ChunkSource for Counting {
    fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(hash)
    }
    fn put(&self, hash: &Hash, data: &[u8]) -> Result<bool, StoreError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put(hash, data)
    }
    fn contains(&self, hash: &Hash) -> bool {
        self.contains.fetch_add(1, Ordering::SeqCst);
        self.inner.contains(hash)
    }
    fn remove(&self, hash: &Hash) -> Result<(), StoreError> {
        self.inner.remove(hash)
    }
}

impl Counting {
    fn calls(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
            + self.puts.load(Ordering::SeqCst)
            + self.contains.load(Ordering::SeqCst)
    }
}

/// A broken peer whose storage does not verify: it returns other bytes than the chunk's, of the
/// right length (so that only the client's hash check can catch them).
struct Lying {
    sizes: std::collections::HashMap<Hash, usize>,
}

impl ChunkSource for Lying {
    fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        let len = self
            .sizes
            .get(hash)
            .ok_or(StoreError::NotFound { hash: *hash })?;
        Ok(vec![0xAB; *len])
    }
    fn put(&self, _: &Hash, _: &[u8]) -> Result<bool, StoreError> {
        Ok(false)
    }
    fn contains(&self, _: &Hash) -> bool {
        true
    }
    fn remove(&self, _: &Hash) -> Result<(), StoreError> {
        Ok(())
    }
}

/// One raw request, bypassing PeerClient's checks: returns the answer's header and the rest of
/// the stream.
async fn raw_request(
    tls: &QuicTls,
    server: SocketAddr,
    header: RequestHeader,
    payload: &[u8],
) -> (ResponseHeader, Vec<u8>) {
    let (_ep, connection) = connect_raw(tls, server).await;
    let (mut send, mut recv) = connection.open_bi().await.expect("open stream");
    let mut request = header.encode().to_vec();
    request.extend_from_slice(payload);
    send.write_all(&request).await.expect("send request");
    send.finish().expect("finish");
    let mut head = [0u8; RESPONSE_HEADER_BYTES];
    recv.read_exact(&mut head).await.expect("answer header");
    let response = ResponseHeader::decode(&head, header.op).expect("valid answer header");
    let rest = recv
        .read_to_end(crate::CHUNK_SIZE_BYTES + 1)
        .await
        .expect("rest of the answer");
    connection.close(0u32.into(), b"done");
    (response, rest)
}

/// A client endpoint of `tls` and one connection from it to `server` (handshake done).
async fn connect_raw(tls: &QuicTls, server: SocketAddr) -> (quinn::Endpoint, quinn::Connection) {
    let tuning = TransportTuning::chosen();
    let mut ep = endpoint(localhost(), None, &tuning).expect("endpoint");
    ep.set_default_client_config(client_config(tls, &tuning, None).expect("client config"));
    let connection = ep
        .connect(server, PEER_TLS_SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake");
    (ep, connection)
}

/// Connections are counted once their handshake is done: the server keeps
/// `SERVER_CONNECTIONS_MAX` of them, closes one more at once with `CLOSE_AT_CONNECTION_LIMIT`,
/// and takes a new one as soon as one of the others ends. Clients whose certificate fails the
/// handshake never count.
#[test]
fn established_connections_are_bounded_and_a_freed_slot_is_reused() {
    run(async {
        let cluster = Cluster::new();
        let foreign = Cluster::named("Some other CA");
        let (_dir, store) = temp_store();
        let server =
            ChunkServer::bind(localhost(), store.clone(), &cluster.node("server")).expect("bind");
        let peer = server.local_addr();
        let tls = cluster.node("client");
        let (a, a_data) = chunk(3, 1000);
        store.put(&a.hash, &a_data).expect("put");
        let get = RequestHeader {
            op: Op::Get,
            hash: a.hash,
            len: 0,
        };

        // Failed handshakes first: they must not use up connection slots.
        let mut intruder_tls = foreign.node("intruder");
        intruder_tls.ca_cert_pem = cluster.node("x").ca_cert_pem;
        let intruder = PeerClient::new(&intruder_tls).expect("client");
        for _ in 0..3 {
            intruder
                .fetch(peer, &a)
                .await
                .expect_err("a foreign certificate");
        }

        let mut held = Vec::new();
        for _ in 0..SERVER_CONNECTIONS_MAX {
            let (ep, connection) = connect_raw(&tls, peer).await;
            // A request answered proves the server counted and serves this connection.
            let (mut send, mut recv) = connection.open_bi().await.expect("open stream");
            send.write_all(&get.encode()).await.expect("send");
            send.finish().expect("finish");
            let mut head = [0u8; RESPONSE_HEADER_BYTES];
            recv.read_exact(&mut head).await.expect("answered");
            held.push((ep, connection));
        }
        let (_ep, over) = connect_raw(&tls, peer).await;
        match over.closed().await {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, CLOSE_AT_CONNECTION_LIMIT.into());
                assert!(
                    String::from_utf8_lossy(&close.reason).contains("connection limit"),
                    "{close:?}"
                );
            }
            other => panic!("expected a close at the limit, got {other:?}"),
        }

        // One ends; the next connection is served.
        let (ep, connection) = held.pop().expect("held");
        connection.close(0u32.into(), b"done");
        ep.wait_idle().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_ep, connection) = connect_raw(&tls, peer).await;
            let (mut send, mut recv) = connection.open_bi().await.expect("open stream");
            let served = async {
                send.write_all(&get.encode()).await.ok()?;
                send.finish().ok()?;
                let mut head = [0u8; RESPONSE_HEADER_BYTES];
                recv.read_exact(&mut head).await.ok()
            };
            if served.await.is_some() {
                break;
            }
            // The server may not have seen the close yet: its slot frees when it does.
            assert!(Instant::now() < deadline, "no slot was freed");
        }
    });
}

#[test]
fn fetch_push_have_round_trip() {
    run(async {
        let cluster = Cluster::new();
        let (_dir, store) = temp_store();
        let (a, a_data) = chunk(1, 300_000);
        store.put(&a.hash, &a_data).expect("put a");
        let server =
            ChunkServer::bind(localhost(), store.clone(), &cluster.node("server")).expect("bind");
        let peer = server.local_addr();
        assert_ne!(peer.port(), 0);
        let client = PeerClient::new(&cluster.node("client")).expect("client");

        assert_eq!(client.fetch(peer, &a).await.expect("fetch a"), a_data);

        let (b, b_data) = chunk(2, crate::CHUNK_SIZE_BYTES);
        client.push(peer, &b.hash, &b_data).await.expect("push b");
        assert_eq!(
            store.get(&b.hash).expect("b is stored and verifies"),
            b_data
        );
        assert_eq!(client.fetch(peer, &b).await.expect("fetch b"), b_data);

        let (missing, _) = chunk(3, 10);
        let err = client.fetch(peer, &missing).await.expect_err("absent");
        assert!(
            matches!(&err, FetchError::NotFound { peer: p, hash } if *p == peer && *hash == missing.hash),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("peer {peer} does not have chunk {}", missing.hash)
        );

        assert_eq!(
            client
                .have(peer, &[a.hash, missing.hash, b.hash])
                .await
                .expect("have"),
            vec![true, false, true]
        );
        // More than one batch: split by the client, answered in order.
        let mut many: Vec<Hash> = (0..HAVE_BATCH_MAX as u64 + 5)
            .map(|i| Hash::of(&i.to_le_bytes()))
            .collect();
        many[HAVE_BATCH_MAX + 2] = a.hash;
        let held = client.have(peer, &many).await.expect("have, two batches");
        assert_eq!(held.len(), many.len());
        assert_eq!(held.iter().positions_true(), vec![HAVE_BATCH_MAX + 2]);
        assert!(client.have(peer, &[]).await.expect("empty").is_empty());

        // A chunk listed with the wrong size cannot verify: not read, reported corrupt.
        let wrong_size = ChunkRef {
            hash: a.hash,
            size_bytes: a.size_bytes + 1,
        };
        assert!(matches!(
            client.fetch(peer, &wrong_size).await,
            Err(FetchError::Corrupt { .. })
        ));
        // Bytes that do not match the hash are refused by the peer, which verifies them.
        let refused = client.push(peer, &missing.hash, &a_data).await;
        assert!(
            matches!(refused, Err(FetchError::Corrupt { .. })),
            "{refused:?}"
        );
        assert!(!store.contains(&missing.hash));
        // Over the chunk bound: refused locally.
        let huge = vec![0u8; crate::CHUNK_SIZE_BYTES + 1];
        assert!(matches!(
            client.push(peer, &Hash::of(&huge), &huge).await,
            Err(FetchError::Protocol { .. })
        ));
        server.shutdown().await;
    });
}

trait PositionsTrue {
    fn positions_true(self) -> Vec<usize>;
}

impl<'a, I: Iterator<Item = &'a bool>> PositionsTrue for I {
    fn positions_true(self) -> Vec<usize> {
        self.enumerate()
            .filter(|(_, &b)| b)
            .map(|(i, _)| i)
            .collect()
    }
}

#[test]
fn server_verifies_pushed_bytes_and_rejects_malformed_requests() {
    run(async {
        let cluster = Cluster::new();
        let (_dir, store) = temp_store();
        let server =
            ChunkServer::bind(localhost(), store.clone(), &cluster.node("server")).expect("bind");
        let tls = cluster.node("client");
        let (a, _) = chunk(1, 1000);
        // Bytes that do not match the hash: Corrupt, nothing stored.
        let header = RequestHeader {
            op: Op::Put,
            hash: a.hash,
            len: 5,
        };
        let (response, rest) = raw_request(&tls, server.local_addr(), header, b"wrong").await;
        assert_eq!((response.status, response.len), (Status::Corrupt, 0));
        assert!(rest.is_empty());
        assert!(!store.contains(&a.hash));
        assert!(store.list().expect("list").is_empty());

        // A GET that claims a payload: rejected with an Error naming the limit.
        let mut bad = RequestHeader {
            op: Op::Get,
            hash: a.hash,
            len: 0,
        }
        .encode();
        bad[36] = 7;
        let (response, message) = {
            let tuning = TransportTuning::chosen();
            let mut ep = endpoint(localhost(), None, &tuning).expect("endpoint");
            ep.set_default_client_config(client_config(&tls, &tuning, None).expect("config"));
            let connection = ep
                .connect(server.local_addr(), PEER_TLS_SERVER_NAME)
                .expect("connect")
                .await
                .expect("handshake");
            let (mut send, mut recv) = connection.open_bi().await.expect("stream");
            send.write_all(&bad).await.expect("send");
            send.finish().expect("finish");
            let mut head = [0u8; RESPONSE_HEADER_BYTES];
            recv.read_exact(&mut head).await.expect("header");
            let response = ResponseHeader::decode(&head, Op::Get).expect("decode");
            let message = recv
                .read_to_end(ERROR_MESSAGE_BYTES_MAX)
                .await
                .expect("message");
            (response, String::from_utf8(message).expect("utf-8"))
        };
        assert_eq!(response.status, Status::Error);
        assert!(
            message.contains("exceeds the limit of 0 bytes"),
            "{message}"
        );
        server.shutdown().await;
    });
}

#[test]
fn a_client_from_a_foreign_ca_is_rejected_and_never_served() {
    run(async {
        let cluster = Cluster::new();
        let foreign = Cluster::named("Some other CA");
        let source = Arc::new(Counting::default());
        let a_data = b"secret weights".to_vec();
        let a_hash = source.inner.insert(&a_data).expect("insert");
        let a = ChunkRef {
            hash: a_hash,
            size_bytes: a_data.len() as u32,
        };
        let server =
            ChunkServer::bind(localhost(), source.clone(), &cluster.node("server")).expect("bind");
        let peer = server.local_addr();
        let calls_before = source.calls();

        // The foreign client trusts our CA (so it accepts the server) but its own certificate
        // is signed by another CA: the server must refuse it.
        let mut intruder_tls = foreign.node("intruder");
        intruder_tls.ca_cert_pem = cluster.node("x").ca_cert_pem;
        let intruder = PeerClient::new(&intruder_tls).expect("client");
        let err = intruder.fetch(peer, &a).await.expect_err("rejected");
        assert!(err.to_string().contains("certificate"), "{err}");
        assert!(
            matches!(&err, FetchError::Connect { peer: p, .. } if *p == peer),
            "{err:?}"
        );
        let (b, b_data) = chunk(9, 100);
        let err = intruder
            .push(peer, &b.hash, &b_data)
            .await
            .expect_err("rejected");
        assert!(matches!(err, FetchError::Connect { .. }), "{err:?}");
        let err = intruder.have(peer, &[a.hash]).await.expect_err("rejected");
        assert!(matches!(err, FetchError::Connect { .. }), "{err:?}");
        assert_eq!(
            source.calls(),
            calls_before,
            "the server must not serve a foreign client"
        );
        assert!(!source.inner.contains(&b.hash));

        // And a client of our cluster refuses a server from a foreign CA.
        let impostor = ChunkServer::bind(localhost(), source.clone(), &foreign.node("impostor"))
            .expect("bind impostor");
        let member = PeerClient::new(&cluster.node("member")).expect("client");
        let err = member
            .fetch(impostor.local_addr(), &a)
            .await
            .expect_err("server not trusted");
        assert!(err.to_string().contains("certificate"), "{err}");
        assert!(matches!(err, FetchError::Connect { .. }), "{err:?}");
        assert_eq!(source.calls(), calls_before);

        // The legitimate client is served.
        assert_eq!(member.fetch(peer, &a).await.expect("fetch"), a_data);
        assert_eq!(source.gets.load(Ordering::SeqCst), 1);
        server.shutdown().await;
        impostor.shutdown().await;
    });
}

#[test]
fn a_corrupt_chunk_on_disk_is_answered_corrupt_and_never_sent() {
    run(async {
        let cluster = Cluster::new();
        let (_dir, store) = temp_store();
        let (a, a_data) = chunk(4, 200_000);
        store.put(&a.hash, &a_data).expect("put");
        corrupt_on_disk(&store, &a.hash);
        let server =
            ChunkServer::bind(localhost(), store.clone(), &cluster.node("server")).expect("bind");
        let peer = server.local_addr();
        let tls = cluster.node("client");

        let client = PeerClient::new(&tls).expect("client");
        let err = client.fetch(peer, &a).await.expect_err("corrupt");
        assert!(
            matches!(&err, FetchError::Corrupt { peer: p, hash } if *p == peer && *hash == a.hash),
            "{err:?}"
        );

        // On the wire: status Corrupt, length 0, and not one byte after it.
        let header = RequestHeader {
            op: Op::Get,
            hash: a.hash,
            len: 0,
        };
        let (response, rest) = raw_request(&tls, peer, header, &[]).await;
        assert_eq!((response.status, response.len), (Status::Corrupt, 0));
        assert!(
            rest.is_empty(),
            "{} bytes of a corrupt chunk were sent",
            rest.len()
        );
        server.shutdown().await;
    });
}

#[test]
fn fetch_all_completes_from_the_good_peer_and_bans_the_corrupt_ones() {
    run(async {
        let cluster = Cluster::new();
        let data = chunks(12, 50_000);
        let refs: Vec<ChunkRef> = data.iter().map(|(r, _)| r.clone()).collect();
        let (_good_dir, good) = temp_store();
        let (_rot_dir, rotten) = temp_store();
        for (r, bytes) in &data {
            good.put(&r.hash, bytes).expect("put good");
            rotten.put(&r.hash, bytes).expect("put rotten");
            corrupt_on_disk(&rotten, &r.hash);
        }
        let good_server =
            ChunkServer::bind(localhost(), good, &cluster.node("good")).expect("bind");
        let rotten_server =
            ChunkServer::bind(localhost(), rotten, &cluster.node("rotten")).expect("bind");
        let liar = Lying {
            sizes: data.iter().map(|(r, d)| (r.hash, d.len())).collect(),
        };
        let lying_server =
            ChunkServer::bind(localhost(), Arc::new(liar), &cluster.node("liar")).expect("bind");
        let client = PeerClient::new(&cluster.node("client")).expect("client");
        let (_dir, target) = temp_store();
        // The bad peers first, so that they are tried.
        let peers = [
            rotten_server.local_addr(),
            lying_server.local_addr(),
            good_server.local_addr(),
        ];
        let report = fetch_all(
            &client,
            target.as_ref(),
            &refs,
            &peers,
            FetchOptions::default(),
        )
        .await
        .expect("fetch_all");
        assert_eq!(report.fetched_chunks, refs.len());
        assert_eq!(report.skipped_chunks, 0);
        assert_eq!(
            report.fetched_bytes,
            data.iter().map(|(_, d)| d.len() as u64).sum::<u64>()
        );
        let mut banned = report.corrupt_peers.clone();
        banned.sort();
        let mut expected = vec![rotten_server.local_addr(), lying_server.local_addr()];
        expected.sort();
        assert_eq!(banned, expected);
        assert!(report.failed_attempts >= 2);
        for (r, bytes) in &data {
            assert_eq!(&target.get(&r.hash).expect("stored and verified"), bytes);
        }
        for s in [good_server, rotten_server, lying_server] {
            s.shutdown().await;
        }
    });
}

#[test]
fn fetch_all_fails_with_the_last_error_when_no_peer_has_a_good_copy() {
    run(async {
        let cluster = Cluster::new();
        let (r, bytes) = chunk(1, 1000);
        let (_dir, rotten) = temp_store();
        rotten.put(&r.hash, &bytes).expect("put");
        corrupt_on_disk(&rotten, &r.hash);
        let rotten_server =
            ChunkServer::bind(localhost(), rotten, &cluster.node("rotten")).expect("bind");
        let empty_server = ChunkServer::bind(
            localhost(),
            Arc::new(MemoryChunkSource::new()),
            &cluster.node("empty"),
        )
        .expect("bind");
        let client = PeerClient::new(&cluster.node("client")).expect("client");
        let (_tdir, target) = temp_store();
        let refs = [r.clone()];

        // Only a corrupt copy: its peer is banned, then nothing is left.
        let err = fetch_all(
            &client,
            target.as_ref(),
            &refs,
            &[rotten_server.local_addr()],
            FetchOptions::default(),
        )
        .await
        .expect_err("no good copy");
        assert!(
            matches!(err, FetchError::Corrupt { hash, .. } if hash == r.hash),
            "{err:?}"
        );

        // Nobody has it: NotFound after the attempt limit.
        let opts = FetchOptions {
            attempts_per_chunk_max: 3,
            ..FetchOptions::default()
        };
        let err = fetch_all(
            &client,
            target.as_ref(),
            &refs,
            &[empty_server.local_addr()],
            opts,
        )
        .await
        .expect_err("absent everywhere");
        assert!(
            matches!(err, FetchError::NotFound { hash, .. } if hash == r.hash),
            "{err:?}"
        );

        // No peers at all.
        let err = fetch_all(
            &client,
            target.as_ref(),
            &refs,
            &[],
            FetchOptions::default(),
        )
        .await
        .expect_err("no peers");
        assert!(
            matches!(err, FetchError::NoPeers { hash, peers: 0, banned: 0 } if hash == r.hash),
            "{err:?}"
        );
        assert!(!target.contains(&r.hash));
        rotten_server.shutdown().await;
        empty_server.shutdown().await;
    });
}

#[test]
fn fetch_all_resumes_skipping_chunks_already_stored() {
    run(async {
        let cluster = Cluster::new();
        let data = chunks(10, 20_000);
        let source = Arc::new(Counting::default());
        for (_, bytes) in &data {
            source.inner.insert(bytes).expect("insert");
        }
        let server =
            ChunkServer::bind(localhost(), source.clone(), &cluster.node("server")).expect("bind");
        let client = PeerClient::new(&cluster.node("client")).expect("client");
        let (_dir, target) = temp_store();
        for (r, bytes) in data.iter().step_by(2) {
            target.put(&r.hash, bytes).expect("pre-populate");
        }
        let mut refs: Vec<ChunkRef> = data.iter().map(|(r, _)| r.clone()).collect();
        refs.push(refs[1].clone()); // listed twice: fetched once
        let report = fetch_all(
            &client,
            target.as_ref(),
            &refs,
            &[server.local_addr()],
            FetchOptions::default(),
        )
        .await
        .expect("fetch_all");
        assert_eq!(report.skipped_chunks, 5);
        assert_eq!(report.fetched_chunks, 5);
        assert_eq!(report.failed_attempts, 0);
        assert_eq!(
            source.gets.load(Ordering::SeqCst),
            5,
            "only the missing chunks are requested"
        );
        for (r, bytes) in &data {
            assert_eq!(&target.get(&r.hash).expect("stored"), bytes);
        }
        // Everything present: nothing requested at all.
        let again = fetch_all(
            &client,
            target.as_ref(),
            &refs,
            &[server.local_addr()],
            FetchOptions::default(),
        )
        .await
        .expect("second fetch_all");
        assert_eq!((again.skipped_chunks, again.fetched_chunks), (10, 0));
        assert_eq!(source.gets.load(Ordering::SeqCst), 5);
        server.shutdown().await;
    });
}

#[test]
fn peers_that_never_answer_are_retried_elsewhere_within_bounded_time() {
    run(async {
        let cluster = Cluster::new();
        let data = chunks(8, 10_000);
        let source = Arc::new(MemoryChunkSource::new());
        for (_, bytes) in &data {
            source.insert(bytes).expect("insert");
        }
        let good = ChunkServer::bind(localhost(), source.clone(), &cluster.node("good"))
            .expect("bind good");
        // A server the client has a pooled connection to, then shut down.
        let gone = ChunkServer::bind(localhost(), source.clone(), &cluster.node("gone"))
            .expect("bind gone");
        let gone_addr = gone.local_addr();
        let client = PeerClient::new(&cluster.node("client")).expect("client");
        client
            .connect(gone_addr)
            .await
            .expect("connect before shutdown");
        gone.shutdown().await;
        // A UDP socket that swallows every packet: a peer that never answers.
        let black_hole = UdpSocket::bind(localhost()).expect("bind black hole");
        let silent_addr = black_hole.local_addr().expect("addr");

        let (_dir, target) = temp_store();
        let refs: Vec<ChunkRef> = data.iter().map(|(r, _)| r.clone()).collect();
        let chunk_timeout = Duration::from_millis(500);
        let opts = FetchOptions {
            parallelism: 6,
            chunk_timeout,
            attempts_per_chunk_max: 3,
        };
        let started = Instant::now();
        let report = fetch_all(
            &client,
            target.as_ref(),
            &refs,
            &[silent_addr, gone_addr, good.local_addr()],
            opts,
        )
        .await
        .expect("fetch_all completes from the good peer");
        let elapsed = started.elapsed();
        assert_eq!(report.fetched_chunks, refs.len());
        assert!(report.corrupt_peers.is_empty());
        // Both dead peers got work first (least loaded), failed, and were not used again.
        assert!(report.failed_attempts >= 2, "{report:?}");
        // Each chunk waits at most one timeout per dead peer; in practice one round.
        assert!(
            elapsed < chunk_timeout * 3 + Duration::from_secs(2),
            "took {elapsed:?}"
        );
        for (r, bytes) in &data {
            assert_eq!(&target.get(&r.hash).expect("stored"), bytes);
        }
        drop(black_hole);
        good.shutdown().await;
    });
}

#[test]
fn a_restarted_peer_is_reconnected() {
    run(async {
        let cluster = Cluster::new();
        let (a, a_data) = chunk(1, 1000);
        let source = Arc::new(MemoryChunkSource::new());
        source.insert(&a_data).expect("insert");
        let tls = cluster.node("server");
        let first = ChunkServer::bind(localhost(), source.clone(), &tls).expect("bind");
        let addr = first.local_addr();
        let client = PeerClient::new(&cluster.node("client")).expect("client");
        assert_eq!(client.fetch(addr, &a).await.expect("fetch"), a_data);
        first.shutdown().await;
        drop(first);
        // Same address, new server: the pooled connection is dead and gets replaced. quinn's
        // driver task releases the old socket asynchronously: retry the bind until it has.
        let second = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ChunkServer::bind(addr, source.clone(), &tls) {
                    Ok(server) => return server,
                    Err(TransferError::Bind { source, .. })
                        if source.kind() == std::io::ErrorKind::AddrInUse =>
                    {
                        tokio::task::yield_now().await
                    }
                    Err(e) => panic!("rebind: {e}"),
                }
            }
        })
        .await
        .expect("the old server's port is released");
        assert_eq!(client.fetch(addr, &a).await.expect("fetch again"), a_data);
        second.shutdown().await;
    });
}

#[test]
fn bad_tls_material_is_reported_with_the_field() {
    run(async {
        let cluster = Cluster::new();
        let good = cluster.node("n");
        let cases = [
            (
                QuicTls {
                    ca_cert_pem: "not a certificate".into(),
                    ..good.clone()
                },
                "ca_cert_pem",
            ),
            (
                QuicTls {
                    cert_pem: String::new(),
                    ..good.clone()
                },
                "cert_pem",
            ),
            (
                QuicTls {
                    key_pem: "garbage".into(),
                    ..good.clone()
                },
                "key_pem",
            ),
        ];
        for (tls, field) in cases {
            let err = PeerClient::new(&tls).err().expect("client config fails");
            assert!(err.to_string().contains(field), "{err}");
            let err = ChunkServer::bind(localhost(), Arc::new(MemoryChunkSource::new()), &tls)
                .err()
                .expect("server config fails");
            assert!(err.to_string().contains(field), "{err}");
        }
    });
}

#[test]
fn binding_outside_a_runtime_is_an_error() {
    let tls = Cluster::new().node("n");
    let err = ChunkServer::bind(localhost(), Arc::new(MemoryChunkSource::new()), &tls)
        .err()
        .expect("no runtime");
    assert!(matches!(err, TransferError::NoRuntime), "{err:?}");
}

#[test]
fn bench_transport_runs_at_toy_size() {
    run(async {
        let report = bench_transport(8 * 1024 * 1024, 4).await.expect("bench");
        assert_eq!(report.size_bytes, 8 * 1024 * 1024);
        for figure in [
            report.tcp_mb_per_s,
            report.quic_stream_mb_per_s,
            report.quic_stream_default_mb_per_s,
            report.chunk_protocol_mb_per_s,
        ] {
            assert!(figure.is_finite() && figure > 0.0, "{report:?}");
        }
        assert!(report.to_string().contains("(c)/(b)"));
        let chosen = TransportTuning::chosen();
        let mb_per_s = bench_chunk_protocol(4 * 1024 * 1024, 2, 2, &chosen, Duration::ZERO)
            .await
            .expect("two connections");
        assert!(mb_per_s > 0.0);
        // Through the delay relay (20 ms round trips).
        let mb_per_s = bench_quic_stream(2 * 1024 * 1024, &chosen, Duration::from_millis(20))
            .await
            .expect("stream with RTT");
        assert!(mb_per_s > 0.0);
        let mb_per_s =
            bench_chunk_protocol(2 * 1024 * 1024, 2, 1, &chosen, Duration::from_millis(20))
                .await
                .expect("chunk protocol with RTT");
        assert!(mb_per_s > 0.0);
        assert!(bench_chunk_protocol(1024, 0, 1, &chosen, Duration::ZERO)
            .await
            .is_err());
    });
}

fn assert_send<T: Send>(_: &T) {}

/// The node spawns these futures on a multi-threaded runtime: they must be `Send` (checked at
/// compile time); the ones with nothing to do return at once.
#[test]
fn request_futures_are_send() {
    run(async {
        let cluster = Cluster::new();
        let client = PeerClient::new(&cluster.node("client")).expect("client");
        let (_dir, store) = temp_store();
        let refs: Vec<ChunkRef> = Vec::new();
        let fetch = fetch_all(&client, store.as_ref(), &refs, &[], FetchOptions::default());
        assert_send(&fetch);
        let report = fetch.await.expect("nothing to fetch");
        assert_eq!(report, FetchReport::default());
        let empty = Hash::of(b"");
        let push = client.push(localhost(), &empty, &[]);
        assert_send(&push);
        let have = client.have(localhost(), &[]);
        assert_send(&have);
        assert!(have.await.expect("nothing asked").is_empty());
    });
}

/// A gate that names the nodes of the certificates it was given and admits only those.
#[derive(Debug)]
struct NodeIds(Vec<(Vec<u8>, u64)>);

impl NodeIds {
    fn of(nodes: &[(&QuicTls, u64)]) -> Arc<NodeIds> {
        let named = nodes
            .iter()
            .map(|(tls, id)| {
                let (chain, _) = super::config::identity(tls).expect("certificate");
                (chain[0].to_vec(), *id)
            })
            .collect();
        Arc::new(NodeIds(named))
    }
}

impl PeerGate for NodeIds {
    fn admit(&self, end_entity: &rustls::pki_types::CertificateDer<'_>) -> Result<u64, String> {
        self.0
            .iter()
            .find(|(der, _)| der.as_slice() == end_entity.as_ref())
            .map(|(_, id)| *id)
            .ok_or_else(|| "an unknown certificate".to_string())
    }
}

/// A node's certificates as `QuicCerts`: its own, fixed, and `gate`.
fn node_certs(tls: &QuicTls, gate: Arc<NodeIds>) -> QuicCerts {
    let (chain, key) = super::config::identity(tls).expect("certificate and key");
    let provider = rustls::crypto::ring::default_provider();
    let key = rustls::sign::CertifiedKey::from_der(chain, key, &provider).expect("key");
    let own = Arc::new(rustls::sign::SingleCertAndKey::from(key));
    QuicCerts {
        server_cert: own.clone(),
        client_cert: own,
        gate,
    }
}

/// Polls `stats` until its totals are `expected` (a server counts what it sent only once the
/// send returns, which may be after the client has read it), failing after a deadline.
async fn wait_for_totals(stats: &TransferStats, expected: Vec<(PeerLabel, ChunkBytes)>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.totals() != expected {
        assert!(
            Instant::now() < deadline,
            "totals {:?}, expected {expected:?}",
            stats.totals()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn chunk_bytes_are_counted_per_peer_by_node_or_else_by_address() {
    run(async {
        let cluster = Cluster::new();
        let (server_tls, client_tls) = (cluster.node("server"), cluster.node("client"));
        let gate = NodeIds::of(&[(&server_tls, 1), (&client_tls, 2)]);
        let (_dir, store) = temp_store();
        let (a, a_data) = chunk(1, 300_000);
        store.put(&a.hash, &a_data).expect("put a");
        let server = ChunkServer::bind_with_certs(
            localhost(),
            store.clone(),
            &server_tls,
            &node_certs(&server_tls, gate.clone()),
        )
        .expect("bind");
        let peer = server.local_addr();
        let client =
            PeerClient::with_certs(&client_tls, &node_certs(&client_tls, gate)).expect("client");

        client.fetch(peer, &a).await.expect("fetch a");
        let (b, b_data) = chunk(2, 70_000);
        client.push(peer, &b.hash, &b_data).await.expect("push b");
        // A chunk the server lacks and a push it refuses move no chunk data.
        let (missing, _) = chunk(3, 10);
        client.fetch(peer, &missing).await.expect_err("absent");
        client
            .push(peer, &missing.hash, &a_data)
            .await
            .expect_err("refused");
        let client_bytes = ChunkBytes {
            fetched_bytes: 300_000,
            pushed_bytes: 70_000,
            ..ChunkBytes::default()
        };
        assert_eq!(
            client.stats().totals(),
            vec![(PeerLabel::Node(1), client_bytes)]
        );
        let server_bytes = ChunkBytes {
            served_bytes: 300_000,
            received_bytes: 70_000,
            ..ChunkBytes::default()
        };
        wait_for_totals(server.stats(), vec![(PeerLabel::Node(2), server_bytes)]).await;

        // Without a gate, each side names the other by its address.
        let plain = ChunkServer::bind(localhost(), store.clone(), &server_tls).expect("bind");
        let anonymous = PeerClient::new(&cluster.node("anonymous")).expect("client");
        anonymous
            .fetch(plain.local_addr(), &b)
            .await
            .expect("fetch b");
        let fetched = ChunkBytes {
            fetched_bytes: 70_000,
            ..ChunkBytes::default()
        };
        assert_eq!(
            anonymous.stats().totals(),
            vec![(PeerLabel::Addr(plain.local_addr()), fetched)]
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let totals = plain.stats().totals();
            if let [(PeerLabel::Addr(addr), bytes)] = totals.as_slice() {
                if bytes.served_bytes == 70_000 {
                    assert!(addr.ip().is_loopback(), "{addr}");
                    break;
                }
            }
            assert!(Instant::now() < deadline, "plain server totals {totals:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.shutdown().await;
        plain.shutdown().await;
    });
}
