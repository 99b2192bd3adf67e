//! Which peers a node admits beyond the cluster CA (decision 0017): the node a certificate
//! names (its common name, [`crate::tls::node_cert_identity`]), not after its validity period,
//! and not a removed node's. The Raft peer server and the QUIC chunk server ask [`PeerAccess`]
//! for every request, so the check is a lookup of the certificate's identity (read once per
//! distinct certificate, [`CertIdentities`]), its validity period against the clock, and a
//! lookup in a small map behind a read lock; the map of removed nodes is refreshed from the replicated state
//! ([`crate::Node`] does it when the applied index moves), never read from disk per request.
//!
//! A removed node is refused with every certificate issued before its removal: the
//! certificate's `notBefore` must be later than the time the `RemoveNode` command was stamped
//! with. A removed node that is to serve again needs a certificate issued after that
//! (`quiver-node cert rotate`, at least [`crate::tls::CERT_CLOCK_SKEW_ALLOWANCE`] later, as
//! certificates are valid from that long before they are issued).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use anyhow::Context as _;
use quiver_raft::PeerTls;
use quiver_transfer::{ChunkStore, PeerClient};
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;

use crate::env::Clock;
use crate::node::Node;
use crate::tls::{node_cert_identity, CertIdentities, CertIdentity, NodeCert};

/// How often a running node looks for a renewed certificate in its TLS directory
/// (`quiver-node cert rotate` writes it there).
pub const CERT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The gate both peer servers admit clients by; see the module docs.
pub struct PeerAccess {
    /// Removed node id → when its removal was stamped (ms since the Unix epoch).
    removed: RwLock<BTreeMap<u64, i64>>,
    /// What the peers' certificates say, read once per certificate.
    identities: CertIdentities<CertIdentity>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for PeerAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerAccess")
            .field("removed", &*self.read())
            .finish_non_exhaustive()
    }
}

impl PeerAccess {
    pub fn new(clock: Arc<dyn Clock>) -> PeerAccess {
        PeerAccess {
            removed: RwLock::new(BTreeMap::new()),
            identities: CertIdentities::default(),
            clock,
        }
    }

    /// The removed nodes as the replicated state has them now (id → removal time in ms).
    pub fn set_removed(&self, removed: BTreeMap<u64, i64>) {
        let mut current = self.removed.write().unwrap_or_else(|p| p.into_inner());
        if *current != removed {
            tracing::info!(removed = ?removed, "peer access: removed nodes");
            *current = removed;
        }
    }

