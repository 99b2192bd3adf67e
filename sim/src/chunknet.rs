//! The simulated chunk network: what QUIC and the download path are in production.
//!
//! [`ChunkNet`] connects endpoints — cluster nodes and clients (serving replicas) — each with a
//! [`Place`] (region and zone). [`SimPeers`] is one endpoint's handle on it and implements
//! [`ChunkPeers`], so the real replication code (`fetch_all`, `ChunkSink`, `read_chunk`,
//! `repair_version`) runs over it unchanged.
//!
//! **Serving.** A node asked by another node answers from its own store only, as the QUIC chunk
//! server does (`NotFound` when it lacks the chunk, `Corrupt` when its copy fails verification).
//! A node asked by a client answers through the real `read_chunk`, as the download service does:
//! a chunk it lacks, or holds corrupt, is fetched (verified) from the other nodes, nearest first
//! ([`ChunkNet::node_sources`]), stored, and then served. A push is verified and stored by the
//! receiving node's `put` (durable when it returns) before the sender hears `Ok`. Both a fetch
//! (request out, data back) and a push (data out, acknowledgement back) take their transfer
//! time plus one round trip.
//!
//! **Time.** Every step is a tokio sleep under the simulator's paused clock, so a run's timing is
//! exactly reproducible:
//! - Latency (one way, no jitter): [`NetConfig::same_zone_latency`] inside a zone,
//!   [`NetConfig::same_region_latency`] inside a region, and per pair of regions a latency drawn
//!   from the seed in [`NetConfig::cross_region_latency_ms`] (the same in both directions, and
//!   independent of the order in which endpoints are added).
//! - Bandwidth: every endpoint has an egress and an ingress queue, and every ordered pair of
//!   regions a link queue, each with a rate. A transfer of `b` logical bytes reserves each queue
//!   on its path in turn: it starts there when the queue is free (or now) and holds it for
//!   `b / rate`; it arrives when the last of its queues is done, plus the latency. Concurrent
//!   transfers thus share an endpoint's bandwidth first come, first served, at the cost of one
//!   comparison per queue: no per-packet simulation, and no pipelining across queues (a transfer
//!   holds its queues one after the other's reservation, not in lock step). Requests (a chunk
//!   hash) cost latency only. Sizes are logical ([`crate::chunkstore`]'s scale).
//! - Accounting: every transfer's logical bytes are counted as inside a region or across
//!   regions, and as between nodes or to clients ([`NetStats`]), when the transfer is sent.
//!
//! **Faults (hooks).** [`ChunkNet::set_up`]: a down endpoint refuses connections
//! (`FetchError::Connect` after one round trip) and sends nothing; its store is kept.
//! [`ChunkNet::cut`] / [`ChunkNet::heal`]: a cut link (either direction of a request) leaves the
//! request unanswered for [`NetConfig::cut_timeout`], then `FetchError::Connect`, as a QUIC
//! handshake to an unreachable peer would.
//!
//! **Trace.** With [`NetConfig::trace_transfers`], every chunk transfer is one trace event when
//! it arrives (sender, receiver, chunk, logical size), so the trace hash covers the network.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quiver_node::replication::{read_chunk_with, PlantedBugs, ReadThroughs};
use quiver_transfer::{ChunkPeers, ChunkRef, ChunkSource, FetchError, Hash, StoreError};
use tokio::time::Instant;

use crate::chunkstore::{logical_bytes, SimStore};
use crate::schedule::NodeId;
use crate::trace::SharedTrace;

/// 10 Gbit/s in bytes per second.
pub const GBIT_10_BYTES_PER_S: u64 = 1_250_000_000;
/// Default egress and ingress rate of a node.
pub const NODE_BYTES_PER_S: u64 = GBIT_10_BYTES_PER_S;
/// Default egress and ingress rate of a client (a serving replica).
pub const CLIENT_BYTES_PER_S: u64 = GBIT_10_BYTES_PER_S;
/// Default rate of the link from one region to another (each direction): 5 Gbit/s.
pub const CROSS_REGION_LINK_BYTES_PER_S: u64 = 625_000_000;
/// Default one-way latency inside one zone.
pub const SAME_ZONE_LATENCY: Duration = Duration::from_micros(100);
/// Default one-way latency between zones of one region.
pub const SAME_REGION_LATENCY: Duration = Duration::from_micros(600);
/// Default range (ms, inclusive) of the one-way latency between two regions.
pub const CROSS_REGION_LATENCY_MS: (u64, u64) = (30, 90);
/// Default time a request over a cut link waits before failing to connect.
pub const CUT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most endpoints of one network (addresses are 10.x.y.z with 16 bits per kind).
pub const ENDPOINTS_PER_KIND_MAX: u64 = 1 << 16;
/// Port of a node's chunk endpoint.
pub const NODE_PORT: u16 = 7100;
/// Port of a client's endpoint.
pub const CLIENT_PORT: u16 = 7200;

