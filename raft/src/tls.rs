//! Mutual TLS among peers.
//!
//! Every node holds a certificate signed by the cluster CA whose SAN includes the DNS name
//! [`PEER_TLS_SERVER_NAME`]. The peer server demands a client certificate signed by that CA; a
//! peer client presents its own certificate and accepts only a server certificate signed by the
//! CA and valid for that name. Peers are addressed by `host:port`, which is never what the
//! certificate names: the cluster, not the host, is the identity being checked.
//!
//! The material is checked once at start ([`PeerTls::validate`]) so that a wrong file is reported
//! as such, instead of as a handshake failure on some later RPC.
//!
//! Two things go beyond the CA check (decision 0017):
//! - [`PeerIdentity`]: this node's certificate as it is *now*. The peer server resolves it on
//!   every handshake and the peer client rebuilds its connections when it changes, so a renewed
//!   certificate ([`PeerIdentity::replace`]) is used for new connections without a restart.
//! - [`PeerGate`]: which node a peer's certificate names, and whether it may act as a peer now
//!   (not expired, not a removed node's). The server asks it on every request and binds what
//!   the request claims about its sender to the answer.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use rustls::client::danger::ServerCertVerifier as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::NodeId;

/// The TLS server name every node certificate carries (SAN DNS), and clients verify.
pub const PEER_TLS_SERVER_NAME: &str = "quiver.cluster";

/// PEM material for mutual TLS among peers: every node holds a certificate signed by the cluster
/// CA.
///
/// - `ca_cert_pem`: the cluster CA certificate(s) (trust anchors).
/// - `cert_pem`: this node's certificate, optionally followed by intermediates. It must be
///   signed by the CA, carry the SAN DNS name [`PEER_TLS_SERVER_NAME`], allow the
///   `digitalSignature` key usage if it lists key usages, and allow both `serverAuth` and
///   `clientAuth` extended key usages if it lists any (a node is server and client).
/// - `key_pem`: the private key of `cert_pem` (PKCS#8, SEC1 or PKCS#1 PEM).
///
/// `Debug` prints the certificates' sizes, never the key.
#[derive(Clone)]
pub struct PeerTls {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls")
            .field(
                "ca_cert_pem",
                &format_args!("<{} bytes>", self.ca_cert_pem.len()),
            )
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl PeerTls {
    /// Check that the material is usable before any connection is made: the PEMs parse, the key
    /// belongs to the certificate, and the certificate is signed by the CA, is valid now, and is
    /// acceptable both as a server certificate for [`PEER_TLS_SERVER_NAME`] and as a client
    /// certificate.
    pub fn validate(&self) -> anyhow::Result<()> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_certs = parse_certs(&self.ca_cert_pem, "ca_cert_pem")?;
        let chain = parse_certs(&self.cert_pem, "cert_pem")?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("key_pem: no usable private key in PEM: {e}"))?;

        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .context("key_pem: unsupported private key")?;
        rustls::sign::CertifiedKey::new(chain.clone(), signing_key)
            .keys_match()
            .context("key_pem does not belong to the certificate in cert_pem")?;

        let mut roots = rustls::RootCertStore::empty();
        for (i, ca) in ca_certs.into_iter().enumerate() {
            roots
                .add(ca)
                .with_context(|| format!("ca_cert_pem: certificate {i} is not a usable CA"))?;
        }
        let roots = Arc::new(roots);
        let (end_entity, intermediates) = chain.split_first().expect("parse_certs: non-empty");
        let now = UnixTime::now();
        let name = ServerName::try_from(PEER_TLS_SERVER_NAME).expect("valid DNS name");

        rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .context("build server certificate verifier")?
        .verify_server_cert(end_entity, intermediates, &name, &[], now)
        .with_context(|| {
            format!(
                "cert_pem is not a valid server certificate for {PEER_TLS_SERVER_NAME:?} \
                 signed by ca_cert_pem (it needs SAN DNS {PEER_TLS_SERVER_NAME} and the \
                 serverAuth usage)"
            )
        })?;
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .context("build client certificate verifier")?
            .verify_client_cert(end_entity, intermediates, now)
            .context(
                "cert_pem is not a valid client certificate signed by ca_cert_pem \
                 (it needs the clientAuth usage)",
            )?;
        Ok(())
    }

    /// The peer server's rustls configuration: client certificates must chain to the CA (and be
    /// valid now: webpki checks the validity period at every handshake); this node's own
    /// certificate is whatever `identity` holds at the time of each handshake.
    pub(crate) fn server_config(
        &self,
        identity: Arc<PeerIdentity>,
    ) -> anyhow::Result<rustls::ServerConfig> {
        self.server_config_with(identity, false)
    }

    /// The client API server's rustls configuration: this node's certificate as `identity`
    /// holds it at each handshake, like the peer server's, but a client certificate is
    /// optional (most clients send a token); one that is sent must chain to the CA and be valid
    /// now. Which principal it names, if any, is the node's business (decision 0018).
    ///
    /// It offers HTTP/1.1 before h2 (ALPN): gRPC clients offer h2 alone and get it; browsers,
    /// curl and the MLflow client get HTTP/1.1, which the node serves its HTTP routes over.
    pub fn api_server_config(
        &self,
        identity: Arc<PeerIdentity>,
    ) -> anyhow::Result<rustls::ServerConfig> {
        let mut config = self.server_config_with(identity, true)?;
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec(), ALPN_H2.to_vec()];
        Ok(config)
    }

    fn server_config_with(
        &self,
        identity: Arc<PeerIdentity>,
        client_cert_optional: bool,
    ) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots(&self.ca_cert_pem)?);
        let mut verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
        if client_cert_optional {
            verifier = verifier.allow_unauthenticated();
        }
        let verifier = verifier
            .build()
            .context("build client certificate verifier")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(identity);
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(config)
    }

    /// The peer client's configuration with this node's certificate as `identity` holds it now.
    pub(crate) fn client_config(&self, identity: &PeerIdentity) -> ClientTlsConfig {
        let (cert_pem, key_pem) = identity.pem();
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_cert_pem))
            .identity(Identity::from_pem(cert_pem, key_pem))
            .domain_name(PEER_TLS_SERVER_NAME)
    }
}

