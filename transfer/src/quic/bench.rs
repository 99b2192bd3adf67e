//! Transport benchmarks: loopback TCP as the baseline, a bare quinn stream, and the chunk
//! protocol end to end (in-memory source, verified and discarded chunks). Each function measures
//! one figure in MB/s (10^6 bytes per second) on 127.0.0.1; both ends run in this process, so on
//! a small machine they share its cores. `docs/decisions/0003-quic-transport.md` has the figures.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::config::{client_config, endpoint, server_config, TransportTuning};
use super::dev_tls::DevCa;
use super::{
    ChunkServer, ChunkSource, MemoryChunkSource, PeerClient, TransferError, CONNECTIONS_PER_PEER,
    PEER_TLS_SERVER_NAME, STREAMS_PER_CONNECTION_MAX,
};
use crate::{ChunkRef, Hash, CHUNK_SIZE_BYTES_AVG};

/// Bytes per write (TCP, bare stream) and per chunk (chunk protocol): the average chunk size.
const BLOCK_BYTES: usize = CHUNK_SIZE_BYTES_AVG;
/// Distinct chunks the chunk-protocol benchmark holds in memory; requests cycle over them.
const DISTINCT_CHUNKS_MAX: u64 = 64;
/// Clients the chunk-protocol benchmark may start.
const CLIENTS_MAX: usize = 16;
/// Largest transfer a benchmark accepts (1 TiB).
const SIZE_BYTES_MAX: u64 = 1 << 40;
/// Largest round-trip time the delay relay simulates.
const RTT_MAX: Duration = Duration::from_secs(1);
/// Receive batches (up to 64 KiB each) the delay relay holds per direction; more are dropped (as
/// a full router queue).
const RELAY_QUEUE_BATCHES: usize = 16 * 1024;
/// Kernel buffers of the relay's sockets.
const RELAY_SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Largest receive batch (GRO) the relay handles.
const RELAY_BATCH_BYTES_MAX: usize = 64 * 1024;

/// Figures of one [`bench_transport`] run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TransportBenchReport {
    pub size_bytes: u64,
    /// Concurrent requests in the chunk-protocol figure.
    pub streams: usize,
    /// Connections the chunk-protocol figure used ([`super::CONNECTIONS_PER_PEER`]).
    pub connections: usize,
    /// (a) loopback TCP, one connection: the baseline.
    pub tcp_mb_per_s: f64,
    /// (b) one quinn stream with the chosen tuning.
    pub quic_stream_mb_per_s: f64,
    /// (b') one quinn stream with quinn's default transport configuration.
    pub quic_stream_default_mb_per_s: f64,
    /// (c) the chunk protocol, `streams` requests in flight from one [`PeerClient`] (which
    /// spreads them over its `connections` connections to the peer), every chunk verified.
    pub chunk_protocol_mb_per_s: f64,
    /// (c) / (b).
    pub chunk_to_stream_ratio: f64,
}

impl fmt::Display for TransportBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = self.size_bytes as f64 / (1024.0 * 1024.0);
        writeln!(f, "transport benchmark, {mib:.0} MiB over 127.0.0.1")?;
        writeln!(
            f,
            "  (a) TCP loopback                 {:>9.0} MB/s",
            self.tcp_mb_per_s
        )?;
        writeln!(
            f,
            "  (b) quinn stream, tuned          {:>9.0} MB/s",
            self.quic_stream_mb_per_s
        )?;
        writeln!(
            f,
            "  (b') quinn stream, defaults      {:>9.0} MB/s",
            self.quic_stream_default_mb_per_s
        )?;
        writeln!(
            f,
            "  (c) chunk protocol, {:>2} streams  {:>9.0} MB/s",
            self.streams, self.chunk_protocol_mb_per_s
        )?;
        write!(
            f,
            "  (c)/(b) = {:.2}   (b)/(a) = {:.2}",
            self.chunk_to_stream_ratio,
            ratio(self.quic_stream_mb_per_s, self.tcp_mb_per_s)
        )
    }
}

