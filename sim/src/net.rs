//! The simulated network between Raft nodes.
//!
//! [`LinkModel`] is the pure part: per directed link a base latency (drawn once from the seed,
//! from [`LINK_LATENCY_US`] between nodes of one region and [`CROSS_REGION_LATENCY_US`] between
//! regions) plus jitter, the active cuts (partitions, one-way included), lossy spells,
//! duplicating spells and reordering spells; for one message it answers "delivered after d",
//! "delivered after d and once more after d2" or "dropped". [`Router`] holds the model, its
//! seeded RNG and the handle of every running node. [`SimTransport`] is the `PeerTransport` each
//! node is started with — the same seam production's gRPC transport implements, so openraft's
//! RPCs, forwarding to the leader, read index and membership changes all cross this network: a
//! request travels `from → to` (maybe dropped), is handed to the target's
//! `RaftNode::handle_peer` (a crashed node refuses the connection: `Unreachable`), and its reply
//! travels back `to → from` (maybe dropped, so a request can take effect while its sender sees a
//! timeout). A dropped message costs the sender the call's whole time budget, as a lost packet
//! would.
//!
//! Duplication and reordering: a duplicated request reaches the target twice (the second copy
//! [`DUPLICATE_DELAY_MS`] later; its reply goes nowhere), and a reordered message is held back
//! by [`REORDER_DELAY_MS`], so messages sent after it overtake it. A request that arrives after
//! its sender gave up is still delivered (late), as a delayed packet would be.
//!
//! Everything runs on the simulator's one thread under virtual time; the latencies are tokio
//! sleeps, so a run's timing is exactly reproducible.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quiver_node::state::RegistryApp;
use quiver_raft::{Body, CallError, Method, PeerCall, PeerTransport, RaftNode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::schedule::NodeId;
use crate::trace::SharedTrace;

/// Base one-way latency of a link between two nodes of one region, drawn once per directed link.
pub const LINK_LATENCY_US: (u64, u64) = (500, 8_000);
/// Base one-way latency of a link between two regions, drawn once per directed link.
pub const CROSS_REGION_LATENCY_US: (u64, u64) = (20_000, 60_000);
/// How much later the second copy of a duplicated message arrives.
pub const DUPLICATE_DELAY_MS: (u64, u64) = (1, 100);
/// How long a reordered message is held back beyond its latency.
pub const REORDER_DELAY_MS: (u64, u64) = (5, 200);
/// Each message's latency is the link's base ± this percentage.
pub const LINK_JITTER_PCT: u64 = 30;

/// What happens to one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    Deliver(Duration),
    /// Delivered after the first duration, and a copy after the second.
    Duplicate(Duration, Duration),
    Drop,
}

/// Directed links a spell applies to, and its probability in percent.
type Spell = (BTreeSet<(NodeId, NodeId)>, u8);

/// Latencies, cuts and lossy, duplicating and reordering spells (see the module docs). Pure: the
/// caller supplies the RNG.
#[derive(Clone, Debug, Default)]
pub struct LinkModel {
    base_us: BTreeMap<(NodeId, NodeId), u64>,
    cuts: BTreeMap<u32, BTreeSet<(NodeId, NodeId)>>,
    lossy: BTreeMap<u32, Spell>,
    duplicating: BTreeMap<u32, Spell>,
    reordering: BTreeMap<u32, Spell>,
}

/// The region of each of `ids` when they are spread over `regions` regions round-robin: node 1
/// in region 0, node 2 in region 1, ...
pub fn regions_of(ids: &[NodeId], regions: usize) -> BTreeMap<NodeId, usize> {
    let regions = regions.max(1);
    ids.iter()
        .enumerate()
        .map(|(i, &id)| (id, i % regions))
        .collect()
}

impl LinkModel {
    /// Draw a base latency for every directed link among `ids`, all in one region.
    pub fn new(ids: &[NodeId], rng: &mut impl Rng) -> Self {
        Self::with_regions(&regions_of(ids, 1), rng)
    }

