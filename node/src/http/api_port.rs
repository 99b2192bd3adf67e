//! The API port speaks two protocols. TLS to everyone: gRPC (the CLI, the SDK, agents) when the
//! handshake chose h2, and HTTPS (this node's [`router`](super::router): the MLflow client, a
//! browser, curl) when it chose HTTP/1.1 or nothing (ALPN, see
//! `quiver_raft::PeerTls::api_server_config`). And plaintext HTTP (the same router, e.g.
//! `http://127.0.0.1:7400`) to clients on the node's own host only, so that no token crosses a
//! network in clear. A connection's first byte tells TLS from plaintext: every TLS connection
//! starts with a handshake record (0x16), which no HTTP request line does.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use futures::StreamExt;
use quiver_raft::{TlsIncoming, ALPN_H2, PEER_HANDSHAKES_MAX, PEER_HANDSHAKE_TIMEOUT};
use tokio_rustls::server::TlsStream;

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// One port's connections, sorted by protocol.
pub struct ApiPort {
    /// Connections that start a TLS handshake.
    pub tls: mpsc::Receiver<(TcpStream, SocketAddr)>,
    /// Plaintext connections from this host, for `axum::serve`.
    pub http: ChannelListener,
    /// Accepts and sorts; it owns the listener: abort and await it to free the port.
    pub sorting: JoinHandle<()>,
}

/// Accepts on `listener` and sorts each connection by its first byte, within
/// [`PEER_HANDSHAKE_TIMEOUT`] and at most [`PEER_HANDSHAKES_MAX`] undecided at once (a
/// connection beyond them is closed). A plaintext connection from another host is answered with
/// a 403 that says how to reach the node, then closed.
pub fn sort_connections(listener: TcpListener, node_id: u64) -> std::io::Result<ApiPort> {
    let local = listener.local_addr()?;
    let (tls_tx, tls) = mpsc::channel(PEER_HANDSHAKES_MAX);
    let (http_tx, http_rx) = mpsc::channel(PEER_HANDSHAKES_MAX);
    let sorting = tokio::spawn(async move {
        let undecided = Arc::new(Semaphore::new(PEER_HANDSHAKES_MAX));
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(node_id, error = %e, "API server: accept failed");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let Ok(permit) = undecided.clone().try_acquire_owned() else {
                tracing::warn!(node_id, %remote, "API server at its limit of undecided connections, closing one");
                continue;
            };
            let (tls_tx, http_tx) = (tls_tx.clone(), http_tx.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let mut first = [0u8; 1];
                let peeked = tokio::time::timeout(PEER_HANDSHAKE_TIMEOUT, tcp.peek(&mut first));
                let protocol = match peeked.await {
                    Ok(Ok(1)) => Protocol::of(first[0], remote),
                    // Closed, failed or silent: nothing to serve.
                    _ => return,
                };
                drop(permit);
                match protocol {
                    Protocol::Tls => {
                        let _ = tls_tx.send((tcp, remote)).await;
                    }
                    Protocol::LocalHttp => {
                        let _ = http_tx.send((tcp, remote)).await;
                    }
                    Protocol::RemotePlaintext => refuse_plaintext(tcp, local).await,
                }
            });
        }
    });
    Ok(ApiPort {
        tls,
        http: ChannelListener { rx: http_rx, local },
        sorting,
    })
}

/// What a connection's first byte and its peer make of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Tls,
    LocalHttp,
    RemotePlaintext,
}

impl Protocol {
    fn of(first: u8, remote: SocketAddr) -> Protocol {
        if first == TLS_HANDSHAKE_RECORD {
            Protocol::Tls
        } else if remote.ip().is_loopback() {
            Protocol::LocalHttp
        } else {
            Protocol::RemotePlaintext
        }
    }
}