/// Runs (a) TCP, (b) a tuned quinn stream, (b') quinn defaults and (c) the chunk protocol with
/// `streams` concurrent requests on one connection, each moving `size_bytes` (rounded up to whole
/// 1 MiB blocks) over loopback.
pub async fn bench_transport(
    size_bytes: u64,
    streams: usize,
) -> Result<TransportBenchReport, TransferError> {
    let tuned = TransportTuning::chosen();
    let tcp_mb_per_s = bench_tcp_loopback(size_bytes).await?;
    let direct = Duration::ZERO;
    let quic_stream_mb_per_s = bench_quic_stream(size_bytes, &tuned, direct).await?;
    let quic_stream_default_mb_per_s =
        bench_quic_stream(size_bytes, &TransportTuning::quinn_defaults(), direct).await?;
    let chunk_protocol_mb_per_s =
        bench_chunk_protocol(size_bytes, streams, 1, &tuned, direct).await?;
    Ok(TransportBenchReport {
        size_bytes: rounded(size_bytes)?,
        streams,
        connections: CONNECTIONS_PER_PEER,
        tcp_mb_per_s,
        quic_stream_mb_per_s,
        quic_stream_default_mb_per_s,
        chunk_protocol_mb_per_s,
        chunk_to_stream_ratio: ratio(chunk_protocol_mb_per_s, quic_stream_mb_per_s),
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// `size_bytes` rounded up to whole blocks, checked against the bound.
fn rounded(size_bytes: u64) -> Result<u64, TransferError> {
    if size_bytes == 0 || size_bytes > SIZE_BYTES_MAX {
        return Err(TransferError::Bench(format!(
            "size {size_bytes} bytes: expected 1 byte to {SIZE_BYTES_MAX} bytes"
        )));
    }
    Ok(size_bytes.div_ceil(BLOCK_BYTES as u64) * BLOCK_BYTES as u64)
}

fn mb_per_s(bytes: u64, started: Instant) -> f64 {
    bytes as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-9)
}

/// A block of pseudo-random bytes (blake3 XOF of `seed`): incompressible, reproducible.
fn block(seed: u64) -> Bytes {
    let mut out = vec![0u8; BLOCK_BYTES];
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"quiver transport benchmark");
    hasher.update(&seed.to_le_bytes());
    hasher.finalize_xof().fill(&mut out);
    Bytes::from(out)
}

fn io_err(context: &str) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io {
        context: context.to_owned(),
        source,
    }
}

fn bench_err(context: &str) -> impl FnOnce(String) -> TransferError + '_ {
    move |e| TransferError::Bench(format!("{context}: {e}"))
}

fn localhost() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// (a) One tokio TCP connection on loopback; the server writes `size_bytes`, the client reads
/// and discards them.
pub async fn bench_tcp_loopback(size_bytes: u64) -> Result<f64, TransferError> {
    let size = rounded(size_bytes)?;
    let listener = tokio::net::TcpListener::bind(localhost())
        .await
        .map_err(io_err("bind TCP listener"))?;
    let addr = listener
        .local_addr()
        .map_err(io_err("TCP listener address"))?;
    let data = block(0);
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let mut request = [0u8; 8];
        socket.read_exact(&mut request).await?;
        let mut left = u64::from_be_bytes(request).min(SIZE_BYTES_MAX);
        while left > 0 {
            let n = left.min(data.len() as u64) as usize;
            socket.write_all(&data[..n]).await?;
            left -= n as u64;
        }
        socket.shutdown().await
    });
    let mut socket = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(io_err("connect over TCP"))?;
    socket.set_nodelay(true).map_err(io_err("TCP_NODELAY"))?;
    let started = Instant::now();
    socket
        .write_all(&size.to_be_bytes())
        .await
        .map_err(io_err("send TCP request"))?;
    let mut buf = vec![0u8; BLOCK_BYTES];
    let mut received = 0u64;
    loop {
        let n = socket.read(&mut buf).await.map_err(io_err("read TCP"))?;
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    let figure = mb_per_s(received, started);
    server
        .await
        .map_err(|e| TransferError::Bench(format!("TCP server task: {e}")))?
        .map_err(io_err("TCP server"))?;
    if received != size {
        return Err(TransferError::Bench(format!(
            "TCP: received {received} of {size} bytes"
        )));
    }
    Ok(figure)
}

