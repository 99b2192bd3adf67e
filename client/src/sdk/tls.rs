//! How a client verifies a node and, optionally, proves who it is with a certificate.
//!
//! Nodes serve their API over TLS with certificates from their cluster's CA, issued for the
//! name [`NODE_TLS_NAME`] (never the host: a cluster's nodes move between hosts). A client
//! trusts that CA's certificate, from `--ca`, `QUIVER_CA`, or `.quiver/ca.pem`, where
//! `quiver-node up` puts it. A client certificate (`quiver-node cert issue --client NAME`,
//! passed with `--cert`/`--key` or `QUIVER_CERT`/`QUIVER_KEY`) authenticates its principal
//! when the request carries no token.

use std::fmt;
use std::path::{Path, PathBuf};

use super::ClientError;

/// Environment variable naming the cluster CA's certificate (PEM file).
pub const CA_ENV: &str = "QUIVER_CA";
/// Environment variables naming a client certificate and its key (PEM files).
pub const CERT_ENV: &str = "QUIVER_CERT";
pub const KEY_ENV: &str = "QUIVER_KEY";
/// Where a client looks for the CA's certificate when nothing names it: what `quiver-node up`
/// writes beside the admin's token.
pub const LOCAL_CA_FILE: &str = ".quiver/ca.pem";
/// The name every node's certificate is issued for, which clients verify.
pub const NODE_TLS_NAME: &str = "quiver.cluster";
/// Largest PEM file read (a CA bundle, a certificate, a key).
const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// What a client needs for `https://` endpoints. `Debug` never shows the key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// The cluster CA's certificate(s), PEM: nodes are verified against it.
    pub ca_pem: Option<String>,
    /// A client certificate and its key, PEM.
    pub identity: Option<(String, String)>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem", &self.ca_pem.as_ref().map(String::len))
            .field("identity", &self.identity.as_ref().map(|_| "<certificate>"))
            .finish()
    }
}

impl ClientTls {
    /// From the environment: `QUIVER_CA` (else `.quiver/ca.pem` if it exists), and
    /// `QUIVER_CERT` with `QUIVER_KEY`.
    pub fn from_env() -> Result<ClientTls, ClientError> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        ClientTls::load(
            var(CA_ENV).as_deref(),
            var(CERT_ENV).as_deref(),
            var(KEY_ENV).as_deref(),
        )
    }

    /// From files: the CA's certificate at `ca` (none: `.quiver/ca.pem` if it exists), and a
    /// client certificate at `cert` with its key at `key` (both or neither).
    pub fn load(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<ClientTls, ClientError> {
        let ca_pem = match ca {
            Some(path) => Some(read_pem(
                path,
                "the cluster CA's certificate (--ca, QUIVER_CA)",
            )?),
            None => {
                let local = Path::new(LOCAL_CA_FILE);
                match local.exists() {
                    true => Some(read_pem(local, "the local cluster's CA certificate")?),
                    false => None,
                }
            }
        };
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((
                read_pem(cert, "the client certificate (--cert, QUIVER_CERT)")?,
                read_pem(key, "the client key (--key, QUIVER_KEY)")?,
            )),
            (None, None) => None,
            _ => {
                return Err(ClientError::InvalidInput(
                    "a client certificate needs both --cert and --key (QUIVER_CERT and \
                     QUIVER_KEY): `quiver-node cert issue --client NAME` writes NAME.pem and \
                     NAME.key"
                        .into(),
                ))
            }
        };
        Ok(ClientTls { ca_pem, identity })
    }

    /// tonic's configuration for an `https://` endpoint: refuses without a CA, which would
    /// otherwise fall back on nothing a node's certificate chains to.
    pub(crate) fn tonic_config(
        &self,
        endpoint: &str,
    ) -> Result<tonic::transport::ClientTlsConfig, ClientError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let Some(ca_pem) = &self.ca_pem else {
            return Err(ClientError::InvalidInput(format!(
                "{endpoint} serves TLS, and this client has no CA to verify it with: pass --ca \
                 FILE or set {CA_ENV} to the cluster CA's certificate (a node's \
                 <data-dir>/tls/ca.pem; a local cluster started with `quiver-node up` keeps it \
                 in {LOCAL_CA_FILE}, found when run beside it)"
            )));
        };
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name(NODE_TLS_NAME);
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        Ok(config)
    }
}

/// A PEM file's text, bounded in size, with an error naming what it was meant to be.
fn read_pem(path: &Path, what: &str) -> Result<String, ClientError> {
    let refuse = |detail: String| {
        ClientError::InvalidInput(format!("cannot use {} as {what}: {detail}", path.display()))
    };
    let size = std::fs::metadata(path)
        .map_err(|e| refuse(e.to_string()))?
        .len();
    if size > PEM_FILE_BYTES_MAX {
        return Err(refuse(format!(
            "it holds {size} bytes, more than a PEM file's {PEM_FILE_BYTES_MAX}"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| refuse(e.to_string()))?;
    if !text.contains("-----BEGIN ") {
        return Err(refuse("it holds no PEM block (-----BEGIN …)".into()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_non_pem_file_is_named_with_what_it_was_for() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = ClientTls::load(Some(&missing), None, None).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("missing.pem") && text.contains("--ca"),
            "{text}"
        );

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\0\u{202e}").unwrap();
        let text = ClientTls::load(Some(&junk), None, None)
            .unwrap_err()
            .to_string();
        assert!(text.contains("no PEM block"), "{text}");
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let text = ClientTls::load(Some(&ca), Some(&ca), None)
            .unwrap_err()
            .to_string();
        assert!(text.contains("both --cert and --key"), "{text}");
    }

    #[test]
    fn an_https_endpoint_without_a_ca_says_where_to_find_one() {
        let text = ClientTls::default()
            .tonic_config("https://127.0.0.1:7400")
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("QUIVER_CA") && text.contains(".quiver/ca.pem"),
            "{text}"
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let tls = ClientTls {
            ca_pem: Some("ca".into()),
            identity: Some(("cert".into(), "SECRET KEY".into())),
        };
        assert!(!format!("{tls:?}").contains("SECRET"));
    }
}
