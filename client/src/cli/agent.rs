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
        let host: String = host
            .to_ascii_lowercase()
            .chars()
            .map(
                |c| match c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    true => c,
                    false => '-',
                },
            )
            .take(48)
            .collect();
        format!("{host}-{}", args.listen.port())
    });
    let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(plain)
        || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(UsageError(format!(
            "--agent-name {name:?}: use 1-64 characters of a-z, 0-9, '-', '_', '.', starting \
             with a letter or digit"
        ))
        .into());
    }
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
    // The agent runs for long: its changes, pulls and failures are logged on stderr (more
    // or less with RUST_LOG).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quiver_client::sdk=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
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

/// `quiver example-model DIR`: a small ONNX model to serve, with its signature.
#[derive(Debug, Args)]
pub struct ExampleModelArgs {
    /// The directory to write `model.onnx` and `signature.json` into (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The model's weights, comma-separated: it scores `features · weights + bias`, one
    /// feature per weight.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.25,0.125")]
    pub weights: Vec<f32>,
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub bias: f32,
}

/// Most weights of an example model.
pub const EXAMPLE_WEIGHTS_MAX: usize = 4096;

pub fn example_model(args: ExampleModelArgs) -> anyhow::Result<()> {
    use crate::agent::onnx::example;
    if args.weights.is_empty() || args.weights.len() > EXAMPLE_WEIGHTS_MAX {
        return Err(UsageError(format!(
            "--weights: give 1 to {EXAMPLE_WEIGHTS_MAX} numbers, comma-separated"
        ))
        .into());
    }
    if let Some(bad) = args
        .weights
        .iter()
        .chain([&args.bias])
        .find(|w| !w.is_finite())
    {
        return Err(UsageError(format!("--weights/--bias: {bad} is not a finite number")).into());
    }
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", args.dir.display()))?;
    let model = args.dir.join("model.onnx");
    std::fs::write(&model, example::linear_model(&args.weights, args.bias))
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", model.display()))?;
    let signature = args.dir.join("signature.json");
    std::fs::write(&signature, example::signature_json(args.weights.len()))
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", signature.display()))?;
    let row = vec!["1.0"; args.weights.len()].join(", ");
    eprintln!(
        "wrote {} and {}: it scores {{\"inputs\": {{\"features\": [[{row}]]}}}}",
        model.display(),
        signature.display()
    );
    Ok(())
}