/// (b) One bidirectional quinn stream with `tuning` (mutual TLS as in the cluster): the client
/// asks for `size_bytes`, the server writes them, the client reads and discards them. A non-zero
/// `rtt` puts an in-process relay between them that delays every datagram by `rtt / 2` each way
/// (it costs CPU of its own, so figures with a relay compare only with each other).
pub async fn bench_quic_stream(
    size_bytes: u64,
    tuning: &TransportTuning,
    rtt: Duration,
) -> Result<f64, TransferError> {
    let size = rounded(size_bytes)?;
    let ca = DevCa::new("bench CA")?;
    let server_endpoint = endpoint(
        localhost(),
        Some(server_config(&ca.issue("bench server")?, tuning, None)?),
        tuning,
    )?;
    let server_addr = server_endpoint
        .local_addr()
        .map_err(io_err("QUIC server address"))?;
    let mut client_endpoint = endpoint(localhost(), None, tuning)?;
    client_endpoint.set_default_client_config(client_config(
        &ca.issue("bench client")?,
        tuning,
        None,
    )?);

    let data = block(0);
    let server_side = server_endpoint.clone();
    let server = tokio::spawn(async move {
        let incoming = server_side
            .accept()
            .await
            .ok_or_else(|| "endpoint closed".to_string())?;
        let connection = incoming.await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
        let mut request = [0u8; 8];
        recv.read_exact(&mut request)
            .await
            .map_err(|e| e.to_string())?;
        let mut left = u64::from_be_bytes(request).min(SIZE_BYTES_MAX);
        while left > 0 {
            let n = left.min(data.len() as u64) as usize;
            send.write_chunk(data.slice(..n))
                .await
                .map_err(|e| e.to_string())?;
            left -= n as u64;
        }
        send.finish().map_err(|e| e.to_string())?;
        // Keep the connection until the client has read everything and closes it.
        connection.closed().await;
        Ok::<(), String>(())
    });

    let relay = DelayRelay::start(server_addr, rtt)?;
    let connection = client_endpoint
        .connect(relay.addr, PEER_TLS_SERVER_NAME)
        .map_err(|e| TransferError::Bench(format!("connect: {e}")))?
        .await
        .map_err(|e| TransferError::Bench(format!("handshake: {e}")))?;
    let started = Instant::now();
    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .map_err(|e| TransferError::Bench(format!("open stream: {e}")))?;
    send.write_all(&size.to_be_bytes())
        .await
        .map_err(|e| TransferError::Bench(format!("send request: {e}")))?;
    send.finish()
        .map_err(|e| TransferError::Bench(format!("finish request: {e}")))?;
    let mut received = 0u64;
    while let Some(chunk) = recv
        .read_chunk(usize::MAX, true)
        .await
        .map_err(|e| TransferError::Bench(format!("read: {e:?}")))?
    {
        received += chunk.bytes.len() as u64;
    }
    let figure = mb_per_s(received, started);
    connection.close(0u32.into(), b"done");
    server
        .await
        .map_err(|e| TransferError::Bench(format!("QUIC server task: {e}")))?
        .map_err(bench_err("QUIC server"))?;
    client_endpoint.wait_idle().await;
    server_endpoint.close(0u32.into(), b"done");
    drop(relay);
    if received != size {
        return Err(TransferError::Bench(format!(
            "QUIC stream: received {received} of {size} bytes"
        )));
    }
    Ok(figure)
}

