//! `quiver agent ENDPOINT`: run a serving agent for one deployment endpoint (see
//! `quiver_client::agent`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::args::UsageError;
use super::commands::Node;
use crate::agent::{builtin_runtimes, Agent, AgentConfig, Faults};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The deployment endpoint to serve (as `quiver deploy create` named it; `--endpoint` is
    /// the node to reach the registry through).
    #[arg(value_name = "ENDPOINT")]
    pub name: String,
    /// The HTTP address predictions, status and metrics are served on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the agent keeps the deployment in force and its versions (default:
    /// `.quiver/agent/ENDPOINT`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The agent's name in serving reports, unique per endpoint (default: host and port).
    #[arg(long = "agent-name")]
    pub agent_name: Option<String>,
    /// The agent's region and zone: it pulls from and watches through the nearest member.
    #[arg(long, default_value = "")]
    pub region: String,
    #[arg(long, default_value = "")]
    pub zone: String,
    /// How often counts are reported to the registry (ms).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub report_every_ms: u64,
    /// Drills only: every prediction of this version fails (a 500 counted against it), to
    /// see a canary rolled back. Repeatable.
    #[arg(long = "fault-fail-version", value_name = "VERSION", hide = true)]
    pub fail_versions: Vec<u64>,
}

pub async fn run(node: &Node, args: AgentArgs) -> anyhow::Result<()> {
    if args.name.is_empty() || args.name.len() > 128 {
        return Err(UsageError("ENDPOINT: 1 to 128 bytes".into()).into());
    }
    if !(10..=3_600_000).contains(&args.report_every_ms) {
        return Err(UsageError(format!(
            "--report-every-ms {}: use 10 to 3600000",
            args.report_every_ms
        ))
        .into());
    }
    let dir = args
        .dir
        .unwrap_or_else(|| PathBuf::from(".quiver/agent").join(&args.name));
    let name = args.agent_name.unwrap_or_else(|| {
        let host = whoami::fallible::hostname().unwrap_or_else(|_| "agent".into());
        format!("{host}:{}", args.listen.port())
    });
    let config = AgentConfig {
        name,
        endpoint: args.name,
        dir,
        listen: args.listen,
        region: args.region,
        zone: args.zone,
        report_every: Duration::from_millis(args.report_every_ms),
        registry: node.registry()?,
        faults: Faults {
            fail_versions: args.fail_versions.into_iter().collect(),
        },
    };
    let agent = Agent::start(config.clone(), builtin_runtimes()).await?;
    eprintln!(
        "agent {} serving endpoint {} on http://{} (POST /v1/endpoints/{}/predict, GET \
         /v1/status, GET /metrics); versions in {}; Ctrl-C stops it",
        config.name,
        config.endpoint,
        agent.addr(),
        config.endpoint,
        config.dir.display()
    );
    agent.run_until_interrupted().await
}
