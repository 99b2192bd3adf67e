//! `quiver cluster …`: members, roles and lag; safe removal; failover drills.

use clap::Subcommand;
use serde::Serialize;

use super::commands::{print_one, Node};
use super::view::{fields, table};
use super::OutputArgs;
use std::time::{Duration, Instant};

use crate::proto::{ClusterMember, ClusterStatusResponse, CreateModelRequest, ReadConsistency};
use crate::sdk::Client;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, roles, leader, term, commit/applied index, replication lag, labels.
    Status(OutputArgs),
    /// Remove a member safely (refuses the last voter).
    Remove {
        /// The node id to remove.
        node_id: u64,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Drills for operators.
    #[command(subcommand)]
    Drill(DrillCommand),
}

#[derive(Debug, Subcommand)]
pub enum DrillCommand {
    /// Take the leader away under a write load; report time to a new leader,
    /// time to the first successful write, and whether any acknowledged
    /// write was lost.
    Failover {
        #[arg(long, value_enum, default_value_t = DrillMode::StepDown)]
        mode: DrillMode,
        /// Seconds of load before the fault.
        #[arg(long, default_value_t = 1.0)]
        before: f64,
        /// Seconds of load after the fault.
        #[arg(long, default_value_t = 3.0)]
        after: f64,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MemberView {
    pub node_id: u64,
    pub role: String,
    pub voter: bool,
    pub api_addr: String,
    pub peer_addr: String,
    pub quic_addr: String,
    pub region: String,
    pub zone: String,
    pub matched_index: Option<u64>,
    pub lag: Option<u64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClusterView {
    pub node_id: u64,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub members: Vec<MemberView>,
}

impl From<&ClusterMember> for MemberView {
    fn from(m: &ClusterMember) -> Self {
        MemberView {
            node_id: m.node_id,
            role: m.role.clone(),
            voter: m.voter,
            api_addr: m.api_addr.clone(),
            peer_addr: m.peer_addr.clone(),
            quic_addr: m.quic_addr.clone(),
            region: m.region.clone(),
            zone: m.zone.clone(),
            matched_index: m.matched_index,
            lag: m.lag,
        }
    }
}

impl From<&ClusterStatusResponse> for ClusterView {
    fn from(s: &ClusterStatusResponse) -> Self {
        ClusterView {
            node_id: s.node_id,
            leader_id: s.leader_id,
            term: s.term,
            committed_index: s.committed_index,
            applied_index: s.applied_index,
            last_log_index: s.last_log_index,
            members: s.members.iter().map(MemberView::from).collect(),
        }
    }
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

impl ClusterView {
    pub fn detail(&self) -> String {
        let head = fields(&[
            ("answered by", format!("node {}", self.node_id)),
            ("leader", opt(self.leader_id)),
            ("term", self.term.to_string()),
            ("committed", self.committed_index.to_string()),
            ("applied", self.applied_index.to_string()),
            ("last log index", self.last_log_index.to_string()),
        ]);
        let rows: Vec<Vec<String>> = self
            .members
            .iter()
            .map(|m| {
                vec![
                    m.node_id.to_string(),
                    m.role.clone(),
                    m.api_addr.clone(),
                    format!(
                        "{}/{}",
                        if m.region.is_empty() { "-" } else { &m.region },
                        if m.zone.is_empty() { "-" } else { &m.zone }
                    ),
                    opt(m.matched_index),
                    opt(m.lag),
                ]
            })
            .collect();
        format!(
            "{head}\n{}",
            table(
                &["NODE", "ROLE", "API", "REGION/ZONE", "MATCHED", "LAG"],
                &rows
            )
        )
    }
}

pub async fn run(node: &Node, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status(output) => {
            let status = node.client().await?.cluster_status().await?;
            print_one(
                output.output,
                &ClusterView::from(&status),
                ClusterView::detail,
            )
        }
        ClusterCommand::Remove { node_id, output } => {
            let status = node.client().await?.remove_node(node_id).await?;
            print_one(
                output.output,
                &ClusterView::from(&status),
                ClusterView::detail,
            )
        }
        ClusterCommand::Drill(DrillCommand::Failover {
            mode,
            before,
            after,
            output,
        }) => {
            let report = drill_failover(&node.client().await?, mode, before, after).await?;
            print_one(output.output, &report, DrillReport::detail)
        }
    }
}

/// How a drill takes the leader away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DrillMode {
    /// Ask the leader to step down (safe on any cluster).
    StepDown,
    /// Make the leader process die at once, like SIGKILL (nodes started with
    /// --enable-crash-drills only). Restart it yourself afterwards.
    Kill,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DrillReport {
    pub mode: String,
    pub old_leader: Option<u64>,
    pub new_leader: Option<u64>,
    pub time_to_new_leader_ms: Option<u64>,
    pub time_to_first_write_ms: Option<u64>,
    pub writes_attempted: u64,
    pub writes_acknowledged: u64,
    pub writes_verified_present: u64,
    pub writes_lost: u64,
}

impl DrillReport {
    pub fn detail(&self) -> String {
        let ms = |v: Option<u64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into());
        fields(&[
            ("mode", self.mode.clone()),
            ("old leader", opt(self.old_leader)),
            ("new leader", opt(self.new_leader)),
            ("time to new leader", ms(self.time_to_new_leader_ms)),
            ("time to first write", ms(self.time_to_first_write_ms)),
            ("writes attempted", self.writes_attempted.to_string()),
            ("writes acknowledged", self.writes_acknowledged.to_string()),
            ("writes verified", self.writes_verified_present.to_string()),
            ("writes lost", self.writes_lost.to_string()),
        ])
    }
}

/// Bound on how long a drill waits for a new leader.
const DRILL_LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the drill polls for the new leader.
const DRILL_POLL_INTERVAL: Duration = Duration::from_millis(10);

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    if !(0.0..=3600.0).contains(&value) {
        anyhow::bail!("{flag} must be between 0 and 3600 seconds, not {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

async fn drill_failover(
    client: &Client,
    mode: DrillMode,
    before: f64,
    after: f64,
) -> anyhow::Result<DrillReport> {
    let (before, after) = (seconds(before, "--before")?, seconds(after, "--after")?);
    let status = client.cluster_status().await?;
    let old_leader = status
        .leader_id
        .ok_or_else(|| anyhow::anyhow!("the cluster has no leader right now; try again"))?;
    let addr_of = |id: u64| {
        status
            .members
            .iter()
            .find(|m| m.node_id == id)
            .map(|m| m.api_addr.clone())
    };
    let leader = client
        .connect_to(&addr_of(old_leader).unwrap_or_default())
        .await?;
    // The load goes through a follower, which forwards to whoever leads.
    let load_endpoint = status
        .members
        .iter()
        .find(|m| m.node_id != old_leader && m.voter && !m.api_addr.is_empty())
        .map(|m| m.api_addr.clone())
        .ok_or_else(|| anyhow::anyhow!("a failover drill needs at least two voters"))?;
    let load = client.connect_to(&load_endpoint).await?;
    let run = format!(
        "drill-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(write_load(load.clone(), run.clone(), stop_rx));
    tokio::time::sleep(before).await;

    let fault_at = Instant::now();
    match mode {
        DrillMode::StepDown => {
            leader.step_down().await?;
        }
        DrillMode::Kill => {
            // The node dies mid-call: a transport error is the expected answer; a refusal (drills
            // off, or the caller is no admin) is an answer too.
            if let Err(e) = leader.crash().await {
                if matches!(
                    e.code(),
                    Some(
                        tonic::Code::FailedPrecondition
                            | tonic::Code::PermissionDenied
                            | tonic::Code::Unauthenticated
                    )
                ) {
                    return Err(e.into());
                }
            }
        }
    }
    let mut new_leader = None;
    let mut time_to_new_leader = None;
    while fault_at.elapsed() < DRILL_LEADER_TIMEOUT {
        if let Ok(s) = load.cluster_status().await {
            if let Some(id) = s
                .leader_id
                .filter(|&id| id != old_leader || s.term > status.term)
            {
                new_leader = Some(id);
                time_to_new_leader = Some(fault_at.elapsed());
                break;
            }
        }
        tokio::time::sleep(DRILL_POLL_INTERVAL).await;
    }
    tokio::time::sleep(after).await;
    let _ = stop_tx.send(true);
    let writes = writer.await?;

    let present: std::collections::BTreeSet<String> = load
        .list_all_models(&format!("{run}-"), "", ReadConsistency::Linearizable)
        .await?
        .into_iter()
        .map(|m| m.name)
        .collect();
    let acknowledged: Vec<&Write> = writes.iter().filter(|w| w.ok).collect();
    let verified = acknowledged
        .iter()
        .filter(|w| present.contains(&w.name))
        .count() as u64;
    let first_write = writes
        .iter()
        .filter(|w| w.ok && w.started >= fault_at)
        .map(|w| w.finished.duration_since(fault_at))
        .min();
    Ok(DrillReport {
        mode: match mode {
            DrillMode::StepDown => "step-down".into(),
            DrillMode::Kill => "kill".into(),
        },
        old_leader: Some(old_leader),
        new_leader,
        time_to_new_leader_ms: time_to_new_leader.map(|d| d.as_millis() as u64),
        time_to_first_write_ms: first_write.map(|d| d.as_millis() as u64),
        writes_attempted: writes.len() as u64,
        writes_acknowledged: acknowledged.len() as u64,
        writes_verified_present: verified,
        writes_lost: acknowledged.len() as u64 - verified,
    })
}

struct Write {
    name: String,
    ok: bool,
    started: Instant,
    finished: Instant,
}

/// One write at a time (each a new model), so every write has a clear
/// start and end around the fault.
async fn write_load(
    client: Client,
    run: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Write> {
    let mut writes = Vec::new();
    let mut seq = 0u64;
    while !*stop.borrow() {
        seq += 1;
        let name = format!("{run}-{seq:06}");
        let started = Instant::now();
        let ok = client
            .create_model(CreateModelRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await
            .is_ok();
        writes.push(Write {
            name,
            ok,
            started,
            finished: Instant::now(),
        });
    }
    writes
}
