//! Fault schedules: which fault happens when, generated from the seed alone.
//!
//! Pure: a schedule is a list of [`FaultEvent`]s computed before the run starts, so it can be
//! unit-tested (every crash is followed by its restart, every cut is healed, never more nodes
//! down than a minority) and printed. What it cannot know in advance — which node is the leader
//! when "crash the leader" comes due — is named symbolically ([`Target::Leader`]) and resolved
//! by the driver at that moment; the restart refers to the crash by its `slot`.

use std::collections::BTreeSet;
use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub type NodeId = u64;

/// First fault of a chaos run: the cluster has elected a leader and clients are writing.
pub const CHAOS_FIRST_FAULT_MS: u64 = 1_000;
/// Pause between two chaos faults, drawn uniformly from this range.
pub const CHAOS_GAP_MS: (u64, u64) = (200, 2_000);
/// How long one chaos fault (a crash, a cut, a lossy spell) lasts.
pub const CHAOS_FAULT_MS: (u64, u64) = (300, 4_000);
/// Loss rate of a lossy spell, and the share of messages a duplicating or reordering spell
/// duplicates or holds back, in percent.
pub const CHAOS_LOSS_PCT: (u8, u8) = (10, 60);
/// First chunk corruption of a chaos run: versions have been registered by then.
pub const CORRUPTION_FIRST_MS: u64 = 2_000;
/// Pause between two chunk corruptions, drawn uniformly from this range.
pub const CORRUPTION_GAP_MS: (u64, u64) = (1_000, 4_000);
/// Chunks one corruption rots on its node, drawn uniformly from this range.
pub const CORRUPTION_CHUNKS: (u32, u32) = (1, 8);
/// First disk fault of a chaos run: versions have been registered by then.
pub const DISK_FAULT_FIRST_MS: u64 = 1_500;
/// Pause between the starts of two disk faults, drawn uniformly from this range.
pub const DISK_FAULT_GAP_MS: (u64, u64) = (300, 2_500);
/// How long a full disk or a failing sync lasts, drawn uniformly from this range.
pub const DISK_FAULT_MS: (u64, u64) = (300, 4_000);
/// Logical bytes a full disk leaves free, drawn uniformly from this range: under the sim's
/// upload reserve (`cluster::SIM_DISK_RESERVE_BYTES`, 16 MiB), and sometimes room for a chunk
/// or two of 4 MiB.
pub const DISK_FULL_SLACK_BYTES: (u64, u64) = (0, 12 << 20);
/// First leader kill of a failover run.
pub const FAILOVER_FIRST_KILL_MS: u64 = 2_000;
/// Time between leader kills.
pub const FAILOVER_GAP_MS: (u64, u64) = (2_500, 4_000);
/// How long a killed leader stays down; shorter than the gap, so one node is down at a time.
pub const FAILOVER_DOWN_MS: (u64, u64) = (800, 2_000);

/// First fault of a rollout run: the endpoint is set up and the first rollout has begun.
pub const ROLLOUT_FIRST_FAULT_MS: u64 = 3_000;
/// Pause between the end of one rollout fault and the start of the next.
pub const ROLLOUT_GAP_MS: (u64, u64) = (1_000, 3_000);
/// How long one rollout fault (a crash, a cut, a lossy spell) lasts.
pub const ROLLOUT_FAULT_MS: (u64, u64) = (500, 3_000);

