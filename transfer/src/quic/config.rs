//! TLS and transport configuration of the QUIC endpoints.
//!
//! Mutual TLS under the cluster CA: the server requires a client certificate that chains to the
//! CA; the client verifies the server against the CA under [`PEER_TLS_SERVER_NAME`](super::PEER_TLS_SERVER_NAME) and presents
//! its own certificate. Both use rustls with the ring provider, passed explicitly (no reliance on
//! a process-wide default provider), TLS 1.3 only (QUIC requires it). webpki checks the
//! certificates' validity period at every handshake, so an expired certificate is refused.
//!
//! [`QuicCerts`] adds what a node needs beyond the CA (decision 0017): its own certificate as
//! it is now (renewed without a restart: new handshakes resolve it), and a [`PeerGate`] that
//! the server asks, for every connection and every request, whether the client's certificate
//! may act as a peer (not a removed node's, not expired).

use std::fmt;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::{
    TransferError, ALPN_CHUNKS, IDLE_TIMEOUT, KEEP_ALIVE_INTERVAL, STREAMS_PER_CONNECTION_MAX,
};

/// PEM material for mutual TLS: every node holds a certificate signed by the cluster CA
/// (SAN DNS = [`PEER_TLS_SERVER_NAME`](super::PEER_TLS_SERVER_NAME), usable for both server and client auth).
#[derive(Clone, Debug)]
pub struct QuicTls {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Decides whether a peer's certificate may act as a peer now, and which node it names. The
/// chunk server asks it after each handshake and before each request, so it must be cheap;
/// the chunk client asks it once per connection which node the server is, to name it in its
/// byte counts ([`super::TransferStats`]).
pub trait PeerGate: fmt::Debug + Send + Sync + 'static {
    /// The node id `end_entity` (verified against the CA at the handshake) names, or why it
    /// may not act as a peer.
    fn admit(&self, end_entity: &CertificateDer<'_>) -> Result<u64, String>;

    /// The node id `end_entity` names, whether or not it may act as a peer now; `None` if it
    /// names none. Only names: it admits nothing.
    fn node_of(&self, end_entity: &CertificateDer<'_>) -> Option<u64> {
        self.admit(end_entity).ok()
    }
}

/// The end-entity certificate the other side of `connection` presented at the handshake.
pub(crate) fn end_entity(connection: &quinn::Connection) -> Option<CertificateDer<'static>> {
    connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.into_iter().next())
}

/// What a node's endpoints use beyond [`QuicTls`]'s CA: this node's certificate as it is now
/// (resolved at every handshake, so a renewed one is used for new connections) and the gate
/// the server admits clients by.
#[derive(Clone, Debug)]
pub struct QuicCerts {
    pub server_cert: Arc<dyn rustls::server::ResolvesServerCert>,
    pub client_cert: Arc<dyn rustls::client::ResolvesClientCert>,
    pub gate: Arc<dyn PeerGate>,
}

/// Congestion controller of a QUIC connection (quinn's implementations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CongestionControl {
    Cubic,
    /// quinn's BBR (v1, marked experimental by quinn).
    Bbr,
    NewReno,
}

/// The knobs that decide bulk throughput. [`TransportTuning::chosen`] is what the node uses;
/// [`TransportTuning::quinn_defaults`] reproduces quinn's defaults, for comparison in benchmarks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportTuning {
    /// Bytes a peer may send on one stream before it is acknowledged by the reader.
    pub stream_receive_window_bytes: u64,
    /// Same, summed over all streams of a connection.
    pub receive_window_bytes: u64,
    /// Bytes of application writes a connection buffers before `write` waits.
    pub send_window_bytes: u64,
    pub congestion: CongestionControl,
    /// Kernel send and receive buffer of the UDP socket; `None` keeps the OS default. The kernel
    /// caps it at `net.core.{r,w}mem_max`.
    pub udp_buffer_bytes: Option<usize>,
    /// Generic segmentation offload (one syscall sends many packets).
    pub segmentation_offload: bool,
    /// Round-robin between streams (quinn's default). Off: a stream's data is sent in the order
    /// it was written, so concurrent chunks complete one after another instead of all at the end.
    pub send_fairness: bool,
    /// Largest UDP payload that path MTU discovery probes for (quinn: 1452, Ethernet-safe).
    /// Probing is safe: a path that cannot carry larger packets keeps the smaller size.
    pub mtu_upper_bound_bytes: u16,
}

