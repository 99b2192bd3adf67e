//! What one simulated run is: scenario, size, seed, and the planted bug (if any).
//!
//! Everything a run does is a function of [`SimConfig`]; `replay_command` prints the command line
//! that reproduces it exactly.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use quiver_node::replication::PlantedBugs;

/// Fewest nodes a run may have: a failover needs a majority left after a kill.
pub const NODES_MIN: usize = 3;
/// Most nodes a run may have (each node holds two LMDB environments and its tasks).
pub const NODES_MAX: usize = 9;
/// Longest simulated run, in seconds.
pub const DURATION_S_MAX: u64 = 3_600;
/// Most client pipelines.
pub const CLIENTS_MAX: usize = 64;
/// Most regions a run may spread its nodes over (at most one per node).
pub const REGIONS_MAX: usize = NODES_MAX;
/// Largest clock offset a node may be given, in ms either way.
pub const CLOCK_SKEW_MS_MAX: u64 = 60_000;
/// Default clock skew of a chaos run: each node's clock is off by up to this much, either way.
pub const CHAOS_CLOCK_SKEW_MS: u64 = 500;
/// Most seeds one sweep runs.
pub const SWEEP_SEEDS_MAX: u64 = 100_000;
/// Serving agents of a rollout run by default (`--agents`).
pub const AGENTS_DEFAULT: usize = 100;
/// Most serving agents of a rollout run: under the registry's limit of agents whose reports
/// one endpoint keeps (`quiver_node::deploy::AGENTS_PER_ENDPOINT_MAX`, 1024).
pub const AGENTS_MAX: usize = 1_000;
/// Regions of a rollout run by default.
pub const ROLLOUT_REGIONS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Random crashes, restarts, partitions (one-way too) and lossy links while pipelines create
    /// models, register versions, promote and set aliases through random nodes.
    Chaos,
    /// The leader is killed again and again under a steady registration load.
    Failover,
    /// One large model pulled by a fleet of serving replicas in several regions, through
    /// Quiver's pull path and through a one-node baseline (`crate::load`; its own report).
    Load,
    /// Serving agents (the client crate's `AgentCore`) in several regions follow an endpoint
    /// through rollouts, automatic and hand rollbacks while nodes crash and are cut off and
    /// agents lose the registry (`crate::rollout`, `crate::agents`, `crate::check_rollout`).
    Rollout,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Chaos => "chaos",
            Scenario::Failover => "failover",
            Scenario::Load => "load",
            Scenario::Rollout => "rollout",
        }
    }

    pub fn default_duration_s(self) -> u64 {
        match self {
            Scenario::Chaos => 30,
            Scenario::Failover => 30,
            // Not used: a load run lasts until the fleet has loaded (`load::PHASE_TIMEOUT`).
            Scenario::Load => 30,
            Scenario::Rollout => 30,
        }
    }

    /// Chaos skews the nodes' clocks; failover and rollout keep them true so their figures
    /// read plainly.
    pub fn default_clock_skew_ms(self) -> u64 {
        match self {
            Scenario::Chaos => CHAOS_CLOCK_SKEW_MS,
            Scenario::Failover | Scenario::Load | Scenario::Rollout => 0,
        }
    }

    /// Rollout spreads its nodes (and agents) over three regions; the others use one.
    pub fn default_regions(self) -> usize {
        match self {
            Scenario::Rollout => ROLLOUT_REGIONS,
            Scenario::Chaos | Scenario::Failover | Scenario::Load => 1,
        }
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "chaos" => Ok(Scenario::Chaos),
            "failover" => Ok(Scenario::Failover),
            "load" => Ok(Scenario::Load),
            "rollout" => Ok(Scenario::Rollout),
            other => Err(format!(
                "unknown scenario {other:?}: use chaos, failover, load or rollout"
            )),
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A known bug the simulator can plant, to show that a checker notices it. Test-only. The
/// chunk plants switch on code in quiver-node's replication paths through its test-only
/// `PlantedBugs` (off by default, reachable from no CLI or config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    /// The client is told "done" as soon as its command is handed to a node that believes it is
    /// the leader (openraft's `client_write_ff`), before the entry is committed. A leader that
    /// crashes or is cut off loses such entries; the lost-ack checker must notice.
    AckBeforeCommit,
    /// `ChunkSink::put` reports an uploaded chunk written once the front-end node's own copy is
    /// durable, leaving the pushes to peers to the background: a version can be acknowledged
    /// READY with fewer than W copies; the ready-copies checker must notice.
    AckBeforeWCopies,
    /// The download path (`read_chunk_with`, `fetch_all`) hands out bytes without checking them
    /// against their hash: a chunk rotten on a node's disk reaches the client; the artifact
    /// checker must notice.
    SkipChunkVerify,
    /// The Raft log store writes without fsync (through `quiver_raft::LogDisk::skip_fsync`) and still reports every append flushed. A crash then
    /// loses acknowledged entries and votes (see [`crate::disk`]); lost acks, diverging digests
    /// or two leaders in a term must show it.
    DropLogFsync,
    /// A follower asked to change a version's stage applies the command to its own state machine
    /// (`RaftNode::apply_without_consensus`) instead of sending it to the leader, and the client
    /// is told "done". The digest checker must see that follower disagree with its peers.
    FollowerAppliesStageChange,
    /// A follower forwarding a command to the leader gives it a fresh request id
    /// (`PlantedNodeBugs::forward_drops_request_id`, in `Node::propose_command`), so a command
    /// that reaches the log twice (a client's retry after a lost answer) applies twice: the
    /// second copy of a registration is rejected as a duplicate of the first, and the client is
    /// told "rejected" although its version exists. The false-rejection checker must notice.
    RetryWithoutRequestId,
    /// A follower answers a linearizable read from its own applied state without the read-index
    /// round trip to the leader (`quiver_raft::PlantedRaftBugs::stale_follower_reads`): a read
    /// can miss a write acknowledged before it began. The linearizability checker must notice.
    StaleFollowerReads,
    /// A node that starts with READY versions in its state marks them all repaired
    /// (`PlantedNodeBugs::repair_skips_after_restart`), so chunks it missed while it was down
    /// are never fetched. The replication checker must notice.
    RepairSkipsAfterRestart,
    /// The state machine takes a command's model name on trust
    /// (`PlantedNodeBugs::apply_skips_name_validation`): a hostile client's empty name reaches
    /// LMDB as a key, apply fails with a storage error and Raft stops on every node. The
    /// node-fatal checker must notice.
    ApplySkipsNameValidation,
    /// The simulated chunk store keeps a copy whose sync failed and counts it when the chunk is
    /// put again (`PlantedStoreBugs::keep_unsynced_copy`), as `ChunkStore` did when the sync
    /// after its rename failed: pushes and uploads then count a copy that a power loss takes
    /// back, and repair (which trusts `contains`) never makes it durable. The ready-copies or
    /// replication checker, which count only durable intact copies, must notice.
    KeepUnsyncedChunk,
    /// A follower forwards a command without checking its proposer's role
    /// (`PlantedNodeBugs::follower_skips_role_check`): an intruder's write through a follower
    /// is applied. The unauthorized-write checker must notice.
    FollowerSkipsRoleCheck,
    /// The review's four-eyes rule is switched off in apply
    /// (`PlantedNodeBugs::registrant_approval_counts`): the registrant's own approval counts and
    /// promotes. The approvals checker must notice.
    RegistrantApprovalCounts,
    /// A watch resumed after a revision starts one revision later
    /// (`PlantedNodeBugs::watch_resume_skips_one`, in `Node::watch_start`): a watcher that moves
    /// to another node misses the next event. The watch checker must notice.
    WatchResumeSkipsOne,
    /// A controller's `AdvanceRollout` moves a rollout two steps at once
    /// (`PlantedNodeBugs::controller_skips_step`, in apply): the step in between never holds.
    /// The deployment checker must notice (`rollout-step-skipped`).
    ControllerSkipsStep,
    /// The simulated serving agent drops a deployment that sends all traffic back to a version
    /// older than one it routes to (a rollback) instead of handing it to its `AgentCore`, so it
    /// keeps routing by the rolled-back split (in `crate::agents`, the wrapper around the core;
    /// the core itself has no such switch). The rollout checker must notice (`served-stale`,
    /// `rollback-incomplete` or `rollback-slow`).
    AgentIgnoresRollback,
}