    /// Draw a base latency for every directed link among the nodes of `regions` (node → region):
    /// [`LINK_LATENCY_US`] inside a region, [`CROSS_REGION_LATENCY_US`] across.
    pub fn with_regions(regions: &BTreeMap<NodeId, usize>, rng: &mut impl Rng) -> Self {
        let mut base_us = BTreeMap::new();
        for (&a, ra) in regions {
            for (&b, rb) in regions {
                if a != b {
                    let (lo, hi) = if ra == rb {
                        LINK_LATENCY_US
                    } else {
                        CROSS_REGION_LATENCY_US
                    };
                    base_us.insert((a, b), rng.gen_range(lo..=hi));
                }
            }
        }
        LinkModel {
            base_us,
            ..Default::default()
        }
    }

    pub fn duplicating(&mut self, id: u32, links: BTreeSet<(NodeId, NodeId)>, dup_pct: u8) {
        self.duplicating.insert(id, (links, dup_pct.min(100)));
    }

    pub fn reordering(&mut self, id: u32, links: BTreeSet<(NodeId, NodeId)>, reorder_pct: u8) {
        self.reordering.insert(id, (links, reorder_pct.min(100)));
    }

    pub fn cut(&mut self, id: u32, links: BTreeSet<(NodeId, NodeId)>) {
        self.cuts.insert(id, links);
    }

    pub fn lossy(&mut self, id: u32, links: BTreeSet<(NodeId, NodeId)>, loss_pct: u8) {
        self.lossy.insert(id, (links, loss_pct.min(100)));
    }

    /// End cut or spell `id`; false if there was none.
    pub fn heal(&mut self, id: u32) -> bool {
        self.cuts.remove(&id).is_some()
            | self.lossy.remove(&id).is_some()
            | self.duplicating.remove(&id).is_some()
            | self.reordering.remove(&id).is_some()
    }

    pub fn heal_all(&mut self) {
        self.cuts.clear();
        self.lossy.clear();
        self.duplicating.clear();
        self.reordering.clear();
    }

    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cuts.values().any(|links| links.contains(&(from, to)))
    }

    /// Loss probability of a link in percent: the worst active spell on it.
    pub fn loss_pct(&self, from: NodeId, to: NodeId) -> u8 {
        worst(&self.lossy, from, to)
    }

    /// The fate of one message `from → to`. Draws from `rng` only when the outcome is not
    /// already decided, in a fixed order (loss, jitter, then reordering and duplication only on
    /// links with such a spell, so a run without them draws exactly as before they existed).
    pub fn hop(&self, from: NodeId, to: NodeId, rng: &mut impl Rng) -> Hop {
        if from == to {
            return Hop::Deliver(Duration::ZERO);
        }
        if self.is_cut(from, to) {
            return Hop::Drop;
        }
        let loss = self.loss_pct(from, to);
        if loss > 0 && rng.gen_range(0..100u8) < loss {
            return Hop::Drop;
        }
        let base = self
            .base_us
            .get(&(from, to))
            .copied()
            .unwrap_or(LINK_LATENCY_US.1);
        let spread = base * LINK_JITTER_PCT / 100;
        let us = rng.gen_range(base - spread..=base + spread);
        let mut first = Duration::from_micros(us);
        let reorder = worst(&self.reordering, from, to);
        if reorder > 0 && rng.gen_range(0..100u8) < reorder {
            first += Duration::from_millis(rng.gen_range(REORDER_DELAY_MS.0..=REORDER_DELAY_MS.1));
        }
        let dup = worst(&self.duplicating, from, to);
        if dup > 0 && rng.gen_range(0..100u8) < dup {
            let later =
                Duration::from_millis(rng.gen_range(DUPLICATE_DELAY_MS.0..=DUPLICATE_DELAY_MS.1));
            return Hop::Duplicate(first, first + later);
        }
        Hop::Deliver(first)
    }
}

/// The highest probability among the spells active on `from → to` (0 if none).
fn worst(spells: &BTreeMap<u32, Spell>, from: NodeId, to: NodeId) -> u8 {
    spells
        .values()
        .filter(|(links, _)| links.contains(&(from, to)))
        .map(|(_, pct)| *pct)
        .max()
        .unwrap_or(0)
}

struct RouterState {
    links: LinkModel,
    rng: StdRng,
    /// Running nodes: incarnation and handle.
    nodes: BTreeMap<NodeId, (u64, RaftNode<RegistryApp>)>,
    /// Last incarnation handed out per node.
    incarnations: BTreeMap<NodeId, u64>,
}

/// The shared network: the link model, its RNG, and the running nodes' handles.
pub struct Router {
    state: Mutex<RouterState>,
    trace: SharedTrace,
    /// Trace every RPC (a few hundred per simulated second), not only faults.
    trace_rpcs: bool,
}