/// First membership change of a chaos run.
pub const MEMBERSHIP_FIRST_MS: u64 = 2_500;
/// Pause between the end of one membership change (a step-down, or a removal's rejoin) and the
/// next, drawn uniformly from this range.
pub const MEMBERSHIP_GAP_MS: (u64, u64) = (1_000, 5_000);
/// How long a removed node stays out before it asks to rejoin.
pub const REMOVED_MS: (u64, u64) = (500, 4_000);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Node(NodeId),
    /// Whichever node is the leader when the fault comes due.
    Leader,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Stop a node (its durable state stays on disk). `slot` names this crash for its restart.
    Crash { slot: u32, target: Target },
    /// Start the node crashed in `slot` again from its data dir.
    Restart { slot: u32 },
    /// Drop every message on these directed links until `Heal { id }`.
    Cut {
        id: u32,
        what: String,
        links: BTreeSet<(NodeId, NodeId)>,
    },
    /// Drop each message on these directed links with probability `loss_pct` until healed.
    Lossy {
        id: u32,
        what: String,
        links: BTreeSet<(NodeId, NodeId)>,
        loss_pct: u8,
    },
    /// Deliver each message on these directed links twice with probability `dup_pct` until
    /// healed.
    Duplicate {
        id: u32,
        what: String,
        links: BTreeSet<(NodeId, NodeId)>,
        dup_pct: u8,
    },
    /// Hold back each message on these directed links with probability `reorder_pct` until
    /// healed, so later ones overtake it.
    Reorder {
        id: u32,
        what: String,
        links: BTreeSet<(NodeId, NodeId)>,
        reorder_pct: u8,
    },
    /// End the cut or spell `id`.
    Heal { id: u32 },
    /// Bit rot: flip bytes of up to `chunks` chunks held by `node`'s chunk store, chosen (by
    /// the driver, which knows what the store holds then) with an RNG seeded by `salt`. Chunks
    /// stay rotten until the node code notices and replaces them.
    Corrupt {
        node: NodeId,
        chunks: u32,
        salt: u64,
    },
    /// The chunk store's disk of `node` fills up: `slack_bytes` (logical) stay free until
    /// `DiskFreed`.
    DiskFull { node: NodeId, slack_bytes: u64 },
    /// Space returns on `node`'s chunk disk.
    DiskFreed { node: NodeId },
    /// Every sync of `node`'s chunk store fails (a failing disk) until `SyncRecovered`.
    SyncFailing { node: NodeId },
    /// `node`'s chunk store syncs again.
    SyncRecovered { node: NodeId },
    /// The next chunk write on `node` is cut off as by a power loss mid-write: half its bytes
    /// stay under the chunk's name and the write fails.
    TornWrite { node: NodeId },
    /// An admin asks node `via` to have the leader step down (`quiver cluster step-down`);
    /// `via` forwards it to the leader.
    StepDown { via: NodeId },
    /// An admin asks node `via` to remove `target` from the cluster (`quiver cluster remove`);
    /// `slot` names this removal for its rejoin.
    Remove {
        slot: u32,
        target: Target,
        via: NodeId,
    },
    /// The node removed in `slot` asks a member to add it back (as `quiver-node serve --join`
    /// does), once it is up.
    Rejoin { slot: u32 },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Crash {
                slot,
                target: Target::Node(n),
            } => write!(f, "crash#{slot} n{n}"),
            Fault::Crash {
                slot,
                target: Target::Leader,
            } => write!(f, "crash#{slot} leader"),
            Fault::Restart { slot } => write!(f, "restart#{slot}"),
            Fault::Cut { id, what, .. } => write!(f, "cut#{id} {what}"),
            Fault::Lossy {
                id, what, loss_pct, ..
            } => write!(f, "lossy#{id} {what} {loss_pct}%"),
            Fault::Duplicate {
                id, what, dup_pct, ..
            } => write!(f, "duplicate#{id} {what} {dup_pct}%"),
            Fault::Reorder {
                id,
                what,
                reorder_pct,
                ..
            } => write!(f, "reorder#{id} {what} {reorder_pct}%"),
            Fault::Heal { id } => write!(f, "heal#{id}"),
            Fault::Corrupt { node, chunks, .. } => write!(f, "corrupt n{node} x{chunks}"),
            Fault::DiskFull { node, slack_bytes } => {
                write!(f, "disk full n{node} ({} KiB free)", slack_bytes >> 10)
            }
            Fault::DiskFreed { node } => write!(f, "disk freed n{node}"),
            Fault::SyncFailing { node } => write!(f, "syncs failing n{node}"),
            Fault::SyncRecovered { node } => write!(f, "syncs recovered n{node}"),
            Fault::TornWrite { node } => write!(f, "torn next write n{node}"),
            Fault::StepDown { via } => write!(f, "step-down via n{via}"),
            Fault::Remove {
                slot,
                target: Target::Node(n),
                via,
            } => write!(f, "remove#{slot} n{n} via n{via}"),
            Fault::Remove {
                slot,
                target: Target::Leader,
                via,
            } => write!(f, "remove#{slot} leader via n{via}"),
            Fault::Rejoin { slot } => write!(f, "rejoin#{slot}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultEvent {
    pub at_ms: u64,
    pub fault: Fault,
}