impl Plant {
    /// Every planted bug, for help texts and tests.
    pub const ALL: [Plant; 15] = [
        Plant::AckBeforeCommit,
        Plant::AckBeforeWCopies,
        Plant::SkipChunkVerify,
        Plant::DropLogFsync,
        Plant::FollowerAppliesStageChange,
        Plant::RetryWithoutRequestId,
        Plant::StaleFollowerReads,
        Plant::RepairSkipsAfterRestart,
        Plant::ApplySkipsNameValidation,
        Plant::KeepUnsyncedChunk,
        Plant::FollowerSkipsRoleCheck,
        Plant::RegistrantApprovalCounts,
        Plant::WatchResumeSkipsOne,
        Plant::ControllerSkipsStep,
        Plant::AgentIgnoresRollback,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Plant::AckBeforeCommit => "ack-before-commit",
            Plant::AckBeforeWCopies => "ack-before-w-copies",
            Plant::SkipChunkVerify => "skip-chunk-verify",
            Plant::DropLogFsync => "drop-log-fsync",
            Plant::FollowerAppliesStageChange => "follower-applies-stage-change",
            Plant::RetryWithoutRequestId => "retry-without-request-id",
            Plant::StaleFollowerReads => "stale-follower-reads",
            Plant::RepairSkipsAfterRestart => "repair-skips-after-restart",
            Plant::ApplySkipsNameValidation => "apply-skips-name-validation",
            Plant::KeepUnsyncedChunk => "keep-unsynced-chunk",
            Plant::FollowerSkipsRoleCheck => "follower-skips-role-check",
            Plant::RegistrantApprovalCounts => "registrant-approval-counts",
            Plant::WatchResumeSkipsOne => "watch-resume-skips-one",
            Plant::ControllerSkipsStep => "controller-skips-step",
            Plant::AgentIgnoresRollback => "agent-ignores-rollback",
        }
    }

    /// The switches of the Raft crate's code this plant turns on (none for the others).
    pub fn planted_raft_bugs(plant: Option<Plant>) -> quiver_raft::PlantedRaftBugs {
        quiver_raft::PlantedRaftBugs {
            stale_follower_reads: plant == Some(Plant::StaleFollowerReads),
        }
    }

    /// The switches of `Node`'s own code this plant turns on (none for the others).
    pub fn planted_node_bugs(plant: Option<Plant>) -> quiver_node::node::PlantedNodeBugs {
        quiver_node::node::PlantedNodeBugs {
            forward_drops_request_id: plant == Some(Plant::RetryWithoutRequestId),
            repair_skips_after_restart: plant == Some(Plant::RepairSkipsAfterRestart),
            apply_skips_name_validation: plant == Some(Plant::ApplySkipsNameValidation),
            follower_skips_role_check: plant == Some(Plant::FollowerSkipsRoleCheck),
            registrant_approval_counts: plant == Some(Plant::RegistrantApprovalCounts),
            watch_resume_skips_one: plant == Some(Plant::WatchResumeSkipsOne),
            controller_skips_step: plant == Some(Plant::ControllerSkipsStep),
        }
    }

    /// The switches of the simulated chunk store this plant turns on (none for the others).
    pub fn planted_store_bugs(plant: Option<Plant>) -> crate::chunkstore::PlantedStoreBugs {
        crate::chunkstore::PlantedStoreBugs {
            keep_unsynced_copy: plant == Some(Plant::KeepUnsyncedChunk),
        }
    }

    /// The switches of the node's replication code this plant turns on (none for the others).
    pub fn planted_bugs(plant: Option<Plant>) -> PlantedBugs {
        PlantedBugs {
            ack_before_w_copies: plant == Some(Plant::AckBeforeWCopies),
            skip_chunk_verify: plant == Some(Plant::SkipChunkVerify),
        }
    }
}

