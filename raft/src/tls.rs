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

use std::fmt;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::client::danger::ServerCertVerifier as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

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

    pub(crate) fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_cert_pem))
    }

    pub(crate) fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_cert_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(PEER_TLS_SERVER_NAME)
    }
}

fn parse_certs(pem: &str, field: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{field}: bad PEM: {e}"))?;
    anyhow::ensure!(!certs.is_empty(), "{field}: no certificate in PEM");
    Ok(certs)
}