/// Where an endpoint is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    pub region: String,
    pub zone: String,
}

impl Place {
    pub fn new(region: impl Into<String>, zone: impl Into<String>) -> Self {
        Place {
            region: region.into(),
            zone: zone.into(),
        }
    }
}

/// One end of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// A cluster node (serves chunks).
    Node(NodeId),
    /// A client, e.g. a serving replica (only fetches).
    Client(u32),
}

impl Endpoint {
    /// The address the endpoint has in [`ChunkPeers`] calls: nodes 10.0.x.y:7100, clients
    /// 10.1.x.y:7200, with x.y the id.
    pub fn addr(self) -> SocketAddr {
        let (kind, id, port) = match self {
            Endpoint::Node(id) => (0u8, id, NODE_PORT),
            Endpoint::Client(id) => (1u8, id as u64, CLIENT_PORT),
        };
        assert!(
            id < ENDPOINTS_PER_KIND_MAX,
            "endpoint id {id} over {ENDPOINTS_PER_KIND_MAX}"
        );
        let ip = Ipv4Addr::new(10, kind, (id >> 8) as u8, (id & 0xff) as u8);
        SocketAddr::new(IpAddr::V4(ip), port)
    }

    /// The endpoint at `addr`, if it is one of [`Endpoint::addr`]'s.
    pub fn from_addr(addr: SocketAddr) -> Option<Endpoint> {
        let IpAddr::V4(ip) = addr.ip() else {
            return None;
        };
        let [ten, kind, hi, lo] = ip.octets();
        let id = (hi as u64) << 8 | lo as u64;
        match (ten, kind, addr.port()) {
            (10, 0, NODE_PORT) => Some(Endpoint::Node(id)),
            (10, 1, CLIENT_PORT) => Some(Endpoint::Client(id as u32)),
            _ => None,
        }
    }

    pub fn is_node(self) -> bool {
        matches!(self, Endpoint::Node(_))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Node(id) => write!(f, "n{id}"),
            Endpoint::Client(id) => write!(f, "c{id}"),
        }
    }
}

/// Rates, latencies and tracing of a [`ChunkNet`]; `Default` is the constants above.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub node_bytes_per_s: u64,
    pub client_bytes_per_s: u64,
    pub cross_region_link_bytes_per_s: u64,
    pub same_zone_latency: Duration,
    pub same_region_latency: Duration,
    pub cross_region_latency_ms: (u64, u64),
    pub cut_timeout: Duration,
    /// Record every chunk transfer in the trace.
    pub trace_transfers: bool,
    /// Test-only switches of the node code that serves clients (`read_chunk_with`); default:
    /// none (see `Plant::SkipChunkVerify`).
    pub planted: PlantedBugs,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            node_bytes_per_s: NODE_BYTES_PER_S,
            client_bytes_per_s: CLIENT_BYTES_PER_S,
            cross_region_link_bytes_per_s: CROSS_REGION_LINK_BYTES_PER_S,
            same_zone_latency: SAME_ZONE_LATENCY,
            same_region_latency: SAME_REGION_LATENCY,
            cross_region_latency_ms: CROSS_REGION_LATENCY_MS,
            cut_timeout: CUT_TIMEOUT,
            trace_transfers: true,
            planted: PlantedBugs::default(),
        }
    }
}

/// Logical bytes sent inside one region and across regions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    pub intra_region_bytes: u64,
    pub cross_region_bytes: u64,
}

impl Traffic {
    pub fn total_bytes(&self) -> u64 {
        self.intra_region_bytes + self.cross_region_bytes
    }

    fn add(&mut self, cross_region: bool, bytes: u64) {
        if cross_region {
            self.cross_region_bytes += bytes;
        } else {
            self.intra_region_bytes += bytes;
        }
    }