impl FromStr for Plant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Plant::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Plant::ALL.iter().map(|p| p.name()).collect();
                format!("unknown planted bug {s:?}: use one of {}", names.join(", "))
            })
    }
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub scenario: Scenario,
    pub nodes: usize,
    /// Regions the nodes are spread over round-robin (`net::regions_of`): links inside a
    /// region are fast, links across regions slow.
    pub regions: usize,
    /// Each node's clock is off by an offset drawn from the seed in ±this many ms; the offset
    /// shows in the time a node stamps into the commands it proposes.
    pub clock_skew_ms: u64,
    pub duration_s: u64,
    /// Client pipelines issuing commands concurrently (chaos and failover).
    pub clients: usize,
    /// Serving agents following the endpoint (rollout), spread over the regions round-robin.
    pub agents: usize,
    pub plant: Option<Plant>,
    /// Keep the trace's lines (for `--dump-trace`); the hash is computed either way.
    pub keep_trace: bool,
    /// Where the nodes' data directories go (a fresh temp dir under it per run). `None`: a
    /// RAM-backed directory (`/dev/shm`) if there is one, else the system temp dir. Durability
    /// is unchanged (LMDB still fsyncs); RAM only makes the fsyncs cheap.
    pub data_root: Option<PathBuf>,
}