/// 16 MiB, the stream window chosen by measurement (docs/decisions/0003-quic-transport.md).
const STREAM_WINDOW_BYTES_CHOSEN: u64 = 16 * 1024 * 1024;
/// Connection-wide receive window: two streams at the full stream window, or eight 4 MiB chunks.
/// Caps one connection at 32 MiB per RTT (3.2 GB/s at 10 ms, 640 MB/s at 50 ms) and bounds the
/// receiver's buffering per connection.
const RECEIVE_WINDOW_BYTES_CHOSEN: u64 = 32 * 1024 * 1024;
/// Send buffer per connection (unacknowledged data quinn keeps): matches the receive window.
/// Bounds a server's memory per connection.
const SEND_WINDOW_BYTES_CHOSEN: u64 = 32 * 1024 * 1024;
/// UDP socket buffers: enough for a burst at full window without kernel drops.
const UDP_BUFFER_BYTES_CHOSEN: usize = 4 * 1024 * 1024;
/// quinn's default MTU discovery upper bound: fits Ethernet with IPv4 or IPv6 headers.
const MTU_UPPER_BOUND_BYTES_QUINN: u16 = 1452;
/// quinn's default largest UDP payload an endpoint accepts: 1500 - 28.
const UDP_PAYLOAD_BYTES_QUINN: u16 = 1472;

impl TransportTuning {
    /// The tuning every [`super::ChunkServer`] and [`super::PeerClient`] uses unless told
    /// otherwise; chosen by measurement (docs/decisions/0003-quic-transport.md).
    pub fn chosen() -> TransportTuning {
        TransportTuning {
            stream_receive_window_bytes: STREAM_WINDOW_BYTES_CHOSEN,
            receive_window_bytes: RECEIVE_WINDOW_BYTES_CHOSEN,
            send_window_bytes: SEND_WINDOW_BYTES_CHOSEN,
            congestion: CongestionControl::Cubic,
            udp_buffer_bytes: Some(UDP_BUFFER_BYTES_CHOSEN),
            segmentation_offload: true,
            send_fairness: true,
            mtu_upper_bound_bytes: MTU_UPPER_BOUND_BYTES_QUINN,
        }
    }

    /// quinn 0.11's `TransportConfig::default()` windows and controller, OS socket buffers.
    pub fn quinn_defaults() -> TransportTuning {
        // quinn: stream window = 12.5 MB/s * 100 ms; receive window unlimited; send window 8x.
        const QUINN_STREAM_RWND: u64 = 12_500 * 100;
        TransportTuning {
            stream_receive_window_bytes: QUINN_STREAM_RWND,
            receive_window_bytes: VarInt::MAX.into_inner(),
            send_window_bytes: 8 * QUINN_STREAM_RWND,
            congestion: CongestionControl::Cubic,
            udp_buffer_bytes: None,
            segmentation_offload: true,
            send_fairness: true,
            mtu_upper_bound_bytes: MTU_UPPER_BOUND_BYTES_QUINN,
        }
    }
}

impl Default for TransportTuning {
    fn default() -> Self {
        TransportTuning::chosen()
    }
}

fn varint(value: u64, what: &str) -> Result<VarInt, TransferError> {
    VarInt::from_u64(value)
        .map_err(|_| TransferError::Config(format!("{what} = {value} is larger than 2^62 - 1")))
}

pub(crate) fn transport_config(
    tuning: &TransportTuning,
) -> Result<Arc<TransportConfig>, TransferError> {
    let mut config = TransportConfig::default();
    config
        .max_concurrent_bidi_streams(STREAMS_PER_CONNECTION_MAX.into())
        .max_concurrent_uni_streams(0u8.into())
        .max_idle_timeout(Some(
            IdleTimeout::try_from(IDLE_TIMEOUT)
                .map_err(|_| TransferError::Config("idle timeout".into()))?,
        ))
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .stream_receive_window(varint(
            tuning.stream_receive_window_bytes,
            "stream_receive_window_bytes",
        )?)
        .receive_window(varint(tuning.receive_window_bytes, "receive_window_bytes")?)
        .send_window(tuning.send_window_bytes)
        .enable_segmentation_offload(tuning.segmentation_offload)
        .send_fairness(tuning.send_fairness);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(tuning.mtu_upper_bound_bytes);
    config.mtu_discovery_config(Some(mtu));
    match tuning.congestion {
        CongestionControl::Cubic => config
            .congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default())),
        CongestionControl::Bbr => {
            config.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
        CongestionControl::NewReno => config
            .congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default())),
    };
    Ok(Arc::new(config))
}

