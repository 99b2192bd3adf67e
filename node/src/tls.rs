//! The cluster's certificate authority and node certificates (rcgen).
//!
//! A CA is created when a cluster is initialised, in `<data-dir>/tls/ca` of
//! the founding node. Every node holds a certificate signed by it, with the
//! SAN `quiver.cluster` and both server and client usage: peers accept each
//! other (Raft over gRPC, chunks over QUIC) only with mutual TLS under that CA.
//! A node joining later gets its certificate from an operator with
//! `quiver-node cert issue`, which needs the CA directory.
//!
//! A node certificate names its node, in its common name `quiver-node-{id}`
//! ([`node_cert_identity`] reads it back strictly), and is valid for a period
//! ([`CERT_VALID_DAYS_DEFAULT`] days unless told otherwise). `quiver-node cert
//! rotate` writes a renewed one over the old files ([`NodeCert::replace`]) and
//! the running node picks it up ([`crate::Node::reload_certificate`]).
//! What peers check of each other's certificates is decision 0017.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// How long a node certificate is valid when the operator does not say (`--valid-days`).
pub const CERT_VALID_DAYS_DEFAULT: u32 = 90;
/// Longest validity `cert issue` and `cert rotate` accept: a certificate that outlives its
/// node's care is one nobody rotates.
pub const CERT_VALID_DAYS_MAX: u32 = 3650;
/// A certificate is valid from this long before it was issued, so that a peer whose clock is
/// a little behind the issuing machine's accepts it at once. It is also why a removed node's
/// new certificate must be issued at least this long after its removal (decision 0017).
pub const CERT_CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);
/// The common name of node `node_id`'s certificate: the node id peers read back.
const NODE_CN_PREFIX: &str = "quiver-node-";
/// The common name of a client certificate: `quiver-client-<principal>`.
const CLIENT_CN_PREFIX: &str = "quiver-client-";

/// The name every node certificate carries and every peer verifies.
pub const PEER_TLS_SERVER_NAME: &str = "quiver.cluster";

/// The names a node certificate is valid for: the cluster's name, which peers and the SDK
/// verify, and this host's loopback names, so that an HTTPS client on the node's host (the
/// MLflow client at `https://127.0.0.1:7400` with the cluster CA) verifies it by its address.
pub const NODE_CERT_NAMES: [&str; 4] = [PEER_TLS_SERVER_NAME, "localhost", "127.0.0.1", "::1"];

/// Names (`--name`) a node certificate may carry beside [`NODE_CERT_NAMES`].
pub const NODE_CERT_EXTRA_NAMES_MAX: usize = 16;
/// The longest DNS name (RFC 1035).
const DNS_NAME_BYTES_MAX: usize = 253;

/// Checks a name a node certificate is to be valid for (`--name`): an IPv4 or IPv6 address,
/// or a DNS name (labels of 1 to 63 letters, digits and inner hyphens, 253 bytes at most; no
/// wildcards). The error names the value and what to give instead.
pub fn validate_cert_name(name: &str) -> anyhow::Result<()> {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let shown: String = name
        .chars()
        .take(80)
        .collect::<String>()
        .escape_debug()
        .to_string();
    let fix = "give a DNS name such as registry.example.com or an address such as 10.0.0.7";
    if name.is_empty() {
        bail!("--name is empty: {fix}");
    }
    if name.len() > DNS_NAME_BYTES_MAX {
        bail!(
            "--name \"{shown}…\" is {} bytes long: a DNS name has at most {DNS_NAME_BYTES_MAX}",
            name.len()
        );
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            bail!(
                "--name \"{shown}\" is not a DNS name or an IP address (label \"{}\": letters, \
                 digits and inner hyphens, 1 to 63 of them): {fix}",
                label.chars().take(80).collect::<String>().escape_debug()
            );
        }
    }
    Ok(())
}

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const CA_NAME_FILE: &str = "ca.name";
const NODE_CERT_FILE: &str = "node.pem";
const NODE_KEY_FILE: &str = "node.key";