impl SimConfig {
    pub fn new(seed: u64, scenario: Scenario) -> Self {
        SimConfig {
            seed,
            scenario,
            nodes: 5,
            regions: scenario.default_regions(),
            clock_skew_ms: scenario.default_clock_skew_ms(),
            duration_s: scenario.default_duration_s(),
            clients: 4,
            agents: AGENTS_DEFAULT,
            plant: None,
            keep_trace: false,
            data_root: None,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(NODES_MIN..=NODES_MAX).contains(&self.nodes) {
            return Err(format!(
                "--nodes {} is out of range: use {NODES_MIN}..={NODES_MAX}",
                self.nodes
            ));
        }
        if self.regions == 0 || self.regions > self.nodes.min(REGIONS_MAX) {
            return Err(format!(
                "--regions {} is out of range: use 1..={} (at most one region per node)",
                self.regions,
                self.nodes.min(REGIONS_MAX)
            ));
        }
        if self.clock_skew_ms > CLOCK_SKEW_MS_MAX {
            return Err(format!(
                "--clock-skew-ms {} is out of range: use 0..={CLOCK_SKEW_MS_MAX}",
                self.clock_skew_ms
            ));
        }
        if self.duration_s == 0 || self.duration_s > DURATION_S_MAX {
            return Err(format!(
                "--duration-s {} is out of range: use 1..={DURATION_S_MAX}",
                self.duration_s
            ));
        }
        if self.clients == 0 || self.clients > CLIENTS_MAX {
            return Err(format!(
                "--clients {} is out of range: use 1..={CLIENTS_MAX}",
                self.clients
            ));
        }
        if self.agents == 0 || self.agents > AGENTS_MAX {
            return Err(format!(
                "--agents {} is out of range: use 1..={AGENTS_MAX}",
                self.agents
            ));
        }
        Ok(())
    }

    pub fn duration_ms(&self) -> u64 {
        self.duration_s * 1_000
    }

    /// The exact command that replays this run, with its whole trace printed.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "quiver-sim run --seed {} --scenario {} --nodes {} --regions {} --clock-skew-ms {} \
             --duration-s {} --clients {}",
            self.seed,
            self.scenario,
            self.nodes,
            self.regions,
            self.clock_skew_ms,
            self.duration_s,
            self.clients
        );
        if self.scenario == Scenario::Rollout {
            cmd.push_str(&format!(" --agents {}", self.agents));
        }
        if let Some(plant) = self.plant {
            cmd.push_str(&format!(" --plant {}", plant.name()));
        }
        cmd.push_str(" --dump-trace");
        cmd
    }
}

/// An independent 64-bit seed for one purpose (`label`) of a run: the run's seed keyed through
/// blake3, so adding a new consumer of randomness does not shift the draws of the others.
pub fn sub_seed(seed: u64, label: &str) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"quiver-sim sub-seed\0");
    hasher.update(&seed.to_le_bytes());
    hasher.update(label.as_bytes());
    let bytes = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// A seed range `A..B` (B excluded) or `A..=B` (B included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedRange {
    pub start: u64,
    /// Exclusive.
    pub end: u64,
}

impl SeedRange {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    pub fn seeds(&self) -> std::ops::Range<u64> {
        self.start..self.end
    }
}