/// Node ids of a cluster of `nodes`: 1..=nodes.
pub fn node_ids(nodes: usize) -> Vec<NodeId> {
    (1..=nodes as NodeId).collect()
}

/// Most nodes down at once: a minority, so that a quorum can exist while no cut is active.
pub fn max_down(nodes: usize) -> usize {
    nodes.saturating_sub(1) / 2
}

/// Every directed link between `group` and the rest, both ways.
pub fn split_links(nodes: usize, group: &BTreeSet<NodeId>) -> BTreeSet<(NodeId, NodeId)> {
    let ids = node_ids(nodes);
    let mut links = BTreeSet::new();
    for &a in &ids {
        for &b in &ids {
            if a != b && group.contains(&a) != group.contains(&b) {
                links.insert((a, b));
            }
        }
    }
    links
}

/// Random faults for a `chaos` run of `duration_ms` (see the module docs). A cluster of fewer
/// than two nodes has no links to cut and no minority to crash: no faults.
pub fn chaos_schedule(seed: u64, nodes: usize, duration_ms: u64) -> Vec<FaultEvent> {
    if nodes < 2 {
        return Vec::new();
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let ids = node_ids(nodes);
    let mut events = Vec::new();
    // Down intervals [start, end) of the crashes scheduled so far.
    let mut down: Vec<(u64, u64)> = Vec::new();
    let mut next_slot = 0u32;
    let mut next_id = 0u32;
    let mut t = CHAOS_FIRST_FAULT_MS;
    while t < duration_ms {
        let length = rng.gen_range(CHAOS_FAULT_MS.0..=CHAOS_FAULT_MS.1);
        let end = t + length;
        let pick = rng.gen_range(0..100u32);
        let node = ids[rng.gen_range(0..ids.len())];
        match pick {
            0..=34 => {
                let overlapping = down.iter().filter(|(s, e)| *s < end && t < *e).count();
                if overlapping < max_down(nodes) {
                    let target = if pick < 15 {
                        Target::Leader
                    } else {
                        Target::Node(node)
                    };
                    events.push(FaultEvent {
                        at_ms: t,
                        fault: Fault::Crash {
                            slot: next_slot,
                            target,
                        },
                    });
                    events.push(FaultEvent {
                        at_ms: end,
                        fault: Fault::Restart { slot: next_slot },
                    });
                    down.push((t, end));
                    next_slot += 1;
                }
            }
            35..=79 => {
                let (what, links) = match pick {
                    35..=46 => (
                        format!("isolate n{node}"),
                        split_links(nodes, &BTreeSet::from([node])),
                    ),
                    47..=58 => {
                        let size = rng.gen_range(1..=nodes / 2);
                        let mut group = BTreeSet::new();
                        while group.len() < size {
                            group.insert(ids[rng.gen_range(0..ids.len())]);
                        }
                        let rest: Vec<String> = ids
                            .iter()
                            .filter(|n| !group.contains(n))
                            .map(|n| n.to_string())
                            .collect();
                        let mine: Vec<String> = group.iter().map(|n| n.to_string()).collect();
                        (
                            format!("split {{{}}}|{{{}}}", mine.join(","), rest.join(",")),
                            split_links(nodes, &group),
                        )
                    }
                    59..=65 => (
                        format!("n{node} cannot send"),
                        ids.iter()
                            .filter(|&&o| o != node)
                            .map(|&o| (node, o))
                            .collect(),
                    ),
                    66..=72 => (
                        format!("n{node} cannot receive"),
                        ids.iter()
                            .filter(|&&o| o != node)
                            .map(|&o| (o, node))
                            .collect(),
                    ),
                    _ => {
                        let others: Vec<NodeId> =
                            ids.iter().copied().filter(|&o| o != node).collect();
                        let to = others[rng.gen_range(0..others.len())];
                        (
                            format!("n{node}->n{to} one way"),
                            BTreeSet::from([(node, to)]),
                        )
                    }
                };
                events.push(FaultEvent {
                    at_ms: t,
                    fault: Fault::Cut {
                        id: next_id,
                        what,
                        links,
                    },
                });
                events.push(FaultEvent {
                    at_ms: end,
                    fault: Fault::Heal { id: next_id },
                });
                next_id += 1;
            }
            _ => {
                // One draw for every kind of spell, so the kinds do not shift later draws.
                let pct = rng.gen_range(CHAOS_LOSS_PCT.0..=CHAOS_LOSS_PCT.1);
                let links = split_links(nodes, &BTreeSet::from([node]));
                let what = format!("links of n{node}");
                let fault = match pick {
                    80..=89 => Fault::Lossy {
                        id: next_id,
                        what,
                        links,
                        loss_pct: pct,
                    },
                    90..=94 => Fault::Duplicate {
                        id: next_id,
                        what,
                        links,
                        dup_pct: pct,
                    },
                    _ => Fault::Reorder {
                        id: next_id,
                        what,
                        links,
                        reorder_pct: pct,
                    },
                };
                events.push(FaultEvent { at_ms: t, fault });
                events.push(FaultEvent {
                    at_ms: end,
                    fault: Fault::Heal { id: next_id },
                });
                next_id += 1;
            }
        }
        t += rng.gen_range(CHAOS_GAP_MS.0..=CHAOS_GAP_MS.1);
    }
    // Stable: events at the same time keep their generation order.
    events.sort_by_key(|e| e.at_ms);
    events
}

/// Chunk corruptions for a `chaos` run (see [`Fault::Corrupt`]), from their own seed so that
/// they do not shift the draws of [`chaos_schedule`]; merge the two with [`merge`].
pub fn corruption_schedule(seed: u64, nodes: usize, duration_ms: u64) -> Vec<FaultEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ids = node_ids(nodes);
    let mut events = Vec::new();
    if ids.is_empty() {
        return events;
    }
    let mut t = CORRUPTION_FIRST_MS;
    while t < duration_ms {
        events.push(FaultEvent {
            at_ms: t,
            fault: Fault::Corrupt {
                node: ids[rng.gen_range(0..ids.len())],
                chunks: rng.gen_range(CORRUPTION_CHUNKS.0..=CORRUPTION_CHUNKS.1),
                salt: rng.gen(),
            },
        });
        t += rng.gen_range(CORRUPTION_GAP_MS.0..=CORRUPTION_GAP_MS.1);
    }
    events
}