/// Answers a plaintext request from another host with MLflow's error shape, then closes.
async fn refuse_plaintext(mut tcp: TcpStream, local: SocketAddr) {
    let body = format!(
        "{{\"error_code\":\"PERMISSION_DENIED\",\"message\":\"this node serves plaintext HTTP on \
         its API port ({local}) to clients on its own host only, so that no token crosses a \
         network in clear: use https:// on the same port, verified with the cluster CA (the \
         node's certificate names quiver.cluster and the names `quiver-node cert issue --name` gave \
         it)\"}}"
    );
    let response = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(PEER_HANDSHAKE_TIMEOUT, async {
        let _ = tcp.write_all(response.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// TLS connections sorted by the protocol their handshake chose.
pub struct TlsSorted {
    /// h2: gRPC, for tonic.
    pub grpc: TlsIncoming,
    /// HTTP/1.1 or none: HTTPS, for `axum::serve`.
    pub https: ChannelListener<TlsStream<TcpStream>>,
    /// Sorts; ends when `handshaken` does.
    pub sorting: JoinHandle<()>,
}

/// Hands each connection of `handshaken` to gRPC if its handshake chose h2, else to HTTPS.
pub fn sort_by_alpn(mut handshaken: TlsIncoming, local: SocketAddr) -> TlsSorted {
    let (grpc_tx, grpc_rx) = mpsc::channel(PEER_HANDSHAKES_MAX);
    let (https_tx, https_rx) = mpsc::channel(PEER_HANDSHAKES_MAX);
    let sorting = tokio::spawn(async move {
        while let Some(next) = handshaken.next().await {
            match next {
                Ok(stream) if is_grpc(stream.get_ref().1.alpn_protocol()) => {
                    if grpc_tx.send(Ok(stream)).await.is_err() {
                        return;
                    }
                }
                Ok(stream) => {
                    let Ok(remote) = stream.get_ref().0.peer_addr() else {
                        continue;
                    };
                    if https_tx.send((stream, remote)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if grpc_tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    TlsSorted {
        grpc: TlsIncoming::new(grpc_rx),
        https: ChannelListener {
            rx: https_rx,
            local,
        },
        sorting,
    }
}

/// Whether a handshake's chosen protocol is gRPC's (h2); HTTP/1.1 or none is HTTPS.
fn is_grpc(alpn: Option<&[u8]>) -> bool {
    alpn == Some(ALPN_H2)
}

/// The connections [`sort_connections`] (plaintext) or [`sort_by_alpn`] (HTTPS) hands over, as
/// a listener for `axum::serve`.
pub struct ChannelListener<Io = TcpStream> {
    rx: mpsc::Receiver<(Io, SocketAddr)>,
    local: SocketAddr,
}

impl<Io> axum::serve::Listener for ChannelListener<Io>
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Io = Io;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Io, SocketAddr) {
        match self.rx.recv().await {
            Some(connection) => connection,
            // The sorter is gone (the server is stopping): no more connections, ever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl<Io> ChannelListener<Io> {
    /// The address of the port the connections came in on.
    pub fn local(&self) -> SocketAddr {
        self.local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_h2_goes_to_grpc() {
        assert!(is_grpc(Some(b"h2")));
        for other in [
            None,
            Some(&b"http/1.1"[..]),
            Some(&b"h2c"[..]),
            Some(&b""[..]),
        ] {
            assert!(!is_grpc(other), "{other:?}");
        }
    }

    #[test]
    fn the_first_byte_and_the_peer_choose_the_protocol() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let local6: SocketAddr = "[::1]:5000".parse().unwrap();
        let remote: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        for peer in [local, local6, remote] {
            assert_eq!(Protocol::of(0x16, peer), Protocol::Tls);
        }
        for first in [b'G', b'P', b'D', b'H', b'O', 0, 0xff, b'\r'] {
            assert_eq!(Protocol::of(first, local), Protocol::LocalHttp);
            assert_eq!(Protocol::of(first, local6), Protocol::LocalHttp);
            assert_eq!(Protocol::of(first, remote), Protocol::RemotePlaintext);
        }
    }
}