/// The ALPN name of HTTP/2 (what gRPC runs over).
pub const ALPN_H2: &[u8] = b"h2";
/// The ALPN name of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

fn roots(ca_cert_pem: &str) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, ca) in parse_certs(ca_cert_pem, "ca_cert_pem")?
        .into_iter()
        .enumerate()
    {
        roots
            .add(ca)
            .with_context(|| format!("ca_cert_pem: certificate {i} is not a usable CA"))?;
    }
    Ok(roots)
}

/// Decides which node a peer's certificate names and whether it may act as a peer now. The
/// node crate's implementation parses the node id from the certificate and refuses expired
/// certificates and those of removed nodes; it must be cheap, as the peer server asks it on
/// every request.
pub trait PeerGate: fmt::Debug + Send + Sync + 'static {
    /// The node id `end_entity` (already verified against the CA at the handshake) names, or
    /// why it may not act as a peer.
    fn admit(&self, end_entity: &CertificateDer<'_>) -> Result<NodeId, String>;
}

/// The certificate and key this node presents, as they are now: the peer server resolves them
/// on every handshake, and the peer client rebuilds its connections after a change. Replaced
/// while the node runs when its certificate is renewed (`quiver-node cert rotate`).
pub struct PeerIdentity {
    current: RwLock<Arc<CurrentCert>>,
    generation: AtomicU64,
}

struct CurrentCert {
    cert_pem: String,
    key_pem: String,
    certified: Arc<rustls::sign::CertifiedKey>,
}

impl fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl PeerIdentity {
    pub fn new(cert_pem: &str, key_pem: &str) -> anyhow::Result<PeerIdentity> {
        Ok(PeerIdentity {
            current: RwLock::new(Arc::new(certified(cert_pem, key_pem)?)),
            generation: AtomicU64::new(0),
        })
    }

    /// Use `cert_pem` and `key_pem` from now on, for new connections. The key must belong to
    /// the certificate; the caller checks the certificate itself (CA, node id, validity).
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        let next = Arc::new(certified(cert_pem, key_pem)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// How many times the certificate was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The certificate (PEM) presented now.
    pub fn cert_pem(&self) -> String {
        self.now().cert_pem.clone()
    }

    /// Signs `message` with the key of the certificate presented now: that certificate (PEM),
    /// the scheme (`ecdsa_p256_sha256`, `ecdsa_p384_sha384` or `ed25519`) and the signature
    /// (an ECDSA one DER-encoded, as in TLS). Certificate and signature come from one view, so
    /// a renewal in between cannot pair a signature with another certificate.
    pub fn sign(&self, message: &[u8]) -> anyhow::Result<(String, &'static str, Vec<u8>)> {
        use rustls::SignatureScheme as S;
        const SCHEMES: [(S, &str); 3] = [
            (S::ECDSA_NISTP256_SHA256, "ecdsa_p256_sha256"),
            (S::ECDSA_NISTP384_SHA384, "ecdsa_p384_sha384"),
            (S::ED25519, "ed25519"),
        ];
        let now = self.now();
        let offered: Vec<S> = SCHEMES.iter().map(|(scheme, _)| *scheme).collect();
        let signer = now
            .certified
            .key
            .choose_scheme(&offered)
            .context("this node's key signs with none of ECDSA P-256, P-384 or Ed25519")?;
        let name = SCHEMES
            .iter()
            .find(|(scheme, _)| *scheme == signer.scheme())
            .map(|(_, name)| *name)
            .context("the signer chose a scheme it was not offered")?;
        let signature = signer.sign(message).context("sign with this node's key")?;
        Ok((now.cert_pem.clone(), name, signature))
    }

    fn now(&self) -> Arc<CurrentCert> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn pem(&self) -> (String, String) {
        let now = self.now();
        (now.cert_pem.clone(), now.key_pem.clone())
    }
}

fn certified(cert_pem: &str, key_pem: &str) -> anyhow::Result<CurrentCert> {
    let provider = rustls::crypto::ring::default_provider();
    let chain = parse_certs(cert_pem, "cert_pem")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("key_pem: no usable private key in PEM: {e}"))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .context("key_pem: unsupported private key")?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .context("key_pem does not belong to the certificate in cert_pem")?;
    Ok(CurrentCert {
        cert_pem: cert_pem.to_string(),
        key_pem: key_pem.to_string(),
        certified: Arc::new(certified),
    })
}

impl rustls::server::ResolvesServerCert for PeerIdentity {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.now().certified.clone())
    }
}

impl rustls::client::ResolvesClientCert for PeerIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.now().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn parse_certs(pem: &str, field: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{field}: bad PEM: {e}"))?;
    anyhow::ensure!(!certs.is_empty(), "{field}: no certificate in PEM");
    Ok(certs)
}