/// Faults of the nodes' chunk disks for a `chaos` run, from their own seed (merge with
/// [`merge`]): full disks and failing syncs, each ended before the run does and at most one at a
/// time per node, and torn writes (a node's next chunk write cut off).
pub fn disk_fault_schedule(seed: u64, nodes: usize, duration_ms: u64) -> Vec<FaultEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ids = node_ids(nodes);
    let mut events = Vec::new();
    if ids.is_empty() {
        return events;
    }
    // When each node's current full-disk or failing-sync spell ends.
    let mut busy_until: Vec<u64> = vec![0; ids.len()];
    let mut t = DISK_FAULT_FIRST_MS;
    while t < duration_ms {
        let index = rng.gen_range(0..ids.len());
        let node = ids[index];
        let pick = rng.gen_range(0..100u32);
        let length = rng.gen_range(DISK_FAULT_MS.0..=DISK_FAULT_MS.1);
        let slack_bytes = rng.gen_range(DISK_FULL_SLACK_BYTES.0..=DISK_FULL_SLACK_BYTES.1);
        let end = t + length;
        match pick {
            0..=69 if busy_until[index] <= t && end < duration_ms => {
                let (start, stop) = if pick < 40 {
                    (
                        Fault::DiskFull { node, slack_bytes },
                        Fault::DiskFreed { node },
                    )
                } else {
                    (Fault::SyncFailing { node }, Fault::SyncRecovered { node })
                };
                events.push(FaultEvent {
                    at_ms: t,
                    fault: start,
                });
                events.push(FaultEvent {
                    at_ms: end,
                    fault: stop,
                });
                busy_until[index] = end;
            }
            70.. => events.push(FaultEvent {
                at_ms: t,
                fault: Fault::TornWrite { node },
            }),
            _ => {}
        }
        t += rng.gen_range(DISK_FAULT_GAP_MS.0..=DISK_FAULT_GAP_MS.1);
    }
    events.sort_by_key(|e| e.at_ms);
    events
}