/// A node's TLS material: the CA it trusts, its certificate and key (PEM).
#[derive(Clone, Debug)]
pub struct NodeCert {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct ClusterCa {
    name: String,
    key: KeyPair,
    cert_pem: String,
}

fn ca_params(name: &str) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Writes a new file readable by its owner only (a key, a token), synced; fails if it exists.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Writes `contents` beside `path`, syncs it, and renames it over `path` (then syncs the
/// directory), so `path` holds either the old or the new contents, whole.
fn replace_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .context("a file name")?
        .to_string_lossy()
        .to_string();
    let aside = path.with_file_name(format!(".{name}.new"));
    let _ = std::fs::remove_file(&aside);
    write_private(&aside, contents)?;
    std::fs::rename(&aside, path)
        .with_context(|| format!("rename {} to {}", aside.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("sync {}", dir.display()))?;
    }
    Ok(())
}

fn read(dir: &Path, file: &str) -> anyhow::Result<String> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

impl ClusterCa {
    /// Creates a new CA named after `cluster_id` and writes it to `dir`.
    pub fn create(dir: &Path, cluster_id: &str) -> anyhow::Result<ClusterCa> {
        if dir.join(CA_KEY_FILE).exists() {
            bail!("a cluster CA already exists in {}", dir.display());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let name = format!("Quiver cluster CA {cluster_id}");
        let key = KeyPair::generate().context("generate the CA key")?;
        let cert = ca_params(&name)?
            .self_signed(&key)
            .context("self-sign the CA")?;
        write_private(&dir.join(CA_KEY_FILE), &key.serialize_pem())?;
        write_private(&dir.join(CA_CERT_FILE), &cert.pem())?;
        write_private(&dir.join(CA_NAME_FILE), &name)?;
        Ok(ClusterCa {
            name,
            key,
            cert_pem: cert.pem(),
        })
    }

    pub fn load(dir: &Path) -> anyhow::Result<ClusterCa> {
        let key = KeyPair::from_pem(&read(dir, CA_KEY_FILE)?)
            .with_context(|| format!("parse the CA key in {}", dir.display()))?;
        Ok(ClusterCa {
            name: read(dir, CA_NAME_FILE)?,
            key,
            cert_pem: read(dir, CA_CERT_FILE)?,
        })
    }

    /// Issues a certificate for node `node_id`, valid for [`CERT_VALID_DAYS_DEFAULT`] days.
    pub fn issue(&self, node_id: u64) -> anyhow::Result<NodeCert> {
        self.issue_for_days(node_id, CERT_VALID_DAYS_DEFAULT)
    }

    /// Issues a certificate for node `node_id`, valid from now (less
    /// [`CERT_CLOCK_SKEW_ALLOWANCE`]) for `valid_days` days (1 to [`CERT_VALID_DAYS_MAX`]).
    pub fn issue_for_days(&self, node_id: u64, valid_days: u32) -> anyhow::Result<NodeCert> {
        self.issue_named(node_id, valid_days, &[])
    }

    /// [`ClusterCa::issue_for_days`], the certificate also valid for `names` (`--name`: the
    /// host names and addresses remote HTTPS clients reach the node by, each checked by
    /// [`validate_cert_name`], at most [`NODE_CERT_EXTRA_NAMES_MAX`]).
    pub fn issue_named(
        &self,
        node_id: u64,
        valid_days: u32,
        names: &[String],
    ) -> anyhow::Result<NodeCert> {
        if !(1..=CERT_VALID_DAYS_MAX).contains(&valid_days) {
            bail!("--valid-days {valid_days} is out of range: use 1 to {CERT_VALID_DAYS_MAX}");
        }
        let now = SystemTime::now();
        let not_after = now + Duration::from_secs(u64::from(valid_days) * 86_400);
        self.issue_valid_named(node_id, now - CERT_CLOCK_SKEW_ALLOWANCE, not_after, names)
    }

    /// Issues a certificate for node `node_id` valid from `not_before` to `not_after` (seconds
    /// are kept, finer parts dropped). Tests use it for certificates already expired.
    pub fn issue_valid(
        &self,
        node_id: u64,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> anyhow::Result<NodeCert> {
        self.issue_valid_named(node_id, not_before, not_after, &[])
    }

    fn issue_valid_named(
        &self,
        node_id: u64,
        not_before: SystemTime,
        not_after: SystemTime,
        names: &[String],
    ) -> anyhow::Result<NodeCert> {
        anyhow::ensure!(
            not_before < not_after,
            "a certificate must become valid before it expires"
        );
        if names.len() > NODE_CERT_EXTRA_NAMES_MAX {
            bail!(
                "--name is given {} times: a node certificate takes at most \
                 {NODE_CERT_EXTRA_NAMES_MAX} names beside {NODE_CERT_NAMES:?}",
                names.len()
            );
        }
        let mut all: Vec<String> = NODE_CERT_NAMES.map(String::from).to_vec();
        for name in names {
            validate_cert_name(name)?;
            if !all.iter().any(|known| known.eq_ignore_ascii_case(name)) {
                all.push(name.clone());
            }
        }
        let mut params = CertificateParams::new(all)?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let (cert_pem, key_pem) = self
            .sign(
                params,
                &format!("{NODE_CN_PREFIX}{node_id}"),
                not_before,
                not_after,
            )
            .with_context(|| format!("sign the certificate of node {node_id}"))?;
        Ok(NodeCert {
            ca_cert_pem: self.cert_pem.clone(),
            cert_pem,
            key_pem,
        })
    }

    /// Issues a client certificate for principal `name` (`quiver-node cert issue --client`),
    /// valid from now (less [`CERT_CLOCK_SKEW_ALLOWANCE`]) for `valid_days` days. It can only
    /// authenticate a client: it names no node and carries the `clientAuth` usage alone.
    pub fn issue_client(&self, name: &str, valid_days: u32) -> anyhow::Result<ClientCert> {
        if !(1..=CERT_VALID_DAYS_MAX).contains(&valid_days) {
            bail!("--valid-days {valid_days} is out of range: use 1 to {CERT_VALID_DAYS_MAX}");
        }
        let now = SystemTime::now();
        let not_after = now + Duration::from_secs(u64::from(valid_days) * 86_400);
        self.issue_client_valid(name, now - CERT_CLOCK_SKEW_ALLOWANCE, not_after)
    }

    /// [`ClusterCa::issue_client`] for an explicit validity period (tests: expired ones).
    pub fn issue_client_valid(
        &self,
        name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> anyhow::Result<ClientCert> {
        crate::auth::validate_principal(name).map_err(|e| anyhow::anyhow!("--client: {e}"))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (cert_pem, key_pem) = self
            .sign(
                params,
                &format!("{CLIENT_CN_PREFIX}{name}"),
                not_before,
                not_after,
            )
            .with_context(|| format!("sign the client certificate of {name}"))?;
        Ok(ClientCert {
            ca_cert_pem: self.cert_pem.clone(),
            cert_pem,
            key_pem,
        })
    }

    /// Signs `params` with this CA under the common name `common_name`, for the period given
    /// (seconds are kept, finer parts dropped), with a new key pair: (certificate, key) PEM.
    fn sign(
        &self,
        mut params: CertificateParams,
        common_name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> anyhow::Result<(String, String)> {
        anyhow::ensure!(
            not_before < not_after,
            "a certificate must become valid before it expires"
        );
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.not_before = offset_date_time(not_before)?;
        params.not_after = offset_date_time(not_after)?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().context("generate a key pair")?;
        // The issuer is rebuilt from the same name and key as the stored CA
        // certificate, so signatures chain to it without parsing it back.
        let issuer = Issuer::new(ca_params(&self.name)?, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A client certificate and key, and the CA that issued them (`quiver-node cert issue
/// --client NAME` writes `NAME.pem`, `NAME.key` and `ca.pem`).
#[derive(Clone, Debug)]
pub struct ClientCert {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ClientCert {
    /// Writes `ca.pem`, `NAME.pem` and `NAME.key` into `dir` (refuses to overwrite the
    /// certificate or key); returns the paths of the certificate and key.
    pub fn write(&self, dir: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        if cert.exists() || key.exists() {
            bail!(
                "{} already holds a certificate for {name}: remove it first, or write elsewhere with --out",
                dir.display()
            );
        }
        let ca = dir.join(CA_CERT_FILE);
        if ca.exists() {
            anyhow::ensure!(
                std::fs::read_to_string(&ca)? == self.ca_cert_pem,
                "{} holds another CA's certificate: write elsewhere with --out",
                ca.display()
            );
        } else {
            write_private(&ca, &self.ca_cert_pem)?;
        }
        write_private(&key, &self.key_pem)?;
        write_private(&cert, &self.cert_pem)?;
        Ok((cert, key))
    }
}

fn offset_date_time(at: SystemTime) -> anyhow::Result<time::OffsetDateTime> {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .context("a certificate date before 1970")?
        .as_secs();
    let secs = i64::try_from(secs).context("a certificate date too far ahead")?;
    time::OffsetDateTime::from_unix_timestamp(secs).context("a certificate date out of range")
}

/// What a peer's certificate says about it: the node it names and when it is valid (ms since
/// the Unix epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertIdentity {
    pub node_id: u64,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

/// Reads the node id and validity period out of a node certificate (DER). The subject must
/// have exactly one common name, `quiver-node-{id}` with `id` a decimal `u64` in canonical form
/// (no sign, no leading zero): any other certificate, even one signed by the cluster CA (a
/// client's), names no node and is not a peer's.
pub fn node_cert_identity(der: &[u8]) -> Result<CertIdentity, String> {
    let (name, not_before_ms, not_after_ms) = common_name_and_validity(der)?;
    let node_id = name
        .strip_prefix(NODE_CN_PREFIX)
        .and_then(parse_node_id)
        .ok_or_else(|| {
            format!(
                "the certificate's common name {} is not {NODE_CN_PREFIX}<node id>",
                crate::domain::shown(&name)
            )
        })?;
    Ok(CertIdentity {
        node_id,
        not_before_ms,
        not_after_ms,
    })
}

/// What a client certificate says: the principal it authenticates and when it is valid (ms
/// since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub principal: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

/// Reads the principal and validity period out of a client certificate (DER): exactly one
/// common name, `quiver-client-<principal>`, with a valid principal name. A node's
/// certificate names no principal: it is refused as a client credential.
pub fn client_cert_identity(der: &[u8]) -> Result<ClientIdentity, String> {
    let (name, not_before_ms, not_after_ms) = common_name_and_validity(der)?;
    if name.starts_with(NODE_CN_PREFIX) {
        return Err(
            "a node's certificate is not a client credential: use a token, or a client \
             certificate from `quiver-node cert issue --client NAME`"
                .to_string(),
        );
    }
    let principal = name
        .strip_prefix(CLIENT_CN_PREFIX)
        .filter(|p| crate::auth::validate_principal(p).is_ok())
        .ok_or_else(|| {
            format!(
                "the certificate's common name {} is not {CLIENT_CN_PREFIX}<principal>",
                crate::domain::shown(&name)
            )
        })?;
    Ok(ClientIdentity {
        principal: principal.to_string(),
        not_before_ms,
        not_after_ms,
    })
}

/// Certificates a node has read an identity out of ([`node_cert_identity`] for peers,
/// [`client_cert_identity`] for clients), by their exact DER bytes: a connection presents the
/// same certificate on every request, and parsing it is most of the cost of admitting one. Only
/// what the certificate says is kept, never a verdict: its validity period, and a removed
/// node's refusal, are checked against the clock and the state on every request. A certificate
/// that does not read is not kept. Bounded by [`CERT_IDENTITIES_KEPT_MAX`] (a full cache drops
/// an arbitrary entry for a new one); only certificates chained to the cluster CA reach it.
#[derive(Debug)]
pub struct CertIdentities<T> {
    by_der: std::sync::Mutex<std::collections::HashMap<Vec<u8>, T>>,
}

/// Certificates whose identity a [`CertIdentities`] keeps.
pub const CERT_IDENTITIES_KEPT_MAX: usize = 256;

impl<T> Default for CertIdentities<T> {
    fn default() -> Self {
        CertIdentities {
            by_der: Default::default(),
        }
    }
}

impl<T: Clone> CertIdentities<T> {
    /// What `read` reads out of `der`, read once per distinct certificate.
    pub fn read(
        &self,
        der: &[u8],
        read: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<T, String> {
        if let Some(known) = self.lock().get(der) {
            return Ok(known.clone());
        }
        let identity = read(der)?;
        let mut by_der = self.lock();
        if by_der.len() >= CERT_IDENTITIES_KEPT_MAX {
            let evicted = by_der.keys().next().cloned();
            if let Some(evicted) = evicted {
                by_der.remove(&evicted);
            }
        }
        by_der.insert(der.to_vec(), identity.clone());
        Ok(identity)
    }

    /// How many certificates it keeps.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Vec<u8>, T>> {
        self.by_der.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A certificate's only common name and its validity period (ms since the Unix epoch).
fn common_name_and_validity(der: &[u8]) -> Result<(String, i64, i64), String> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".to_string());
    }
    let mut names = cert.subject().iter_common_name();
    let (Some(name), None) = (names.next(), names.next()) else {
        return Err("a Quiver certificate has exactly one common name".to_string());
    };
    let name = name
        .as_str()
        .map_err(|e| format!("the certificate's common name is not text: {e}"))?;
    let validity = cert.validity();
    Ok((
        name.to_string(),
        validity.not_before.timestamp().saturating_mul(1000),
        validity.not_after.timestamp().saturating_mul(1000),
    ))
}

/// A node id written canonically: decimal digits, no leading zero (but `0` itself).
fn parse_node_id(digits: &str) -> Option<u64> {
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

/// The certificate (the first of `pem`) read with [`node_cert_identity`].
pub fn pem_cert_identity(pem: &str) -> anyhow::Result<CertIdentity> {
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("no certificate in PEM: {e}"))?;
    node_cert_identity(&der).map_err(|e| anyhow::anyhow!(e))
}

impl NodeCert {
    /// The node id and validity period this certificate carries.
    pub fn identity(&self) -> anyhow::Result<CertIdentity> {
        pem_cert_identity(&self.cert_pem)
    }

    /// Puts this (renewed) certificate and key in place of the ones in `dir`, for
    /// `quiver-node cert rotate`: each file is written aside, synced, then renamed over the
    /// old one, key first. A node reading the directory meanwhile may see the new key with the
    /// old certificate for an instant; it refuses a pair that does not match and reads again
    /// later ([`crate::Node::reload_certificate`]). `dir` must hold this node's certificate
    /// under the same CA.
    pub fn replace(&self, dir: &Path) -> anyhow::Result<()> {
        let old = NodeCert::load(dir)
            .with_context(|| format!("{} holds no node certificate to renew", dir.display()))?;
        if old.ca_cert_pem != self.ca_cert_pem {
            bail!(
                "{} holds a certificate from another CA: renew it with the CA that issued it",
                dir.display()
            );
        }
        let (old_id, new_id) = (old.identity()?.node_id, self.identity()?.node_id);
        if old_id != new_id {
            bail!(
                "{} holds the certificate of node {old_id}, not node {new_id}",
                dir.display()
            );
        }
        replace_private(&dir.join(NODE_KEY_FILE), &self.key_pem)?;
        replace_private(&dir.join(NODE_CERT_FILE), &self.cert_pem)?;
        Ok(())
    }

    /// Writes ca.pem, node.pem and node.key into `dir` (refuses to overwrite).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        if dir.join(NODE_KEY_FILE).exists() {
            bail!("{} already holds a node certificate", dir.display());
        }
        write_private(&dir.join(CA_CERT_FILE), &self.ca_cert_pem)?;
        write_private(&dir.join(NODE_CERT_FILE), &self.cert_pem)?;
        write_private(&dir.join(NODE_KEY_FILE), &self.key_pem)?;
        Ok(())
    }

    pub fn exists(dir: &Path) -> bool {
        dir.join(NODE_KEY_FILE).exists()
    }

    pub fn load(dir: &Path) -> anyhow::Result<NodeCert> {
        Ok(NodeCert {
            ca_cert_pem: read(dir, CA_CERT_FILE)?,
            cert_pem: read(dir, NODE_CERT_FILE)?,
            key_pem: read(dir, NODE_KEY_FILE)?,
        })
    }
}

/// Where a node keeps its TLS material by default.
pub fn default_tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// Where the founding node keeps the cluster CA.
pub fn default_ca_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("ca")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_survives_reload_and_issues_distinct_node_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(dir.path(), "c1").unwrap();
        let a = ca.issue(1).unwrap();
        let reloaded = ClusterCa::load(dir.path()).unwrap();
        let b = reloaded.issue(2).unwrap();
        assert_eq!(a.ca_cert_pem, b.ca_cert_pem);
        assert_ne!(a.cert_pem, b.cert_pem);
        assert!(
            ClusterCa::create(dir.path(), "c1").is_err(),
            "never overwrite a CA"
        );
        let node_dir = dir.path().join("n1");
        a.write(&node_dir).unwrap();
        assert!(a.write(&node_dir).is_err(), "never overwrite a node key");
        assert_eq!(NodeCert::load(&node_dir).unwrap().cert_pem, a.cert_pem);
    }

    #[test]
    fn a_node_certificate_names_its_node_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(dir.path(), "c1").unwrap();
        let before = SystemTime::now();
        let cert = ca.issue_for_days(7, 30).unwrap();
        let identity = cert.identity().unwrap();
        assert_eq!(identity.node_id, 7);
        let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        let skew = CERT_CLOCK_SKEW_ALLOWANCE.as_millis() as i64;
        assert!(identity.not_before_ms <= ms(before) - skew + 1000);
        assert!(identity.not_before_ms >= ms(before) - skew - 1000);
        let thirty_days = 30 * 86_400_000;
        assert!((identity.not_after_ms - (ms(before) + thirty_days)).abs() < 2_000);
        assert!(ca.issue_for_days(7, 0).is_err());
        assert!(ca.issue_for_days(7, CERT_VALID_DAYS_MAX + 1).is_err());
    }

    #[test]
    fn only_a_canonical_node_common_name_names_a_node() {
        assert_eq!(parse_node_id("0"), Some(0));
        assert_eq!(parse_node_id("42"), Some(42));
        assert_eq!(parse_node_id(&u64::MAX.to_string()), Some(u64::MAX));
        for bad in [
            "",
            "042",
            "+4",
            "-4",
            "4 ",
            "4a",
            "18446744073709551616",
            "٤",
        ] {
            assert_eq!(parse_node_id(bad), None, "{bad:?}");
        }
        let other = |cn: &str| {
            let mut params =
                CertificateParams::new(vec![PEER_TLS_SERVER_NAME.to_string()]).unwrap();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            params.distinguished_name = dn;
            let key = KeyPair::generate().unwrap();
            let der = params.self_signed(&key).unwrap().der().to_vec();
            node_cert_identity(&der)
        };
        assert_eq!(other("quiver-node-3").unwrap().node_id, 3);
        assert!(other("quiver-client-3").is_err());
        assert!(other("quiver-node-03").is_err());
        assert!(other("quiver-node-").is_err());
    }

    #[test]
    fn a_renewed_certificate_replaces_the_old_one_of_the_same_node_and_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(&dir.path().join("ca"), "c1").unwrap();
        let node_dir = dir.path().join("n1");
        ca.issue(1).unwrap().write(&node_dir).unwrap();
        let renewed = ca.issue(1).unwrap();
        renewed.replace(&node_dir).unwrap();
        let loaded = NodeCert::load(&node_dir).unwrap();
        assert_eq!(loaded.cert_pem, renewed.cert_pem);
        assert_eq!(loaded.key_pem, renewed.key_pem);
        assert!(
            ca.issue(2).unwrap().replace(&node_dir).is_err(),
            "another node's"
        );
        let other = ClusterCa::create(&dir.path().join("other"), "c2").unwrap();
        assert!(
            other.issue(1).unwrap().replace(&node_dir).is_err(),
            "another CA's"
        );
        assert_eq!(
            NodeCert::load(&node_dir).unwrap().cert_pem,
            renewed.cert_pem
        );
    }

    #[test]
    fn only_a_client_common_name_with_a_valid_principal_names_a_client() {
        let with_cn = |cn: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            params.distinguished_name = dn;
            let key = KeyPair::generate().unwrap();
            client_cert_identity(params.self_signed(&key).unwrap().der())
        };
        assert_eq!(with_cn("quiver-client-alice").unwrap().principal, "alice");
        let long = format!("quiver-client-{}", "a".repeat(5_000));
        for bad in [
            "quiver-client-",
            "quiver-client-node:1",
            "quiver-client-../etc",
            "quiver-client-a\0b",
            "quiver-client-\u{202e}x",
            "quiver-client-Alice",
            long.as_str(),
            "alice",
            "quiver-node-1",
        ] {
            assert!(with_cn(bad).is_err(), "{bad:?}");
        }
        let node = with_cn("quiver-node-1").unwrap_err();
        assert!(node.contains("not a client credential"), "{node}");
        assert!(client_cert_identity(b"").is_err());
        assert!(client_cert_identity(&[0x30; 64]).is_err());
    }

    #[test]
    fn a_client_certificate_names_its_principal_and_is_written_without_overwriting() {
        use rustls::pki_types::pem::PemObject as _;
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(&dir.path().join("ca"), "c1").unwrap();
        let cert = ca.issue_client("ci-pipeline", 10).unwrap();
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
        let identity = client_cert_identity(&der).unwrap();
        assert_eq!(identity.principal, "ci-pipeline");
        assert!(node_cert_identity(&der).is_err(), "it names no node");
        let out = dir.path().join("out");
        let (pem, key) = cert.write(&out, "ci-pipeline").unwrap();
        assert_eq!(std::fs::read_to_string(pem).unwrap(), cert.cert_pem);
        assert_eq!(std::fs::read_to_string(key).unwrap(), cert.key_pem);
        assert!(cert.write(&out, "ci-pipeline").is_err());
        let other = ClusterCa::create(&dir.path().join("other"), "c2").unwrap();
        assert!(
            other
                .issue_client("bob", 1)
                .unwrap()
                .write(&out, "bob")
                .is_err(),
            "another CA's beside this CA's ca.pem"
        );
    }

    /// Whether `cert` verifies as a server certificate for `name` against its CA.
    fn verifies_for(cert: &NodeCert, name: &str) -> bool {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(cert.ca_cert_pem.as_bytes()).unwrap())
            .unwrap();
        let end_entity = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap()
            .verify_server_cert(
                &end_entity,
                &[],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .is_ok()
    }

    #[test]
    fn a_node_certificate_is_valid_for_the_names_it_is_issued_with_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(dir.path(), "c1").unwrap();
        let names = vec![
            "registry.example.com".to_string(),
            "10.0.0.7".to_string(),
            "fd00::7".to_string(),
            "LOCALHOST".to_string(),
        ];
        let cert = ca.issue_named(3, 30, &names).unwrap();
        for name in [
            "registry.example.com",
            "10.0.0.7",
            "fd00::7",
            "quiver.cluster",
            "127.0.0.1",
        ] {
            assert!(verifies_for(&cert, name), "{name}");
        }
        for name in ["other.example.com", "10.0.0.8", "example.com"] {
            assert!(!verifies_for(&cert, name), "{name}");
        }
        // Without names: the cluster's name and loopback only, as before.
        let plain = ca.issue_for_days(3, 30).unwrap();
        assert!(verifies_for(&plain, "quiver.cluster") && !verifies_for(&plain, "10.0.0.7"));
        assert_eq!(
            cert.identity().unwrap().node_id,
            3,
            "the names change nothing of what peers read back"
        );
    }