impl Router {
    /// A network among `ids` spread over `regions` regions ([`regions_of`]).
    pub fn new(
        ids: &[NodeId],
        regions: usize,
        seed: u64,
        trace: SharedTrace,
        trace_rpcs: bool,
    ) -> Arc<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let links = LinkModel::with_regions(&regions_of(ids, regions), &mut rng);
        Arc::new(Router {
            state: Mutex::new(RouterState {
                links,
                rng,
                nodes: BTreeMap::new(),
                incarnations: BTreeMap::new(),
            }),
            trace,
            trace_rpcs,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new incarnation of node `id` is about to start: its transport is [`SimTransport`] with
    /// this number. Messages sent by earlier incarnations (tasks of a crashed node that have
    /// not noticed yet) are dropped.
    pub fn next_incarnation(&self, id: NodeId) -> u64 {
        let mut state = self.lock();
        let n = state.incarnations.entry(id).or_insert(0);
        *n += 1;
        *n
    }

    /// Incarnation `incarnation` of node `id` is up: messages to it are delivered to `node`.
    pub fn attach(&self, id: NodeId, incarnation: u64, node: RaftNode<RegistryApp>) {
        self.lock().nodes.insert(id, (incarnation, node));
    }

    /// Node `id` is down: connections to it are refused, and what it still sends is lost.
    pub fn detach(&self, id: NodeId) {
        self.lock().nodes.remove(&id);
    }

    fn is_current(&self, id: NodeId, incarnation: u64) -> bool {
        self.lock()
            .nodes
            .get(&id)
            .is_some_and(|(i, _)| *i == incarnation)
    }

    pub fn with_links<T>(&self, f: impl FnOnce(&mut LinkModel) -> T) -> T {
        f(&mut self.lock().links)
    }

    /// Draw the fate of a message (from the network's own RNG).
    pub fn hop(&self, from: NodeId, to: NodeId) -> Hop {
        let mut state = self.lock();
        let RouterState { links, rng, .. } = &mut *state;
        links.hop(from, to, rng)
    }

    /// A latency draw for a hop that is never dropped (client ↔ node).
    pub fn client_latency(&self) -> Duration {
        let us = self
            .lock()
            .rng
            .gen_range(LINK_LATENCY_US.0..=LINK_LATENCY_US.1);
        Duration::from_micros(us)
    }

    fn target(&self, id: NodeId) -> Option<RaftNode<RegistryApp>> {
        self.lock().nodes.get(&id).map(|(_, node)| node.clone())
    }

    fn note(&self, event: impl FnOnce() -> String) {
        if self.trace_rpcs {
            self.trace.record(event());
        }
    }
}

/// The peer address of simulated node `id` (what its membership entry names): `10.1.x.y:7000`
/// with `x.y` the id in base 256.
pub fn peer_addr(id: NodeId) -> String {
    format!("10.1.{}.{}:7000", (id >> 8) & 0xff, id & 0xff)
}

/// The node a peer address names ([`peer_addr`]'s inverse).
fn node_of(addr: &str) -> Option<NodeId> {
    match addr.parse::<std::net::SocketAddr>().ok()?.ip() {
        std::net::IpAddr::V4(ip) if ip.octets()[..2] == [10, 1] => {
            let [_, _, hi, lo] = ip.octets();
            Some(u64::from(hi) << 8 | u64::from(lo))
        }
        _ => None,
    }
}

/// The [`PeerTransport`] node `from` is started with: every peer request it sends (openraft's
/// RPCs, forwarding, read index, membership) travels `from → to` (maybe dropped), is handed to
/// the target's [`RaftNode::handle_peer`] (a crashed node refuses the connection:
/// `Unreachable`), and its reply travels back `to → from` (maybe dropped, so a request can take
/// effect while its sender sees a timeout). A dropped message costs the sender the call's whole
/// time budget, as a lost packet would.
#[derive(Clone)]
pub struct SimTransport {
    pub from: NodeId,
    /// From [`Router::next_incarnation`].
    pub incarnation: u64,
    pub router: Arc<Router>,
}

impl PeerTransport for SimTransport {
    fn unary<'a>(
        &'a self,
        addr: &'a str,
        method: Method,
        body: Body,
        timeout: Duration,
    ) -> PeerCall<'a> {
        Box::pin(async move {
            let from = self.from;
            let Some(to) = node_of(addr) else {
                return Err(CallError::Unreachable(format!(
                    "{method:?} to {addr}: no such simulated node"
                )));
            };
            let outcome = self.carry(to, method, body, Instant::now() + timeout).await;
            let what = match &outcome {
                Ok(_) => "ok",
                Err(CallError::Unreachable(_)) => "down",
                Err(CallError::Failed(_)) => "refused",
                Err(CallError::Timeout(_)) => "lost",
            };
            self.router
                .note(|| format!("rpc n{from}->n{to} {method:?} {what}"));
            outcome
        })
    }
}