/// Membership changes for a `chaos` run, from their own seed (merge with [`merge`]): leadership
/// step-downs and removals, one at a time, asked of a random node; every removal is followed by
/// its rejoin before the run ends. Clusters under three nodes get none.
pub fn membership_schedule(seed: u64, nodes: usize, duration_ms: u64) -> Vec<FaultEvent> {
    let mut events = Vec::new();
    if nodes < 3 {
        return events;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let ids = node_ids(nodes);
    let mut slot = 0u32;
    let mut t = MEMBERSHIP_FIRST_MS;
    while t < duration_ms {
        let via = ids[rng.gen_range(0..ids.len())];
        let pick = rng.gen_range(0..100u32);
        let out_ms = rng.gen_range(REMOVED_MS.0..=REMOVED_MS.1);
        let victim = ids[rng.gen_range(0..ids.len())];
        let mut end = t;
        if pick < 40 {
            events.push(FaultEvent {
                at_ms: t,
                fault: Fault::StepDown { via },
            });
        } else if t + out_ms < duration_ms {
            let target = if pick < 60 {
                Target::Leader
            } else {
                Target::Node(victim)
            };
            events.push(FaultEvent {
                at_ms: t,
                fault: Fault::Remove { slot, target, via },
            });
            end = t + out_ms;
            events.push(FaultEvent {
                at_ms: end,
                fault: Fault::Rejoin { slot },
            });
            slot += 1;
        }
        t = end + rng.gen_range(MEMBERSHIP_GAP_MS.0..=MEMBERSHIP_GAP_MS.1);
    }
    events
}

/// Two schedules as one, by time; at equal times `a`'s events come first.
pub fn merge(a: Vec<FaultEvent>, b: Vec<FaultEvent>) -> Vec<FaultEvent> {
    let mut events = a;
    events.extend(b);
    // Stable: equal times keep `a` before `b` and each list's own order.
    events.sort_by_key(|e| e.at_ms);
    events
}

/// Faults for a `rollout` run of `duration_ms` over `nodes` spread over `regions`
/// ([`crate::net::regions_of`]): one at a time with a pause between (so a majority can always
/// elect a leader, and rollouts move between faults). Each is a crash of the leader or of a
/// random node (restarted when it ends), a node cut off from the others, a region's nodes cut
/// off from the rest (when they are a minority), or a lossy spell on a node's links. Elections
/// still leave the registry unable to serve for a second or more after a leader's crash, or
/// when a node cut off comes back with a higher term; the rollout checker times the agents from
/// the end of such an outage (`rollout::serving_leader`).
pub fn rollout_schedule(
    seed: u64,
    nodes: usize,
    regions: usize,
    duration_ms: u64,
) -> Vec<FaultEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ids = node_ids(nodes);
    let region_of = crate::net::regions_of(&ids, regions);
    let mut events = Vec::new();
    let (mut slot, mut id) = (0u32, 0u32);
    let mut t = ROLLOUT_FIRST_FAULT_MS;
    while t < duration_ms {
        let end = t + rng.gen_range(ROLLOUT_FAULT_MS.0..=ROLLOUT_FAULT_MS.1);
        let node = ids[rng.gen_range(0..ids.len())];
        let region = rng.gen_range(0..regions.max(1));
        let pick = rng.gen_range(0..100u32);
        let group: BTreeSet<NodeId> = match pick {
            45..=64 => BTreeSet::from([node]),
            65..=84 => ids
                .iter()
                .copied()
                .filter(|n| region_of.get(n) == Some(&region))
                .collect(),
            _ => BTreeSet::new(),
        };
        let (start, stop) = match pick {
            0..=44 if max_down(nodes) >= 1 => {
                let target = if pick < 20 {
                    Target::Leader
                } else {
                    Target::Node(node)
                };
                slot += 1;
                (
                    Fault::Crash {
                        slot: slot - 1,
                        target,
                    },
                    Fault::Restart { slot: slot - 1 },
                )
            }
            45..=84 if !group.is_empty() && group.len() <= max_down(nodes) => {
                let names: Vec<String> = group.iter().map(|n| format!("n{n}")).collect();
                let what = match pick {
                    45..=64 => format!("isolate {}", names.join(",")),
                    _ => format!("cut region {region} ({}) off", names.join(",")),
                };
                id += 1;
                (
                    Fault::Cut {
                        id: id - 1,
                        what,
                        links: split_links(nodes, &group),
                    },
                    Fault::Heal { id: id - 1 },
                )
            }
            _ => {
                id += 1;
                (
                    Fault::Lossy {
                        id: id - 1,
                        what: format!("links of n{node}"),
                        links: split_links(nodes, &BTreeSet::from([node])),
                        loss_pct: rng.gen_range(CHAOS_LOSS_PCT.0..=CHAOS_LOSS_PCT.1),
                    },
                    Fault::Heal { id: id - 1 },
                )
            }
        };
        events.push(FaultEvent {
            at_ms: t,
            fault: start,
        });
        events.push(FaultEvent {
            at_ms: end,
            fault: stop,
        });
        t = end + rng.gen_range(ROLLOUT_GAP_MS.0..=ROLLOUT_GAP_MS.1);
    }
    events
}