    /// The removed nodes it refuses (id → removal time in ms).
    pub fn removed(&self) -> BTreeMap<u64, i64> {
        self.read().clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, i64>> {
        self.removed.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a certificate saying `identity` may act as a peer at `now_ms`: its node id, or
    /// why not.
    pub fn check(&self, identity: &CertIdentity, now_ms: i64) -> Result<u64, String> {
        let node_id = identity.node_id;
        if now_ms > identity.not_after_ms {
            return Err(format!(
                "the certificate of node {node_id} expired (renew it with `quiver-node cert \
                 rotate`)"
            ));
        }
        if now_ms < identity.not_before_ms {
            return Err(format!(
                "the certificate of node {node_id} is not valid yet"
            ));
        }
        if let Some(removed_at_ms) = self.read().get(&node_id) {
            if identity.not_before_ms <= *removed_at_ms {
                return Err(format!(
                    "node {node_id} was removed from the cluster and this certificate was \
                     issued before that; a node that serves again needs a certificate issued \
                     after its removal"
                ));
            }
        }
        Ok(node_id)
    }

    fn admit_der(&self, end_entity: &CertificateDer<'_>) -> Result<u64, String> {
        let identity = self.identities.read(end_entity, node_cert_identity)?;
        self.check(&identity, self.clock.now_ms())
    }
}

impl quiver_raft::PeerGate for PeerAccess {
    fn admit(&self, end_entity: &CertificateDer<'_>) -> Result<u64, String> {
        self.admit_der(end_entity)
    }
}

impl quiver_transfer::PeerGate for PeerAccess {
    fn admit(&self, end_entity: &CertificateDer<'_>) -> Result<u64, String> {
        self.admit_der(end_entity)
    }

    /// The node a certificate names, removed or expired alike (the chunk client's byte counts).
    fn node_of(&self, end_entity: &CertificateDer<'_>) -> Option<u64> {
        self.identities
            .read(end_entity, node_cert_identity)
            .ok()
            .map(|identity| identity.node_id)
    }
}

impl Node<ChunkStore, PeerClient> {
    /// The gate this node admits peers by.
    pub fn peer_access(&self) -> Option<&Arc<PeerAccess>> {
        self.host_certs().map(|certs| &certs.access)
    }

    /// The client API's TLS configuration: this node's certificate as it is at each handshake
    /// (so a renewed one is served without a restart), client certificates optional and
    /// checked against the cluster CA. `None`: a node without its own certificates.
    pub fn api_tls(&self) -> Option<anyhow::Result<rustls::ServerConfig>> {
        let certs = self.host_certs()?;
        let tls = PeerTls {
            ca_cert_pem: certs.ca_cert_pem.clone(),
            cert_pem: String::new(),
            key_pem: String::new(),
        };
        Some(tls.api_server_config(certs.identity.clone()))
    }

    /// The certificate (PEM) this node presents to peers now.
    pub fn certificate_pem(&self) -> Option<String> {
        self.host_certs().map(|certs| certs.identity.cert_pem())
    }

    /// Reads the removed nodes from this node's applied state into its gate.
    pub fn refresh_peer_access(&self) -> anyhow::Result<()> {
        let Some(access) = self.peer_access() else {
            return Ok(());
        };
        let removed = self.raft.read(|app, txn| Ok(app.removed_nodes(txn)?))?;
        access.set_removed(removed);
        Ok(())
    }

    /// Reads this node's certificate from `dir` (its TLS directory) and, if it is a renewed
    /// one, presents it on every new connection from now on. A renewed certificate must be
    /// signed by the same CA, name this node and be valid now, and its key must match it;
    /// otherwise the node keeps the one it has and this says why. `Ok(true)`: replaced.
    pub fn reload_certificate(&self, dir: &Path) -> anyhow::Result<bool> {
        let Some(certs) = self.host_certs() else {
            return Ok(false);
        };
        let renewed = NodeCert::load(dir)?;
        if renewed.cert_pem == certs.identity.cert_pem() {
            return Ok(false);
        }
        anyhow::ensure!(
            renewed.ca_cert_pem.trim() == certs.ca_cert_pem.trim(),
            "the certificate in {} is from another CA than the cluster's",
            dir.display()
        );
        let tls = PeerTls {
            ca_cert_pem: certs.ca_cert_pem.clone(),
            cert_pem: renewed.cert_pem.clone(),
            key_pem: renewed.key_pem.clone(),
        };
        tls.validate()
            .with_context(|| format!("the renewed certificate in {}", dir.display()))?;
        let named = renewed.identity()?;
        anyhow::ensure!(
            named.node_id == self.node_id(),
            "the certificate in {} is node {}'s, not this node's ({})",
            dir.display(),
            named.node_id,
            self.node_id()
        );
        certs
            .identity
            .replace(&renewed.cert_pem, &renewed.key_pem)?;
        tracing::info!(
            node_id = self.node_id(),
            not_after_ms = named.not_after_ms,
            "renewed certificate in use for new connections"
        );
        Ok(true)
    }

    /// Looks for a renewed certificate in `dir` every `interval` until the node shuts down
    /// ([`Node::reload_certificate`]; a bad one is reported and skipped).
    pub fn watch_certificate(self: &Arc<Self>, dir: PathBuf, interval: Duration) {
        let node = Arc::downgrade(self);
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.changed() => return,
                }
                let Some(node) = node.upgrade() else { return };
                if let Err(e) = node.reload_certificate(&dir) {
                    tracing::warn!(error = %format!("{e:#}"), "not using the certificate in the TLS directory");
                }
            }
        });
    }
}