impl FromStr for SeedRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("seed range {s:?}: write A..B (B excluded) or A..=B");
        let (a, b, inclusive) = if let Some((a, b)) = s.split_once("..=") {
            (a, b, true)
        } else if let Some((a, b)) = s.split_once("..") {
            (a, b, false)
        } else {
            return Err(bad());
        };
        let start: u64 = a.trim().parse().map_err(|_| bad())?;
        let last: u64 = b.trim().parse().map_err(|_| bad())?;
        let end = if inclusive {
            last.checked_add(1).ok_or_else(bad)?
        } else {
            last
        };
        if end <= start {
            return Err(format!("seed range {s:?} is empty"));
        }
        if end - start > SWEEP_SEEDS_MAX {
            return Err(format!(
                "seed range {s:?} has {} seeds, over the limit of {SWEEP_SEEDS_MAX}",
                end - start
            ));
        }
        Ok(SeedRange { start, end })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_parse_both_forms_and_refuse_nonsense() {
        assert_eq!(
            "3..7".parse::<SeedRange>(),
            Ok(SeedRange { start: 3, end: 7 })
        );
        assert_eq!(
            "3..=7".parse::<SeedRange>(),
            Ok(SeedRange { start: 3, end: 8 })
        );
        assert!("7..3".parse::<SeedRange>().is_err());
        assert!("5..5".parse::<SeedRange>().is_err());
        assert!("x..3".parse::<SeedRange>().is_err());
        assert!("0..1000000".parse::<SeedRange>().is_err(), "over the limit");
    }

    #[test]
    fn sub_seeds_differ_by_label_and_seed_and_are_stable() {
        assert_eq!(sub_seed(1, "net"), sub_seed(1, "net"));
        assert_ne!(sub_seed(1, "net"), sub_seed(1, "faults"));
        assert_ne!(sub_seed(1, "net"), sub_seed(2, "net"));
    }

    #[test]
    fn every_plant_parses_from_its_name() {
        for plant in Plant::ALL {
            assert_eq!(plant.name().parse::<Plant>(), Ok(plant));
        }
        let err = "drop-fsync".parse::<Plant>().unwrap_err();
        assert!(err.contains("drop-log-fsync"), "{err}");
        assert!(err.contains("skip-chunk-verify"), "{err}");
    }

    #[test]
    fn chunk_plants_switch_on_only_their_own_bug() {
        assert_eq!(Plant::planted_bugs(None), PlantedBugs::default());
        for other in [
            Plant::AckBeforeCommit,
            Plant::DropLogFsync,
            Plant::FollowerAppliesStageChange,
        ] {
            assert_eq!(Plant::planted_bugs(Some(other)), PlantedBugs::default());
        }
        assert!(Plant::planted_bugs(Some(Plant::AckBeforeWCopies)).ack_before_w_copies);
        let skip = Plant::planted_bugs(Some(Plant::SkipChunkVerify));
        assert!(skip.skip_chunk_verify && !skip.ack_before_w_copies);
    }

    #[test]
    fn config_limits_are_enforced() {
        let mut cfg = SimConfig::new(1, Scenario::Chaos);
        assert!(cfg.validate().is_ok());
        cfg.nodes = NODES_MAX + 1;
        assert!(cfg.validate().unwrap_err().contains("--nodes"));
        cfg.nodes = 5;
        cfg.regions = 6;
        assert!(cfg.validate().unwrap_err().contains("--regions"));
        cfg.regions = 3;
        cfg.clock_skew_ms = CLOCK_SKEW_MS_MAX + 1;
        assert!(cfg.validate().unwrap_err().contains("--clock-skew-ms"));
        cfg.clock_skew_ms = 0;
        assert!(cfg.validate().is_ok());
        cfg.duration_s = 0;
        assert!(cfg.validate().unwrap_err().contains("--duration-s"));
        cfg.duration_s = 30;
        cfg.agents = AGENTS_MAX + 1;
        assert!(cfg.validate().unwrap_err().contains("--agents"));
        cfg.agents = AGENTS_MAX;
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn a_rollout_run_defaults_to_three_regions_true_clocks_and_names_its_agents() {
        let mut cfg = SimConfig::new(7, Scenario::Rollout);
        assert_eq!((cfg.regions, cfg.clock_skew_ms), (ROLLOUT_REGIONS, 0));
        assert_eq!(cfg.agents, AGENTS_DEFAULT);
        cfg.plant = Some(Plant::AgentIgnoresRollback);
        let cmd = cfg.replay_command();
        for part in [
            "--scenario rollout",
            "--regions 3",
            "--agents 100",
            "--plant agent-ignores-rollback",
        ] {
            assert!(cmd.contains(part), "{cmd} lacks {part}");
        }
        assert!(!SimConfig::new(7, Scenario::Chaos)
            .replay_command()
            .contains("--agents"));
        assert_eq!("rollout".parse::<Scenario>(), Ok(Scenario::Rollout));
    }

    #[test]
    fn the_replay_command_names_everything_that_shapes_the_run() {
        let mut cfg = SimConfig::new(42, Scenario::Failover);
        cfg.plant = Some(Plant::AckBeforeCommit);
        let cmd = cfg.replay_command();
        for part in [
            "--seed 42",
            "--scenario failover",
            "--nodes 5",
            "--regions 1",
            "--clock-skew-ms 0",
            "--duration-s 30",
            "--plant ack-before-commit",
            "--dump-trace",
        ] {
            assert!(cmd.contains(part), "{cmd} lacks {part}");
        }
    }
}