/// Leader kills for a `failover` run: kill, restart a while later, repeat.
pub fn failover_schedule(seed: u64, duration_ms: u64) -> Vec<FaultEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut events = Vec::new();
    let mut slot = 0u32;
    let mut t = FAILOVER_FIRST_KILL_MS;
    while t < duration_ms {
        let down = rng.gen_range(FAILOVER_DOWN_MS.0..=FAILOVER_DOWN_MS.1);
        events.push(FaultEvent {
            at_ms: t,
            fault: Fault::Crash {
                slot,
                target: Target::Leader,
            },
        });
        events.push(FaultEvent {
            at_ms: t + down,
            fault: Fault::Restart { slot },
        });
        slot += 1;
        t += rng.gen_range(FAILOVER_GAP_MS.0..=FAILOVER_GAP_MS.1);
    }
    events.sort_by_key(|e| e.at_ms);
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Checks the structural promises of a schedule; returns (crashes, cuts and lossy spells).
    fn check(events: &[FaultEvent], nodes: usize) -> (usize, usize) {
        assert!(
            events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms),
            "sorted"
        );
        let mut crashed: BTreeMap<u32, u64> = BTreeMap::new();
        let mut open: BTreeMap<u32, u64> = BTreeMap::new();
        let (mut crashes, mut spells) = (0, 0);
        let mut removed: Option<u32> = None;
        let mut disk_spells: BTreeSet<NodeId> = BTreeSet::new();
        for e in events {
            match &e.fault {
                Fault::Crash { slot, .. } => {
                    assert!(crashed.insert(*slot, e.at_ms).is_none(), "slot reused");
                    assert!(
                        crashed.len() <= max_down(nodes),
                        "too many down at {}",
                        e.at_ms
                    );
                    crashes += 1;
                }
                Fault::Restart { slot } => {
                    let at = crashed.remove(slot).expect("restart follows its crash");
                    assert!(e.at_ms > at);
                }
                Fault::Cut { id, links, .. }
                | Fault::Lossy { id, links, .. }
                | Fault::Duplicate { id, links, .. }
                | Fault::Reorder { id, links, .. } => {
                    assert!(!links.is_empty());
                    assert!(links.iter().all(|(a, b)| a != b
                        && (1..=nodes as u64).contains(a)
                        && (1..=nodes as u64).contains(b)));
                    assert!(open.insert(*id, e.at_ms).is_none(), "id reused");
                    spells += 1;
                }
                Fault::Heal { id } => {
                    open.remove(id).expect("heal follows its fault");
                }
                Fault::Corrupt { node, chunks, .. } => {
                    assert!((1..=nodes as u64).contains(node));
                    assert!((CORRUPTION_CHUNKS.0..=CORRUPTION_CHUNKS.1).contains(chunks));
                }
                Fault::DiskFull { node, .. } | Fault::SyncFailing { node } => {
                    assert!((1..=nodes as u64).contains(node));
                    assert!(
                        disk_spells.insert(*node),
                        "one disk spell at a time on n{node}"
                    );
                }
                Fault::DiskFreed { node } | Fault::SyncRecovered { node } => {
                    assert!(
                        disk_spells.remove(node),
                        "a disk spell ends after it starts"
                    );
                }
                Fault::TornWrite { node } => assert!((1..=nodes as u64).contains(node)),
                Fault::StepDown { via } => assert!((1..=nodes as u64).contains(via)),
                Fault::Remove { slot, via, .. } => {
                    assert!((1..=nodes as u64).contains(via));
                    assert!(removed.is_none(), "one removal at a time");
                    removed = Some(*slot);
                }
                Fault::Rejoin { slot } => {
                    assert_eq!(removed.take(), Some(*slot), "a rejoin follows its removal");
                }
            }
        }
        assert!(removed.is_none(), "every removal is followed by its rejoin");
        assert!(crashed.is_empty(), "every crash is restarted");
        assert!(open.is_empty(), "every cut is healed");
        assert!(disk_spells.is_empty(), "every disk spell ends");
        (crashes, spells)
    }

    #[test]
    fn chaos_schedules_are_well_formed_for_many_seeds_and_sizes() {
        for nodes in [3, 5, 7] {
            let mut total = (0, 0);
            for seed in 0..50 {
                let (c, s) = check(&chaos_schedule(seed, nodes, 30_000), nodes);
                total.0 += c;
                total.1 += s;
            }
            assert!(total.0 > 50, "crashes happen ({total:?})");
            assert!(total.1 > 100, "cuts and losses happen ({total:?})");
        }
    }

    #[test]
    fn chaos_schedules_include_duplication_and_reordering() {
        let (mut dups, mut reorders) = (0, 0);
        for seed in 0..50 {
            for e in chaos_schedule(seed, 5, 30_000) {
                match e.fault {
                    Fault::Duplicate { dup_pct, .. } => {
                        assert!((CHAOS_LOSS_PCT.0..=CHAOS_LOSS_PCT.1).contains(&dup_pct));
                        dups += 1;
                    }
                    Fault::Reorder { .. } => reorders += 1,
                    _ => {}
                }
            }
        }
        assert!(dups > 20 && reorders > 20, "{dups} {reorders}");
    }

    #[test]
    fn a_schedule_is_a_function_of_its_seed() {
        assert_eq!(chaos_schedule(9, 5, 20_000), chaos_schedule(9, 5, 20_000));
        assert_ne!(chaos_schedule(9, 5, 20_000), chaos_schedule(10, 5, 20_000));
        assert_eq!(failover_schedule(9, 20_000), failover_schedule(9, 20_000));
    }

    #[test]
    fn corruptions_come_from_their_own_seed_and_merge_in_time_order() {
        let rot = corruption_schedule(5, 5, 30_000);
        assert!(
            rot.len() >= 30_000 / CORRUPTION_GAP_MS.1 as usize,
            "{}",
            rot.len()
        );
        assert_eq!(rot, corruption_schedule(5, 5, 30_000));
        assert_ne!(rot, corruption_schedule(6, 5, 30_000));
        let chaos = chaos_schedule(5, 5, 30_000);
        let all = merge(chaos.clone(), rot.clone());
        check(&all, 5);
        assert_eq!(all.len(), chaos.len() + rot.len());
        let without: Vec<FaultEvent> = all
            .iter()
            .filter(|e| !matches!(e.fault, Fault::Corrupt { .. }))
            .cloned()
            .collect();
        assert_eq!(without, chaos, "the other faults are unchanged");
        let nodes: BTreeSet<NodeId> = rot
            .iter()
            .filter_map(|e| match e.fault {
                Fault::Corrupt { node, .. } => Some(node),
                _ => None,
            })
            .collect();
        assert!(nodes.len() > 1, "corruption spreads over nodes: {nodes:?}");
    }

    #[test]
    fn disk_faults_come_from_their_own_seed_end_in_time_and_leave_other_faults_alone() {
        let (mut full, mut failing, mut torn) = (0, 0, 0);
        for seed in 0..50 {
            let disk = disk_fault_schedule(seed, 5, 30_000);
            assert_eq!(disk, disk_fault_schedule(seed, 5, 30_000));
            check(&disk, 5);
            for e in &disk {
                assert!(e.at_ms < 30_000, "{e:?} after the run's end");
                match e.fault {
                    Fault::DiskFull { slack_bytes, .. } => {
                        assert!(slack_bytes <= DISK_FULL_SLACK_BYTES.1);
                        full += 1;
                    }
                    Fault::SyncFailing { .. } => failing += 1,
                    Fault::TornWrite { .. } => torn += 1,
                    _ => {}
                }
            }
            let chaos = chaos_schedule(seed, 5, 30_000);
            let all = merge(chaos.clone(), disk.clone());
            check(&all, 5);
            let without: Vec<FaultEvent> = all.into_iter().filter(|e| !disk.contains(e)).collect();
            assert_eq!(without, chaos, "the other faults are unchanged");
        }
        assert!(
            full > 100 && failing > 100 && torn > 100,
            "{full} {failing} {torn}"
        );
        assert_ne!(
            disk_fault_schedule(1, 5, 30_000),
            disk_fault_schedule(2, 5, 30_000)
        );
    }

    #[test]
    fn membership_changes_come_one_at_a_time_and_every_removed_node_rejoins_in_time() {
        let (mut step_downs, mut removals, mut of_leader) = (0, 0, 0);
        for seed in 0..50 {
            let events = membership_schedule(seed, 5, 30_000);
            check(&events, 5);
            assert_eq!(events, membership_schedule(seed, 5, 30_000));
            for e in &events {
                assert!(e.at_ms < 30_000, "{e:?} after the run's end");
                match e.fault {
                    Fault::StepDown { .. } => step_downs += 1,
                    Fault::Remove { target, .. } => {
                        removals += 1;
                        of_leader += usize::from(target == Target::Leader);
                    }
                    _ => {}
                }
            }
            let all = merge(chaos_schedule(seed, 5, 30_000), events.clone());
            check(&all, 5);
        }
        assert!(step_downs > 50 && removals > 50, "{step_downs} {removals}");
        assert!(
            of_leader > 10 && of_leader < removals,
            "{of_leader} of {removals}"
        );
        assert_eq!(
            membership_schedule(1, 2, 30_000),
            vec![],
            "too small to shrink"
        );
    }

    #[test]
    fn failover_kills_the_leader_one_at_a_time() {
        let events = failover_schedule(3, 30_000);
        let (crashes, spells) = check(&events, 3);
        assert_eq!(spells, 0);
        assert!(crashes >= 6, "a kill every 2.5-4 s over 28 s: {crashes}");
        assert!(events.iter().all(|e| !matches!(
            e.fault,
            Fault::Crash {
                target: Target::Node(_),
                ..
            }
        )));
    }

    #[test]
    fn rollout_faults_come_one_at_a_time_and_cut_off_only_a_minority() {
        let (mut crashes, mut cuts, mut regions_cut) = (0, 0, 0);
        for (nodes, regions) in [(5, 3), (3, 3), (5, 1)] {
            for seed in 0..50 {
                let events = rollout_schedule(seed, nodes, regions, 30_000);
                assert_eq!(events, rollout_schedule(seed, nodes, regions, 30_000));
                let (c, s) = check(&events, nodes);
                crashes += c;
                cuts += s;
                // One fault at a time: each ends before the next begins.
                for pair in events.chunks(2) {
                    assert_eq!(pair.len(), 2, "every fault has its end");
                    assert!(pair[0].at_ms < pair[1].at_ms);
                }
                for w in events.chunks(2).collect::<Vec<_>>().windows(2) {
                    assert!(w[0][1].at_ms < w[1][0].at_ms, "faults overlap: {w:?}");
                }
                for e in &events {
                    if let Fault::Cut { links, what, .. } = &e.fault {
                        let cut: BTreeSet<NodeId> = links.iter().map(|(a, _)| *a).collect();
                        // A minority on one side: the rest can elect a leader.
                        let side = links
                            .iter()
                            .map(|(a, _)| *a)
                            .filter(|a| links.iter().filter(|(x, _)| x == a).count() > nodes / 2)
                            .collect::<BTreeSet<_>>();
                        assert!(side.len() <= max_down(nodes), "{what}: {cut:?}");
                        regions_cut += usize::from(what.starts_with("cut region"));
                    }
                }
            }
        }
        assert!(
            crashes > 100 && cuts > 100 && regions_cut > 20,
            "{crashes} {cuts} {regions_cut}"
        );
    }

    #[test]
    fn a_cluster_too_small_to_fault_gets_no_faults() {
        assert_eq!(chaos_schedule(1, 1, 30_000), vec![]);
        assert!(
            !chaos_schedule(1, 2, 30_000).is_empty(),
            "two nodes can be cut apart"
        );
    }

    #[test]
    fn split_links_cut_exactly_the_crossing_links() {
        let links = split_links(3, &BTreeSet::from([2]));
        assert_eq!(links, BTreeSet::from([(1, 2), (2, 1), (2, 3), (3, 2)]));
    }
}