impl SimTransport {
    /// Carry one request to `to` and its reply back, within `deadline`.
    async fn carry(
        &self,
        to: NodeId,
        method: Method,
        body: Body,
        deadline: Instant,
    ) -> Result<Vec<u8>, CallError> {
        let from = self.from;
        let lost = |what: &'static str| async move {
            tokio::time::sleep_until(deadline).await;
            Err(CallError::Timeout(format!(
                "{method:?} n{from}->n{to}: {what}"
            )))
        };
        if !self.router.is_current(from, self.incarnation) {
            // A crashed node's task still sending: nothing leaves a dead machine. (Waiting out
            // the budget, not failing at once, so a retry loop cannot spin without time passing.)
            return lost("sender-down").await;
        }
        let there = match self.router.hop(from, to) {
            Hop::Drop => return lost("request-lost").await,
            Hop::Deliver(d) => d,
            Hop::Duplicate(d, again) => {
                self.deliver_stray(to, method, body.clone(), again, "dup");
                d
            }
        };
        if Instant::now() + there > deadline {
            // It arrives after the sender gave up: the target still gets it.
            self.deliver_stray(to, method, body, there, "late");
            return lost("timeout").await;
        }
        tokio::time::sleep(there).await;
        let Some(node) = self.router.target(to) else {
            return Err(CallError::Unreachable(format!(
                "{method:?} n{from}->n{to}: connection refused, node is down"
            )));
        };
        let reply = match tokio::time::timeout_at(deadline, node.handle_peer(method, body)).await {
            Err(_) => return lost("timeout").await,
            Ok(Err(refusal)) => Err(CallError::Failed(format!(
                "{method:?} n{from}->n{to}: {refusal}"
            ))),
            Ok(Ok(reply)) => Ok(reply),
        };
        let back = match self.router.hop(to, from) {
            Hop::Drop => return lost("reply-lost").await,
            // The sender takes the first copy of a reply; the second finds nobody waiting.
            Hop::Deliver(d) | Hop::Duplicate(d, _) => d,
        };
        if Instant::now() + back > deadline {
            return lost("timeout").await;
        }
        tokio::time::sleep(back).await;
        reply
    }

    /// A copy of a request that no sender waits for (a duplicate, or one that arrives after its
    /// sender gave up): handed to the target `after` from now if it is up then, its reply
    /// dropped.
    fn deliver_stray(&self, to: NodeId, method: Method, body: Body, after: Duration, what: &str) {
        let router = self.router.clone();
        let from = self.from;
        let what = what.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let Some(node) = router.target(to) else {
                router.note(|| format!("rpc n{from}->n{to} {method:?} {what} down"));
                return;
            };
            let outcome = match node.handle_peer(method, body).await {
                Ok(_) => "ok",
                Err(_) => "refused",
            };
            router.note(|| format!("rpc n{from}->n{to} {method:?} {what} {outcome}"));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> (LinkModel, StdRng) {
        let mut rng = StdRng::seed_from_u64(1);
        (LinkModel::new(&[1, 2, 3], &mut rng), rng)
    }

    #[test]
    fn peer_addresses_name_their_node() {
        for id in [1, 5, 255, 256, 65_535] {
            assert_eq!(node_of(&peer_addr(id)), Some(id), "{}", peer_addr(id));
        }
        assert_eq!(node_of("10.2.0.1:7000"), None);
        assert_eq!(node_of("n1.sim:7000"), None);
    }

    #[test]
    fn latencies_stay_within_the_link_bounds() {
        let (links, mut rng) = model();
        for _ in 0..1_000 {
            match links.hop(1, 2, &mut rng) {
                Hop::Deliver(d) => {
                    let max = LINK_LATENCY_US.1 * (100 + LINK_JITTER_PCT) / 100;
                    let min = LINK_LATENCY_US.0 * (100 - LINK_JITTER_PCT) / 100;
                    assert!((min..=max).contains(&(d.as_micros() as u64)), "{d:?}");
                }
                other => panic!("no fault is active: {other:?}"),
            }
        }
    }

    #[test]
    fn a_one_way_cut_drops_one_direction_until_healed() {
        let (mut links, mut rng) = model();
        links.cut(7, BTreeSet::from([(1, 2)]));
        assert_eq!(links.hop(1, 2, &mut rng), Hop::Drop);
        assert!(matches!(links.hop(2, 1, &mut rng), Hop::Deliver(_)));
        assert!(matches!(links.hop(1, 3, &mut rng), Hop::Deliver(_)));
        assert!(links.heal(7));
        assert!(!links.heal(7), "healed once");
        assert!(matches!(links.hop(1, 2, &mut rng), Hop::Deliver(_)));
    }

    #[test]
    fn overlapping_cuts_all_have_to_heal() {
        let (mut links, mut rng) = model();
        links.cut(1, BTreeSet::from([(1, 2)]));
        links.cut(2, BTreeSet::from([(1, 2), (2, 1)]));
        links.heal(1);
        assert_eq!(links.hop(1, 2, &mut rng), Hop::Drop, "cut 2 still holds");
        links.heal_all();
        assert!(matches!(links.hop(1, 2, &mut rng), Hop::Deliver(_)));
    }

    #[test]
    fn cross_region_links_are_slower_than_links_inside_a_region() {
        let mut rng = StdRng::seed_from_u64(2);
        let ids = [1, 2, 3, 4];
        let regions = regions_of(&ids, 2);
        assert_eq!(regions.values().copied().collect::<Vec<_>>(), [0, 1, 0, 1]);
        let links = LinkModel::with_regions(&regions, &mut rng);
        let one_way = |from, to, rng: &mut StdRng| match links.hop(from, to, rng) {
            Hop::Deliver(d) => d.as_micros() as u64,
            other => panic!("no fault is active: {other:?}"),
        };
        for _ in 0..200 {
            let inside = one_way(1, 3, &mut rng);
            let across = one_way(1, 2, &mut rng);
            assert!(inside <= LINK_LATENCY_US.1 * (100 + LINK_JITTER_PCT) / 100);
            assert!(across >= CROSS_REGION_LATENCY_US.0 * (100 - LINK_JITTER_PCT) / 100);
        }
    }

    #[test]
    fn duplicating_and_reordering_spells_act_on_their_links_until_healed() {
        let (mut links, mut rng) = model();
        links.duplicating(1, BTreeSet::from([(1, 2)]), 100);
        links.reordering(2, BTreeSet::from([(2, 1)]), 100);
        match links.hop(1, 2, &mut rng) {
            Hop::Duplicate(first, second) => {
                let gap = second - first;
                assert!(
                    gap >= Duration::from_millis(DUPLICATE_DELAY_MS.0),
                    "{gap:?}"
                );
                assert!(
                    gap <= Duration::from_millis(DUPLICATE_DELAY_MS.1),
                    "{gap:?}"
                );
            }
            other => panic!("a 100% duplicating link duplicates: {other:?}"),
        }
        match links.hop(2, 1, &mut rng) {
            Hop::Deliver(d) => assert!(d >= Duration::from_millis(REORDER_DELAY_MS.0), "{d:?}"),
            other => panic!("a reordering link delivers once, late: {other:?}"),
        }
        assert!(matches!(links.hop(1, 3, &mut rng), Hop::Deliver(_)));
        assert!(links.heal(1) && links.heal(2));
        assert!(matches!(links.hop(1, 2, &mut rng), Hop::Deliver(_)));
    }

    #[test]
    fn loss_drops_about_its_share_and_the_worst_spell_wins() {
        let (mut links, mut rng) = model();
        links.lossy(1, BTreeSet::from([(1, 2)]), 10);
        links.lossy(2, BTreeSet::from([(1, 2)]), 50);
        assert_eq!(links.loss_pct(1, 2), 50);
        let dropped = (0..2_000)
            .filter(|_| links.hop(1, 2, &mut rng) == Hop::Drop)
            .count();
        assert!((850..1_150).contains(&dropped), "{dropped} of 2000 at 50%");
        assert_eq!(links.loss_pct(2, 1), 0);
    }
}