fn tls_err(context: &str) -> impl FnOnce(rustls::Error) -> TransferError + '_ {
    move |e| TransferError::Tls {
        context: context.to_owned(),
        detail: e.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA as the only trust root.
fn roots(tls: &QuicTls) -> Result<RootCertStore, TransferError> {
    let mut roots = RootCertStore::empty();
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(tls.ca_cert_pem.as_bytes()) {
        let cert = cert.map_err(|e| TransferError::Tls {
            context: "parse ca_cert_pem".into(),
            detail: e.to_string(),
        })?;
        roots
            .add(cert)
            .map_err(tls_err("add the cluster CA certificate as a trust root"))?;
        count += 1;
    }
    if count == 0 {
        return Err(TransferError::Tls {
            context: "parse ca_cert_pem".into(),
            detail: "no CERTIFICATE block found; expected the cluster CA certificate in PEM".into(),
        });
    }
    Ok(roots)
}

/// This node's certificate chain and key.
pub(crate) fn identity(
    tls: &QuicTls,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TransferError> {
    let chain = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransferError::Tls {
            context: "parse cert_pem".into(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TransferError::Tls {
            context: "parse cert_pem".into(),
            detail: "no CERTIFICATE block found; expected this node's certificate in PEM".into(),
        });
    }
    let key =
        PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| TransferError::Tls {
            context: "parse key_pem".into(),
            detail: format!("{e}; expected this node's private key in PEM"),
        })?;
    Ok((chain, key))
}

pub(crate) fn server_config(
    tls: &QuicTls,
    tuning: &TransportTuning,
    certs: Option<&QuicCerts>,
) -> Result<quinn::ServerConfig, TransferError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(tls)?), provider.clone())
            .build()
            .map_err(|e| TransferError::Tls {
                context: "build the client certificate verifier".into(),
                detail: e.to_string(),
            })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("select TLS 1.3"))?
        .with_client_cert_verifier(verifier);
    let mut crypto = match certs {
        Some(certs) => builder.with_cert_resolver(certs.server_cert.clone()),
        None => {
            let (chain, key) = identity(tls)?;
            builder
                .with_single_cert(chain, key)
                .map_err(tls_err("use this node's certificate and key (server)"))?
        }
    };
    crypto.alpn_protocols = vec![ALPN_CHUNKS.to_vec()];
    let crypto = QuicServerConfig::try_from(crypto).map_err(|e| TransferError::Tls {
        context: "QUIC server crypto".into(),
        detail: e.to_string(),
    })?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config(tuning)?);
    Ok(config)
}

pub(crate) fn client_config(
    tls: &QuicTls,
    tuning: &TransportTuning,
    certs: Option<&QuicCerts>,
) -> Result<quinn::ClientConfig, TransferError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("select TLS 1.3"))?
        .with_root_certificates(roots(tls)?);
    let mut crypto = match certs {
        Some(certs) => builder.with_client_cert_resolver(certs.client_cert.clone()),
        None => {
            let (chain, key) = identity(tls)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(tls_err("use this node's certificate and key (client)"))?
        }
    };
    crypto.alpn_protocols = vec![ALPN_CHUNKS.to_vec()];
    let crypto = QuicClientConfig::try_from(crypto).map_err(|e| TransferError::Tls {
        context: "QUIC client crypto".into(),
        detail: e.to_string(),
    })?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config(tuning)?);
    Ok(config)
}

/// Binds a UDP socket on `addr` with the tuning's buffer sizes and wraps it in a quinn endpoint
/// on the current tokio runtime.
pub(crate) fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    tuning: &TransportTuning,
) -> Result<quinn::Endpoint, TransferError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(TransferError::NoRuntime);
    }
    let socket = UdpSocket::bind(addr).map_err(|source| TransferError::Bind { addr, source })?;
    if let Some(bytes) = tuning.udp_buffer_bytes {
        let state = quinn::udp::UdpSocketState::new((&socket).into()).map_err(|source| {
            TransferError::Io {
                context: format!("prepare UDP socket on {addr}"),
                source,
            }
        })?;
        // Best effort: the kernel caps the size at net.core.{r,w}mem_max without failing.
        let sized = state
            .set_send_buffer_size((&socket).into(), bytes)
            .and_then(|()| state.set_recv_buffer_size((&socket).into(), bytes));
        if let Err(e) = sized {
            tracing::warn!(%addr, bytes, error = %e, "could not size the UDP socket buffers");
        }
        let granted = state.recv_buffer_size((&socket).into()).unwrap_or(0);
        if granted < bytes {
            // Measured: OS-default buffers (208 KiB) cut throughput several times over a path
            // with 10 ms of RTT (docs/decisions/0003-quic-transport.md).
            tracing::warn!(
                %addr,
                requested = bytes,
                granted,
                "UDP receive buffer smaller than requested: raise net.core.rmem_max and net.core.wmem_max to at least {bytes}"
            );
        }
    }
    let mut config = quinn::EndpointConfig::default();
    // What this endpoint accepts from peers: at least quinn's default (Ethernet MTU - 28).
    config
        .max_udp_payload_size(tuning.mtu_upper_bound_bytes.max(UDP_PAYLOAD_BYTES_QUINN))
        .map_err(|e| TransferError::Config(format!("mtu_upper_bound_bytes: {e}")))?;
    quinn::Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime))
        .map_err(|source| TransferError::Bind { addr, source })
}