    /// What was sent since `earlier` (a snapshot of the same counters).
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            intra_region_bytes: self.intra_region_bytes - earlier.intra_region_bytes,
            cross_region_bytes: self.cross_region_bytes - earlier.cross_region_bytes,
        }
    }
}

/// What the network carried (logical bytes; see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Node to node: pushes, repair, read-through.
    pub between_nodes: Traffic,
    /// Node to client: downloads.
    pub to_clients: Traffic,
    /// Chunk transfers sent.
    pub transfers: u64,
    /// Requests refused (down endpoint) or lost (cut link).
    pub refused: u64,
    /// Logical bytes of node-to-node transfers whose chunk the receiving node already held when
    /// they arrived (e.g. several concurrent read-throughs of one chunk): traffic a smarter
    /// protocol would not send.
    pub redundant_between_nodes_bytes: u64,
}

impl NetStats {
    /// Both kinds of traffic together.
    pub fn all(&self) -> Traffic {
        Traffic {
            intra_region_bytes: self.between_nodes.intra_region_bytes
                + self.to_clients.intra_region_bytes,
            cross_region_bytes: self.between_nodes.cross_region_bytes
                + self.to_clients.cross_region_bytes,
        }
    }
}

struct EndpointState {
    place: Place,
    up: bool,
    /// Nodes only.
    store: Option<SimStore>,
    /// Nodes only: the read-through fetches in flight, shared by the node's clients as on a
    /// real node (`Node::read_throughs`).
    read_throughs: ReadThroughs,
    egress_free: Instant,
    ingress_free: Instant,
}

struct NetState {
    endpoints: BTreeMap<Endpoint, EndpointState>,
    /// When the link from one region to another is next free.
    links_free: BTreeMap<(String, String), Instant>,
    /// Directed (from, to) pairs whose requests go unanswered.
    cuts: BTreeSet<(Endpoint, Endpoint)>,
    stats: NetStats,
}

/// Why a request cannot be carried.
enum Route {
    Open { latency: Duration },
    Refused,
    Cut,
}

/// The simulated chunk network (see the module docs). Shared by every endpoint's [`SimPeers`].
pub struct ChunkNet {
    cfg: NetConfig,
    seed: u64,
    trace: SharedTrace,
    state: Mutex<NetState>,
}