    #[test]
    fn names_that_are_neither_dns_names_nor_addresses_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(dir.path(), "c1").unwrap();
        let long_label = "a".repeat(64);
        let long_name = ["a"; 130].join(".");
        for bad in [
            "",
            " ",
            "has space.example.com",
            "nul\0.example.com",
            "../etc/passwd",
            "a/b",
            "*.example.com",
            "-leading.example.com",
            "trailing-.example.com",
            "two..dots",
            "ünïcode.example.com",
            "host:7400",
            "https://registry.example.com",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            let error = ca
                .issue_named(3, 30, &[bad.to_string()])
                .expect_err(bad)
                .to_string();
            assert!(error.contains("--name"), "{bad:?}: {error}");
        }
        for good in [
            "a",
            "a-b.c",
            "registry.example.com.",
            "::1",
            "255.255.255.255",
        ] {
            ca.issue_named(3, 30, &[good.to_string()]).expect(good);
        }
        let too_many: Vec<String> = (0..=NODE_CERT_EXTRA_NAMES_MAX)
            .map(|i| format!("h{i}"))
            .collect();
        let error = ca.issue_named(3, 30, &too_many).unwrap_err().to_string();
        assert!(error.contains("at most"), "{error}");
        assert!(ca.issue_named(3, 0, &[]).is_err());
    }
}
