//! The cluster's certificate authority and node certificates (rcgen).
//!
//! A CA is created when a cluster is initialised, in `<data-dir>/tls/ca` of
//! the founding node. Every node holds a certificate signed by it, with the
//! SAN `quiver.cluster` and both server and client usage: peers accept each
//! other (Raft over gRPC, chunks over QUIC) only with mutual TLS under that CA.
//! A node joining later gets its certificate from an operator with
//! `quiver-node cert issue`, which needs the CA directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The name every node certificate carries and every peer verifies.
pub const PEER_TLS_SERVER_NAME: &str = "quiver.cluster";

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

    /// Issues a certificate for node `node_id`.
    pub fn issue(&self, node_id: u64) -> anyhow::Result<NodeCert> {
        let mut params = CertificateParams::new(vec![PEER_TLS_SERVER_NAME.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("quiver-node-{node_id}"));
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().context("generate a node key")?;
        // The issuer is rebuilt from the same name and key as the stored CA
        // certificate, so signatures chain to it without parsing it back.
        let issuer = Issuer::new(ca_params(&self.name)?, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("sign the certificate of node {node_id}"))?;
        Ok(NodeCert {
            ca_cert_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl NodeCert {
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
}