impl ChunkNet {
    pub fn new(cfg: NetConfig, seed: u64, trace: SharedTrace) -> Arc<ChunkNet> {
        for (name, rate) in [
            ("node_bytes_per_s", cfg.node_bytes_per_s),
            ("client_bytes_per_s", cfg.client_bytes_per_s),
            (
                "cross_region_link_bytes_per_s",
                cfg.cross_region_link_bytes_per_s,
            ),
        ] {
            assert!(rate > 0, "NetConfig::{name} is 0: give a positive rate");
        }
        let (lo, hi) = cfg.cross_region_latency_ms;
        assert!(
            lo <= hi,
            "NetConfig::cross_region_latency_ms ({lo}, {hi}): put the smaller first"
        );
        Arc::new(ChunkNet {
            cfg,
            seed,
            trace,
            state: Mutex::new(NetState {
                endpoints: BTreeMap::new(),
                links_free: BTreeMap::new(),
                cuts: BTreeSet::new(),
                stats: NetStats::default(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        // Never held across an await; every update is complete before the guard drops.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// Adds node `id` at `place`, serving from `store`; returns its address. Adding it again
    /// replaces its place and store.
    pub fn add_node(&self, id: NodeId, place: Place, store: SimStore) -> SocketAddr {
        self.add(Endpoint::Node(id), place, Some(store))
    }

    /// Adds client `id` at `place`; returns its address.
    pub fn add_client(&self, id: u32, place: Place) -> SocketAddr {
        self.add(Endpoint::Client(id), place, None)
    }

    fn add(&self, endpoint: Endpoint, place: Place, store: Option<SimStore>) -> SocketAddr {
        let addr = endpoint.addr();
        let now = Instant::now();
        self.lock().endpoints.insert(
            endpoint,
            EndpointState {
                place,
                up: true,
                store,
                read_throughs: ReadThroughs::default(),
                egress_free: now,
                ingress_free: now,
            },
        );
        addr
    }

    /// The handle through which `me` reaches the others (its [`ChunkPeers`]).
    pub fn peers(self: &Arc<Self>, me: Endpoint) -> SimPeers {
        SimPeers {
            net: self.clone(),
            me,
        }
    }

    /// Fault hook: endpoint `e` goes down (refuses, sends nothing) or comes back up.
    pub fn set_up(&self, e: Endpoint, up: bool) {
        if let Some(state) = self.lock().endpoints.get_mut(&e) {
            state.up = up;
            if !up {
                // A node that goes down forgets its fetches in flight, as a stopped process
                // would; fetches already joined finish (or fail) for their waiters.
                state.read_throughs = ReadThroughs::default();
            }
        }
        self.trace
            .record(format!("chunknet {e} {}", if up { "up" } else { "down" }));
    }

    /// Fault hook: requests from `from` to `to` go unanswered (one direction).
    pub fn cut(&self, from: Endpoint, to: Endpoint) {
        self.lock().cuts.insert((from, to));
        self.trace.record(format!("chunknet cut {from}->{to}"));
    }

    /// Ends the cut `from → to`; false if there was none.
    pub fn heal(&self, from: Endpoint, to: Endpoint) -> bool {
        let healed = self.lock().cuts.remove(&(from, to));
        if healed {
            self.trace.record(format!("chunknet heal {from}->{to}"));
        }
        healed
    }

    pub fn heal_all(&self) {
        self.lock().cuts.clear();
        self.trace.record("chunknet heal all");
    }

    pub fn stats(&self) -> NetStats {
        self.lock().stats
    }

    pub fn place(&self, e: Endpoint) -> Option<Place> {
        self.lock().endpoints.get(&e).map(|s| s.place.clone())
    }

    /// Node `id`'s store.
    pub fn store(&self, id: NodeId) -> Option<SimStore> {
        self.lock()
            .endpoints
            .get(&Endpoint::Node(id))
            .and_then(|s| s.store.clone())
    }

    /// Node `id`'s read-throughs in flight (empty for an unknown node).
    fn read_throughs(&self, id: NodeId) -> ReadThroughs {
        self.lock()
            .endpoints
            .get(&Endpoint::Node(id))
            .map(|s| s.read_throughs.clone())
            .unwrap_or_default()
    }

    /// The nodes, in id order.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.lock()
            .endpoints
            .keys()
            .filter_map(|e| match e {
                Endpoint::Node(id) => Some(*id),
                Endpoint::Client(_) => None,
            })
            .collect()
    }

    /// One-way latency between two places.
    pub fn latency(&self, a: &Place, b: &Place) -> Duration {
        if a.region != b.region {
            let (lo, hi) = self.cfg.cross_region_latency_ms;
            let (x, y) = if a.region <= b.region {
                (&a.region, &b.region)
            } else {
                (&b.region, &a.region)
            };
            let mut h = blake3::Hasher::new();
            h.update(b"quiver-sim region latency\0");
            h.update(&self.seed.to_le_bytes());
            h.update(x.as_bytes());
            h.update(b"\0");
            h.update(y.as_bytes());
            let mut first = [0u8; 8];
            first.copy_from_slice(&h.finalize().as_bytes()[..8]);
            let ms = lo + u64::from_le_bytes(first) % (hi - lo + 1);
            Duration::from_millis(ms)
        } else if a.zone != b.zone {
            self.cfg.same_region_latency
        } else {
            self.cfg.same_zone_latency
        }
    }

    /// Round-trip time between two endpoints without queueing (what a client's probe
    /// measures), or `None` if either is unknown, down, or the path is cut.
    pub fn rtt(&self, a: Endpoint, b: Endpoint) -> Option<Duration> {
        match self.route(a, b) {
            Route::Open { latency } => Some(latency * 2),
            Route::Refused | Route::Cut => None,
        }
    }

    /// The other nodes, nearest to node `id` first: same zone, then same region, then by
    /// latency, then by id. What a node reads through from and repairs from (production: the
    /// members' chunk addresses, nearest first).
    pub fn node_sources(&self, id: NodeId) -> Vec<SocketAddr> {
        let state = self.lock();
        let Some(me) = state.endpoints.get(&Endpoint::Node(id)) else {
            return Vec::new();
        };
        let mut others: Vec<(u8, Duration, NodeId)> = state
            .endpoints
            .iter()
            .filter_map(|(e, s)| match e {
                Endpoint::Node(other) if *other != id => {
                    let tier = match (
                        s.place.region == me.place.region,
                        s.place.zone == me.place.zone,
                    ) {
                        (true, true) => 0,
                        (true, false) => 1,
                        _ => 2,
                    };
                    Some((tier, self.latency(&me.place, &s.place), *other))
                }
                _ => None,
            })
            .collect();
        others.sort();
        others
            .into_iter()
            .map(|(_, _, other)| Endpoint::Node(other).addr())
            .collect()
    }

    fn route(&self, from: Endpoint, to: Endpoint) -> Route {
        let state = self.lock();
        let (Some(a), Some(b)) = (state.endpoints.get(&from), state.endpoints.get(&to)) else {
            return Route::Refused;
        };
        if !a.up || !b.up {
            return Route::Refused;
        }
        if state.cuts.contains(&(from, to)) || state.cuts.contains(&(to, from)) {
            return Route::Cut;
        }
        Route::Open {
            latency: self.latency(&a.place, &b.place),
        }
    }

    /// Reserves the path `from → to` for `bytes` logical bytes (see the module docs) and counts
    /// them; returns when the last byte arrives.
    fn reserve(&self, from: Endpoint, to: Endpoint, bytes: u64) -> Instant {
        let now = Instant::now();
        let cfg = &self.cfg;
        let rate = |e: Endpoint| match e {
            Endpoint::Node(_) => cfg.node_bytes_per_s,
            Endpoint::Client(_) => cfg.client_bytes_per_s,
        };
        let hold = |rate: u64| Duration::from_nanos(bytes.saturating_mul(1_000_000_000) / rate);
        let mut state = self.lock();
        let (from_place, to_place) = match (state.endpoints.get(&from), state.endpoints.get(&to)) {
            (Some(a), Some(b)) => (a.place.clone(), b.place.clone()),
            _ => return now,
        };
        let latency = self.latency(&from_place, &to_place);
        let mut done = now;
        if let Some(a) = state.endpoints.get_mut(&from) {
            a.egress_free = a.egress_free.max(now) + hold(rate(from));
            done = done.max(a.egress_free);
        }
        if let Some(b) = state.endpoints.get_mut(&to) {
            b.ingress_free = b.ingress_free.max(now) + hold(rate(to));
            done = done.max(b.ingress_free);
        }
        let cross_region = from_place.region != to_place.region;
        if cross_region {
            let link = state
                .links_free
                .entry((from_place.region.clone(), to_place.region.clone()))
                .or_insert(now);
            *link = (*link).max(now) + hold(cfg.cross_region_link_bytes_per_s);
            done = done.max(*link);
        }
        let traffic = if to.is_node() {
            &mut state.stats.between_nodes
        } else {
            &mut state.stats.to_clients
        };
        traffic.add(cross_region, bytes);
        state.stats.transfers += 1;
        done + latency
    }

    fn refuse(&self, from: Endpoint, to: Endpoint, hash: &Hash, why: &str) -> FetchError {
        self.lock().stats.refused += 1;
        self.trace
            .record(format!("chunknet {from}->{to} {} {why}", hash.short()));
        FetchError::Connect {
            peer: to.addr(),
            detail: format!("simulated network: {why}"),
        }
    }

    /// Waits out a request that cannot be carried and returns the error the sender sees; `None`
    /// when the route is open, after the request's one-way latency if `carry_latency` (a fetch
    /// request; a push's data leaves at once and its latency is charged on arrival).
    async fn send_request(
        &self,
        from: Endpoint,
        to: Endpoint,
        hash: &Hash,
        carry_latency: bool,
    ) -> Option<FetchError> {
        match self.route(from, to) {
            Route::Open { latency } => {
                if carry_latency {
                    tokio::time::sleep(latency).await;
                }
                None
            }
            Route::Refused => {
                let rtt = self
                    .place(from)
                    .zip(self.place(to))
                    .map(|(a, b)| self.latency(&a, &b) * 2)
                    .unwrap_or_default();
                tokio::time::sleep(rtt).await;
                Some(self.refuse(
                    from,
                    to,
                    hash,
                    "connection refused (endpoint down or unknown)",
                ))
            }
            Route::Cut => {
                tokio::time::sleep(self.cfg.cut_timeout).await;
                Some(self.refuse(from, to, hash, "no answer (link cut)"))
            }
        }
    }

    fn is_up(&self, e: Endpoint) -> bool {
        self.lock().endpoints.get(&e).is_some_and(|s| s.up)
    }

    /// A chunk transfer arrived: trace it, and count it as redundant if the receiving node
    /// already holds the chunk.
    fn arrived(&self, from: Endpoint, to: Endpoint, what: &str, hash: &Hash, real: usize) {
        if let Endpoint::Node(id) = to {
            if self.store(id).is_some_and(|s| s.contains(hash)) {
                self.lock().stats.redundant_between_nodes_bytes += logical_bytes(real);
            }
        }
        if self.cfg.trace_transfers {
            self.trace.record(format!(
                "chunknet {what} {from}->{to} {} {} B",
                hash.short(),
                logical_bytes(real)
            ));
        }
    }
}

/// One endpoint's way to reach the others: the simulator's [`ChunkPeers`].
#[derive(Clone)]
pub struct SimPeers {
    net: Arc<ChunkNet>,
    me: Endpoint,
}

type BoxedResult<T> = Pin<Box<dyn Future<Output = Result<T, FetchError>> + Send>>;

impl SimPeers {
    /// What node `server` answers for `chunk` when `self.me` asks (see the module docs).
    async fn serve(&self, server: NodeId, chunk: &ChunkRef) -> Result<Vec<u8>, FetchError> {
        let peer = Endpoint::Node(server).addr();
        let Some(store) = self.net.store(server) else {
            return Err(FetchError::Protocol {
                peer,
                detail: format!("n{server} has no chunk store in the simulated network"),
            });
        };
        let answer = if self.me.is_node() {
            store.get(&chunk.hash)
        } else {
            let sources = self.net.node_sources(server);
            let server_peers = self.net.peers(Endpoint::Node(server));
            let read_throughs = self.net.read_throughs(server);
            read_chunk_with(
                &store,
                &server_peers,
                &sources,
                chunk,
                &read_throughs,
                self.net.cfg.planted,
            )
            .await
        };
        answer.map_err(|e| match e {
            StoreError::NotFound { hash } => FetchError::NotFound { peer, hash },
            StoreError::Corrupt { hash } => FetchError::Corrupt { peer, hash },
            other => FetchError::Protocol {
                peer,
                detail: format!("n{server} could not read chunk {}: {other}", chunk.hash),
            },
        })
    }
}

impl ChunkPeers for SimPeers {
    fn fetch_raw(
        &self,
        peer: SocketAddr,
        chunk: &ChunkRef,
    ) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send {
        let this = self.clone();
        let chunk = chunk.clone();
        // Boxed: serving a client runs `read_chunk`, which fetches through `SimPeers` again.
        let fut: BoxedResult<Vec<u8>> = Box::pin(async move {
            let net = this.net.clone();
            let me = this.me;
            let server = match Endpoint::from_addr(peer) {
                Some(Endpoint::Node(id)) => id,
                _ => {
                    return Err(FetchError::Connect {
                        peer,
                        detail: "simulated network: no chunk server at this address".into(),
                    })
                }
            };
            let to = Endpoint::Node(server);
            if let Some(e) = net.send_request(me, to, &chunk.hash, true).await {
                return Err(e);
            }
            let data = this.serve(server, &chunk).await?;
            if !net.is_up(to) || !net.is_up(me) {
                return Err(net.refuse(me, to, &chunk.hash, "connection lost mid-request"));
            }
            let arrives = net.reserve(to, me, logical_bytes(data.len()));
            tokio::time::sleep_until(arrives).await;
            net.arrived(to, me, "fetch", &chunk.hash, data.len());
            Ok(data)
        });
        fut
    }

    fn push(
        &self,
        peer: SocketAddr,
        hash: &Hash,
        data: &[u8],
    ) -> impl Future<Output = Result<(), FetchError>> + Send {
        let this = self.clone();
        let hash = *hash;
        let data = data.to_vec();
        let fut: BoxedResult<()> = Box::pin(async move {
            let net = this.net.clone();
            let me = this.me;
            let (to, store) = match Endpoint::from_addr(peer) {
                Some(Endpoint::Node(id)) => (Endpoint::Node(id), net.store(id)),
                _ => (Endpoint::Client(u32::MAX), None),
            };
            let Some(store) = store else {
                return Err(FetchError::Connect {
                    peer,
                    detail: "simulated network: no chunk server at this address".into(),
                });
            };
            if let Some(e) = net.send_request(me, to, &hash, false).await {
                return Err(e);
            }
            let arrives = net.reserve(me, to, logical_bytes(data.len()));
            tokio::time::sleep_until(arrives).await;
            if !net.is_up(to) {
                return Err(net.refuse(me, to, &hash, "connection lost mid-push"));
            }
            net.arrived(me, to, "push", &hash, data.len());
            match store.put(&hash, &data) {
                Ok(_) => {}
                Err(StoreError::HashMismatch { .. }) => {
                    return Err(FetchError::Corrupt { peer, hash });
                }
                Err(e) => {
                    return Err(FetchError::Protocol {
                        peer,
                        detail: format!("{to} could not store chunk {hash}: {e}"),
                    })
                }
            }
            // The acknowledgement travels back.
            if let Some(latency) = net.rtt(me, to) {
                tokio::time::sleep(latency / 2).await;
            }
            Ok(())
        });
        fut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkstore::{Corpus, LOGICAL_BYTES_PER_BYTE};
    use quiver_transfer::{fetch_all, FetchOptions};

    fn net() -> (Arc<ChunkNet>, Arc<Corpus>) {
        let net = ChunkNet::new(NetConfig::default(), 1, SharedTrace::new(false));
        let corpus = Arc::new(Corpus::synthesize(1, 40 * 1024 * 1024).unwrap());
        (net, corpus)
    }

    /// Client `client` fetches every chunk of `corpus` from node `node` into a fresh store.
    async fn pull(net: &Arc<ChunkNet>, client: u32, node: u64, corpus: &Corpus) -> SimStore {
        let mine = SimStore::new(None);
        fetch_all(
            &net.peers(Endpoint::Client(client)),
            &mine,
            corpus.chunks(),
            &[Endpoint::Node(node).addr()],
            FetchOptions::default(),
        )
        .await
        .unwrap();
        mine
    }

    fn fill(store: &SimStore, corpus: &Corpus) {
        for c in corpus.chunks() {
            store.put(&c.hash, &corpus.bytes(&c.hash).unwrap()).unwrap();
        }
    }

    #[test]
    fn addresses_round_trip() {
        for e in [
            Endpoint::Node(1),
            Endpoint::Node(300),
            Endpoint::Client(0),
            Endpoint::Client(65_535),
        ] {
            assert_eq!(Endpoint::from_addr(e.addr()), Some(e));
        }
        assert_eq!(Endpoint::from_addr("10.2.0.1:7100".parse().unwrap()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_tiers_and_sources_are_ordered() {
        let (net, _) = net();
        net.add_node(1, Place::new("eu", "a"), SimStore::new(None));
        net.add_node(2, Place::new("us", "a"), SimStore::new(None));
        net.add_node(3, Place::new("eu", "b"), SimStore::new(None));
        net.add_node(4, Place::new("eu", "a"), SimStore::new(None));
        let eu_a = Place::new("eu", "a");
        assert!(net.latency(&eu_a, &eu_a) < net.latency(&eu_a, &Place::new("eu", "b")));
        assert!(
            net.latency(&eu_a, &Place::new("eu", "b")) < net.latency(&eu_a, &Place::new("us", "a"))
        );
        assert_eq!(
            net.latency(&Place::new("us", "x"), &eu_a),
            net.latency(&eu_a, &Place::new("us", "y"))
        );
        let order: Vec<_> = net
            .node_sources(1)
            .into_iter()
            .map(|a| Endpoint::from_addr(a).unwrap())
            .collect();
        assert_eq!(
            order,
            vec![Endpoint::Node(4), Endpoint::Node(3), Endpoint::Node(2)]
        );
    }

    /// Two clients pull the same 40 MiB (logical) from one node at once: they share its 10
    /// Gbit/s egress, so the pair takes twice as long as one alone, and every byte is counted.
    #[tokio::test(start_paused = true)]
    async fn concurrent_transfers_share_bandwidth() {
        let (net, corpus) = net();
        let store = SimStore::new(None);
        fill(&store, &corpus);
        net.add_node(1, Place::new("eu", "a"), store);
        let alone = {
            net.add_client(1, Place::new("eu", "a"));
            let t = Instant::now();
            let mine = pull(&net, 1, 1, &corpus).await;
            assert!(mine.holds_intact(corpus.chunks()));
            t.elapsed()
        };
        let logical = corpus.real_bytes() * LOGICAL_BYTES_PER_BYTE;
        let wire = Duration::from_nanos(logical * 1_000_000_000 / NODE_BYTES_PER_S);
        assert!(alone >= wire, "{alone:?} < {wire:?}");
        net.add_client(2, Place::new("eu", "a"));
        net.add_client(3, Place::new("eu", "a"));
        let t = Instant::now();
        tokio::join!(pull(&net, 2, 1, &corpus), pull(&net, 3, 1, &corpus));
        let both = t.elapsed();
        assert!(both >= wire * 2, "{both:?} < 2 x {wire:?}");
        assert!(both < alone * 3, "{both:?} vs alone {alone:?}");
        let stats = net.stats();
        assert_eq!(stats.to_clients.intra_region_bytes, 3 * logical);
        assert_eq!(stats.to_clients.cross_region_bytes, 0);
    }

    /// A client asks a node that lacks the chunks: the node reads through from its peer (one
    /// cross-region copy per chunk), stores them, and serves; a down node refuses.
    #[tokio::test(start_paused = true)]
    async fn nodes_read_through_for_clients_and_down_nodes_refuse() {
        let (net, corpus) = net();
        let origin = SimStore::new(None);
        fill(&origin, &corpus);
        net.add_node(1, Place::new("eu", "a"), origin);
        let empty = SimStore::new(None);
        net.add_node(2, Place::new("us", "a"), empty.clone());
        net.add_client(1, Place::new("us", "a"));
        let mine = pull(&net, 1, 2, &corpus).await;
        assert!(mine.holds_intact(corpus.chunks()));
        assert!(
            empty.holds_intact(corpus.chunks()),
            "node 2 kept what it read through"
        );
        let stats = net.stats();
        let logical = corpus.real_bytes() * LOGICAL_BYTES_PER_BYTE;
        assert_eq!(stats.between_nodes.cross_region_bytes, logical);
        assert_eq!(stats.to_clients.intra_region_bytes, logical);

        // A node asking a node gets no read-through: NotFound.
        let n2 = net.peers(Endpoint::Node(2));
        net.add_node(3, Place::new("us", "b"), SimStore::new(None));
        let chunk = &corpus.chunks()[0];
        assert!(matches!(
            n2.fetch_raw(Endpoint::Node(3).addr(), chunk).await,
            Err(FetchError::NotFound { .. })
        ));
        net.set_up(Endpoint::Node(3), false);
        assert!(matches!(
            n2.fetch_raw(Endpoint::Node(3).addr(), chunk).await,
            Err(FetchError::Connect { .. })
        ));
        net.set_up(Endpoint::Node(3), true);
        net.cut(Endpoint::Node(2), Endpoint::Node(1));
        let t = Instant::now();
        assert!(matches!(
            n2.fetch_raw(Endpoint::Node(1).addr(), chunk).await,
            Err(FetchError::Connect { .. })
        ));
        assert_eq!(t.elapsed(), CUT_TIMEOUT);
        assert!(net.heal(Endpoint::Node(2), Endpoint::Node(1)));
        assert!(n2.fetch_raw(Endpoint::Node(1).addr(), chunk).await.is_ok());
    }

    /// A push is verified and stored by the receiver before `Ok`; wrong bytes are `Corrupt`.
    #[tokio::test(start_paused = true)]
    async fn pushes_are_verified_and_durable_on_ok() {
        let (net, corpus) = net();
        let target = SimStore::new(None);
        net.add_node(1, Place::new("eu", "a"), SimStore::new(None));
        net.add_node(2, Place::new("eu", "b"), target.clone());
        let n1 = net.peers(Endpoint::Node(1));
        let chunk = &corpus.chunks()[0];
        let data = corpus.bytes(&chunk.hash).unwrap();
        n1.push(Endpoint::Node(2).addr(), &chunk.hash, &data)
            .await
            .unwrap();
        assert!(target.holds_intact(std::slice::from_ref(chunk)));
        assert_eq!(net.stats().redundant_between_nodes_bytes, 0);
        // The same chunk again: carried, and counted as redundant.
        n1.push(Endpoint::Node(2).addr(), &chunk.hash, &data)
            .await
            .unwrap();
        assert_eq!(
            net.stats().redundant_between_nodes_bytes,
            logical_bytes(data.len())
        );
        let mut bad = data.to_vec();
        bad[0] ^= 1;
        let other = &corpus.chunks()[1];
        assert!(matches!(
            n1.push(Endpoint::Node(2).addr(), &other.hash, &bad).await,
            Err(FetchError::Corrupt { .. })
        ));
        assert!(!target.contains(&other.hash));
    }
}