/// Refreshes the node's gate from its state whenever its applied index moves (a `RemoveNode`
/// applied anywhere in the log), until the node stops.
pub(crate) async fn refresh_peer_access_loop(
    node: Weak<Node<ChunkStore, PeerClient>>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(mut metrics) = node.upgrade().map(|n| n.raft.raft().metrics()) else {
        return;
    };
    let mut applied = metrics.borrow().last_applied;
    loop {
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
        let now = metrics.borrow_and_update().last_applied;
        if now == applied {
            continue;
        }
        applied = now;
        let Some(node) = node.upgrade() else { return };
        if let Err(e) = node.refresh_peer_access() {
            tracing::warn!(error = %format!("{e:#}"), "could not read the removed nodes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::SystemClock;

    fn identity(node_id: u64, not_before_ms: i64, not_after_ms: i64) -> CertIdentity {
        CertIdentity {
            node_id,
            not_before_ms,
            not_after_ms,
        }
    }

    #[test]
    fn a_removed_node_is_refused_with_a_certificate_from_before_its_removal_only() {
        let access = PeerAccess::new(Arc::new(SystemClock));
        let old = identity(3, 1_000, 100_000);
        let renewed = identity(3, 6_000, 100_000);
        assert_eq!(access.check(&old, 7_000), Ok(3));
        access.set_removed(BTreeMap::from([(3, 5_000)]));
        assert!(access.check(&old, 7_000).unwrap_err().contains("removed"));
        assert_eq!(access.check(&renewed, 7_000), Ok(3));
        assert_eq!(access.check(&identity(2, 1_000, 100_000), 7_000), Ok(2));
        // Issued in the very millisecond of the removal: refused.
        assert!(access.check(&identity(3, 5_000, 100_000), 7_000).is_err());
    }

    use crate::test_node::TestClock;

    fn der_of(pem: &str) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject as _;
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("a certificate in PEM")
    }

    #[test]
    fn a_certificate_is_read_once_and_still_refused_once_its_node_is_removed_or_it_expires() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = crate::tls::ClusterCa::create(dir.path(), "c1").expect("a cluster CA");
        let cert = ca.issue(3).expect("a node certificate");
        let named = cert.identity().expect("its identity");
        let der = der_of(&cert.cert_pem);
        let clock = Arc::new(TestClock((named.not_before_ms + 1_000).into()));
        let access = PeerAccess::new(clock.clone());
        assert_eq!(access.admit_der(&der), Ok(3));
        assert_eq!(access.admit_der(&der), Ok(3));
        assert_eq!(access.identities.len(), 1, "read once");
        // Removed after its certificate was issued: refused from now on, read or not.
        access.set_removed(BTreeMap::from([(3, named.not_before_ms)]));
        assert!(access.admit_der(&der).unwrap_err().contains("removed"));
        access.set_removed(BTreeMap::new());
        assert_eq!(access.admit_der(&der), Ok(3));
        // Its validity period is checked against the clock on every request.
        clock
            .0
            .store(named.not_after_ms + 1, std::sync::atomic::Ordering::SeqCst);
        assert!(access.admit_der(&der).unwrap_err().contains("expired"));
        // A client's certificate under the same CA names no node: refused, and not kept.
        let client = ca.issue_client("alice", 30).expect("a client certificate");
        for _ in 0..2 {
            assert!(access
                .admit_der(&der_of(&client.cert_pem))
                .unwrap_err()
                .contains("is not quiver-node-"));
        }
        assert_eq!(access.identities.len(), 1);
    }

    #[test]
    fn the_certificates_read_stay_bounded() {
        let identities = CertIdentities::default();
        for n in 0..crate::tls::CERT_IDENTITIES_KEPT_MAX * 2 {
            let der = n.to_be_bytes();
            assert_eq!(identities.read(&der, |_| Ok(n)), Ok(n));
            // Kept: not read again.
            assert_eq!(identities.read(&der, |_| Err("read twice".into())), Ok(n));
        }
        assert_eq!(identities.len(), crate::tls::CERT_IDENTITIES_KEPT_MAX);
    }

    #[test]
    fn a_certificate_outside_its_validity_period_is_refused() {
        let access = PeerAccess::new(Arc::new(SystemClock));
        let cert = identity(1, 1_000, 2_000);
        assert!(access
            .check(&cert, 999)
            .unwrap_err()
            .contains("not valid yet"));
        assert_eq!(access.check(&cert, 1_000), Ok(1));
        assert_eq!(access.check(&cert, 2_000), Ok(1));
        assert!(access.check(&cert, 2_001).unwrap_err().contains("expired"));
    }
}