/// (c) The chunk protocol end to end: a [`ChunkServer`] over an in-memory cache of 1 MiB chunks,
/// `clients` [`PeerClient`]s (each its own endpoint and [`super::CONNECTIONS_PER_PEER`]
/// connections) sharing `streams` concurrent GETs; every chunk is verified by the client, then discarded. Moves `size_bytes` in total
/// (whole chunks), cycling over at most 64 distinct chunks. `rtt` as in [`bench_quic_stream`].
pub async fn bench_chunk_protocol(
    size_bytes: u64,
    streams: usize,
    clients: usize,
    tuning: &TransportTuning,
    rtt: Duration,
) -> Result<f64, TransferError> {
    let size = rounded(size_bytes)?;
    let per_connection_max = STREAMS_PER_CONNECTION_MAX as usize;
    if clients == 0 || clients > CLIENTS_MAX {
        return Err(TransferError::Bench(format!(
            "clients = {clients}: expected 1 to {CLIENTS_MAX}"
        )));
    }
    if streams == 0 || streams > per_connection_max * clients * CONNECTIONS_PER_PEER {
        return Err(TransferError::Bench(format!(
            "streams = {streams}: expected 1 to {} ({per_connection_max} per connection)",
            per_connection_max * clients * CONNECTIONS_PER_PEER
        )));
    }
    let total_chunks = size / BLOCK_BYTES as u64;
    let source = MemoryChunkSource::new();
    let mut refs = Vec::new();
    for seed in 0..total_chunks.min(DISTINCT_CHUNKS_MAX) {
        let data = block(seed);
        let hash = source
            .insert(&data)
            .map_err(|e| TransferError::Bench(format!("fill the in-memory chunk cache: {e}")))?;
        refs.push(ChunkRef {
            hash,
            size_bytes: BLOCK_BYTES as u32,
        });
    }
    let refs: Arc<[ChunkRef]> = refs.into();

    let ca = DevCa::new("bench CA")?;
    let source: Arc<dyn ChunkSource> = Arc::new(source);
    let server = ChunkServer::bind_with(localhost(), source, &ca.issue("bench server")?, tuning)?;
    let client_tls = ca.issue("bench client")?;
    // One relay per client: a relay forwards for one client's connections.
    let mut relays = Vec::with_capacity(clients);
    let mut peers = Vec::with_capacity(clients);
    for _ in 0..clients {
        let relay = DelayRelay::start(server.local_addr(), rtt)?;
        let client = PeerClient::with_tuning(&client_tls, tuning)?;
        client.connect(relay.addr).await?;
        peers.push((client, relay.addr));
        relays.push(relay);
    }

    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for worker in 0..streams {
        let (client, server_addr) = peers[worker % clients].clone();
        let next = next.clone();
        let refs = refs.clone();
        workers.spawn(async move {
            let mut bytes = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total_chunks {
                    return Ok::<u64, super::FetchError>(bytes);
                }
                let chunk = &refs[(i % refs.len() as u64) as usize];
                // fetch verifies the bytes against the hash before returning them.
                let data = client.fetch(server_addr, chunk).await?;
                debug_assert_eq!(Hash::of(&data), chunk.hash);
                bytes += data.len() as u64;
            }
        });
    }
    let mut received = 0u64;
    while let Some(joined) = workers.join_next().await {
        received += joined.map_err(|e| TransferError::Bench(format!("worker: {e}")))??;
    }
    let figure = mb_per_s(received, started);
    drop(peers);
    server.shutdown().await;
    drop(relays);
    if received != size {
        return Err(TransferError::Bench(format!(
            "chunk protocol: received {received} of {size} bytes"
        )));
    }
    Ok(figure)
}

/// A UDP relay on 127.0.0.1 between one client and `server` that holds every datagram for half
/// the round-trip time in each direction: loopback with a chosen RTT, without touching the
/// host's network configuration. Zero RTT: no relay, `addr` is the server itself. Dropping it
/// stops it.
struct DelayRelay {
    addr: SocketAddr,
    _tasks: JoinSet<()>,
}

impl DelayRelay {
    fn start(server: SocketAddr, rtt: Duration) -> Result<DelayRelay, TransferError> {
        let mut tasks = JoinSet::new();
        if rtt.is_zero() {
            return Ok(DelayRelay {
                addr: server,
                _tasks: tasks,
            });
        }
        if rtt > RTT_MAX {
            return Err(TransferError::Bench(format!(
                "rtt {rtt:?} is over the limit of {RTT_MAX:?}"
            )));
        }
        let front = Arc::new(RelaySocket::bind()?);
        let back = Arc::new(RelaySocket::bind()?);
        let addr = front.io.local_addr().map_err(io_err("relay address"))?;
        let client = Arc::new(OnceLock::new());
        let one_way = rtt / 2;
        tasks.spawn(forward(
            front.clone(),
            back.clone(),
            Dest::Server(server, client.clone()),
            one_way,
        ));
        tasks.spawn(forward(back, front, Dest::Client(client), one_way));
        Ok(DelayRelay {
            addr,
            _tasks: tasks,
        })
    }
}

/// A relay socket read and written through quinn-udp, so that GRO batches (several datagrams
/// received as one buffer with a stride) are forwarded as GSO batches with the same segment size,
/// never merged into one oversized datagram.
struct RelaySocket {
    io: tokio::net::UdpSocket,
    state: quinn::udp::UdpSocketState,
}

/// One received buffer: `len` bytes of datagrams of `stride` bytes each (the last may be
/// shorter), from `source`.
struct Received {
    len: usize,
    stride: usize,
    source: SocketAddr,
    ecn: Option<quinn::udp::EcnCodepoint>,
}

impl RelaySocket {
    fn bind() -> Result<RelaySocket, TransferError> {
        let socket = std::net::UdpSocket::bind(localhost()).map_err(io_err("bind relay socket"))?;
        let state = quinn::udp::UdpSocketState::new((&socket).into())
            .map_err(io_err("prepare relay socket"))?;
        // Best effort, as for the endpoints.
        let _ = state.set_recv_buffer_size((&socket).into(), RELAY_SOCKET_BUFFER_BYTES);
        let _ = state.set_send_buffer_size((&socket).into(), RELAY_SOCKET_BUFFER_BYTES);
        socket
            .set_nonblocking(true)
            .map_err(io_err("relay socket non-blocking"))?;
        let io = tokio::net::UdpSocket::from_std(socket).map_err(io_err("relay socket"))?;
        Ok(RelaySocket { io, state })
    }

    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<Received> {
        loop {
            self.io.readable().await?;
            let mut meta = [quinn::udp::RecvMeta::default()];
            let received = self.io.try_io(tokio::io::Interest::READABLE, || {
                self.state.recv(
                    (&self.io).into(),
                    &mut [std::io::IoSliceMut::new(buf)],
                    &mut meta,
                )
            });
            match received {
                Ok(n) if n > 0 => {
                    let [meta] = meta;
                    return Ok(Received {
                        len: meta.len,
                        stride: meta.stride,
                        source: meta.addr,
                        ecn: meta.ecn,
                    });
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn send(&self, transmit: &quinn::udp::Transmit<'_>) -> std::io::Result<()> {
        loop {
            self.io.writable().await?;
            match self.io.try_io(tokio::io::Interest::WRITABLE, || {
                self.state.send((&self.io).into(), transmit)
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}

enum Dest {
    /// Forward to the server; remember the first sender as the client.
    Server(SocketAddr, Arc<OnceLock<SocketAddr>>),
    /// Forward to the client, once known.
    Client(Arc<OnceLock<SocketAddr>>),
}

/// A batch waiting in the relay: when to send it, where, and how it is cut into datagrams.
struct Delayed {
    at: tokio::time::Instant,
    dest: SocketAddr,
    datagrams: Bytes,
    stride: usize,
    ecn: Option<quinn::udp::EcnCodepoint>,
}

/// Receives on `from`, sends each batch on `to` after `delay`, in order.
async fn forward(from: Arc<RelaySocket>, to: Arc<RelaySocket>, dest: Dest, delay: Duration) {
    let (queue, mut due) = tokio::sync::mpsc::channel::<Delayed>(RELAY_QUEUE_BATCHES);
    let send = async move {
        while let Some(batch) = due.recv().await {
            tokio::time::sleep_until(batch.at).await;
            let transmit = quinn::udp::Transmit {
                destination: batch.dest,
                ecn: batch.ecn,
                contents: &batch.datagrams,
                segment_size: (batch.stride < batch.datagrams.len()).then_some(batch.stride),
                src_ip: None,
            };
            // A batch that cannot be sent is lost, as on a network.
            let _ = to.send(&transmit).await;
        }
    };
    let receive = async move {
        let mut buf = vec![0u8; RELAY_BATCH_BYTES_MAX];
        while let Ok(received) = from.recv(&mut buf).await {
            let target = match &dest {
                Dest::Server(server, client) => {
                    let _ = client.set(received.source);
                    *server
                }
                Dest::Client(client) => match client.get() {
                    Some(client) => *client,
                    None => continue,
                },
            };
            let batch = Delayed {
                at: tokio::time::Instant::now() + delay,
                dest: target,
                datagrams: Bytes::copy_from_slice(&buf[..received.len]),
                stride: received.stride.max(1),
                ecn: received.ecn,
            };
            // Queue full: the batch is dropped, like a router with a full buffer.
            let _ = queue.try_send(batch);
        }
    };
    tokio::join!(send, receive);
}
