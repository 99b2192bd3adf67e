//! The `quiver` command line: clap definitions here, one handler per
//! command in `commands` and `benchmarks`. Handlers talk to the node only
//! through the SDK, so the CLI can do nothing a program could not.

/// `print!` and `println!` for command output: a closed stdout
/// (`quiver … | head`) ends the output quietly instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::emit(&format!($($arg)*))? };
}
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::emit(&format!("{}\n", format_args!($($arg)*)))? };
}

mod access;
mod agent;
mod args;
mod audit;
mod benchmarks;
mod cluster;
mod commands;
mod deploy;
mod governance;
mod lineage;
mod progress;
mod signature;
mod view;
mod watch;

pub use args::parse_size;
pub use view::table;

use std::path::PathBuf;

use crate::proto::{MetricRange, Stage};
use clap::{Args, Parser, Subcommand};

pub use args::UsageError;
use args::{
    parse_key_value, parse_metric, parse_metric_range_arg, parse_stage_arg, parse_version_number,
    Output, RiskTierArg,
};

/// Where a node listens unless told otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://127.0.0.1:7400";

/// Quiver model registry client.
#[derive(Debug, Parser)]
#[command(
    name = "quiver",
    version,
    about = "Quiver model registry client",
    max_term_width = 100
)]
pub struct Cli {
    /// Node to talk to.
    #[arg(long, global = true, env = "QUIVER_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// API token (`qvr_…`, from `quiver token create`). Default: $QUIVER_TOKEN, else the file
    /// $QUIVER_TOKEN_FILE names, else `.quiver/admin.token` (written by `quiver-node up`).
    #[arg(long, global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster CA's certificate (PEM), which nodes are verified with. Default: $QUIVER_CA,
    /// else `.quiver/ca.pem` (written by `quiver-node up`).
    #[arg(long, global = true, env = "QUIVER_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM, from `quiver-node cert issue --client NAME`): it
    /// authenticates its principal when no token is sent. Needs --key.
    #[arg(long, global = true, env = "QUIVER_CERT", requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, global = true, env = "QUIVER_KEY", requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, show and update registered models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Register, list, show, download and tag model versions.
    #[command(subcommand)]
    Version(VersionCommand),
    /// Move a version between lifecycle stages.
    #[command(subcommand)]
    Stage(StageCommand),
    /// Point named aliases (champion, challenger) at versions.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Policies: the gates a model's versions pass to enter Staging and Production.
    #[command(subcommand)]
    Policy(governance::PolicyCommand),
    /// Review requests: stage changes waiting for approvals (four eyes).
    #[command(subcommand)]
    Review(governance::ReviewCommand),
    /// Show the state of the node (Raft role, term, log, chunks).
    Status(OutputArgs),
    /// Cluster members and operations: status, remove.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// API tokens: create (shown once), list, revoke. Admins only.
    #[command(subcommand)]
    Token(access::TokenCommand),
    /// Roles per namespace or cluster-wide: grant, revoke, list.
    #[command(subcommand)]
    Role(access::RoleCommand),
    /// Who the token names, and its roles.
    Whoami(OutputArgs),
    /// The audit log: list it, verify a node's chain, export a signed bundle, verify one
    /// offline.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Measure the registry against baselines taken on this machine.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Signature files (JSON or MLflow MLmodel), locally: check compatibility, validate requests.
    #[command(subcommand)]
    Signature(signature::SignatureCommand),
    /// Lineage: record edges, walk upstream and impact (text, JSON, DOT), quarantine and lift.
    #[command(subcommand)]
    Lineage(lineage::LineageCommand),
    /// Deployment endpoints: create, set traffic, roll out step by step, pause, resume, roll
    /// back; status and history.
    #[command(subcommand)]
    Deploy(deploy::DeployCommand),
    /// Follow changes as they are applied: every change, or one model's (--model), an alias's
    /// or a stage's (--ref MODEL@ALIAS, MODEL:STAGE), a deployment's (--deployment). One line per
    /// event; resumes on another member if the node goes away.
    Watch(watch::WatchArgs),
    /// Serve a deployment endpoint: follow its traffic split, pull and load its versions
    /// (keeping the previous one warm), answer `POST /v1/endpoints/ENDPOINT/predict`, report
    /// counts so rollouts advance or roll back.
    Agent(agent::AgentArgs),
    /// Write a small ONNX model (a linear scorer) and its signature, to register and serve.
    ExampleModel(agent::ExampleModelArgs),
}

/// Options of commands that read.
#[derive(Debug, Args)]
pub struct ReadArgs {
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Answer from the node's local state without a round of consensus
    /// (faster, may lag the leader).
    #[arg(long)]
    pub stale: bool,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Register a new model name.
    Create {
        /// Model name, such as search-ranking.
        name: String,
        /// Team that owns the model.
        #[arg(long, default_value = "")]
        namespace: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Governs how strict promotion is.
        #[arg(long, value_enum)]
        risk_tier: Option<RiskTierArg>,
        /// A tag on the model. Repeatable.
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        tags: Vec<(String, String)>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List models.
    List {
        /// Only names starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only models with this tag: KEY or KEY=VALUE.
        #[arg(long, default_value = "")]
        tag: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Show one model.
    Show {
        name: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Search the catalog: words in names, descriptions and tags, narrowed by filters.
    ///
    /// Every filter given must hold. Metric ranges are checked against the Production
    /// version's metrics with --stage production, else against the newest version's. Lists
    /// one page (models you may read, in name order); the next page's command follows it.
    ///
    /// Examples:
    ///   quiver model search ranking --namespace search --stage production --metric 'auc>=0.9'
    ///   quiver model search 'rank*' --quarantined --output json
    #[command(verbatim_doc_comment)]
    Search {
        /// Words that must all be among the model's words (its name, description and tags,
        /// split at anything not a letter or digit; case-insensitive). `rank*` matches every
        /// word starting with `rank` (at least two characters before the `*`).
        query: Vec<String>,
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long, value_enum)]
        risk_tier: Option<RiskTierArg>,
        /// Only models with a version in this stage.
        #[arg(long, value_parser = parse_stage_arg)]
        stage: Option<Stage>,
        /// Only models registered by this principal.
        #[arg(long)]
        owner: Option<String>,
        /// METRIC>=VALUE (or >, <=, <, =), e.g. auc>=0.8. Repeatable; all must hold.
        #[arg(long = "metric", value_name = "RANGE", value_parser = parse_metric_range_arg)]
        metrics: Vec<MetricRange>,
        /// Only models with a version (not archived) downstream of a quarantine.
        #[arg(long, conflicts_with = "not_quarantined")]
        quarantined: bool,
        /// Only models without one.
        #[arg(long)]
        not_quarantined: bool,
        /// Models per page.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: u32,
        /// Where to continue: the token the previous page ended with.
        #[arg(long, default_value = "")]
        page_token: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Change a model's description or tags.
    Update {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Set a tag. Repeatable.
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        tags: Vec<(String, String)>,
        /// Remove a tag. Repeatable.
        #[arg(long = "remove-tag", value_name = "KEY")]
        remove_tags: Vec<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum VersionCommand {
    /// Upload files as a new version; prints its reference (MODEL/N) last.
    Register(RegisterArgs),
    /// List a model's versions.
    List {
        model: String,
        #[arg(long, value_parser = parse_stage_arg)]
        stage: Option<Stage>,
        /// Only versions with this tag: KEY or KEY=VALUE.
        #[arg(long, default_value = "")]
        tag: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Show one version: MODEL/N, MODEL@ALIAS or MODEL:STAGE.
    ///
    /// With --lineage, also what it was trained on (everything upstream): e.g.
    /// `quiver version show reco:production --lineage` answers which version serves and where
    /// it came from.
    Show {
        reference: String,
        /// Also walk its lineage upstream (data, features, code, runs, parent versions).
        #[arg(long)]
        lineage: bool,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Download a version's files into a directory, verifying every chunk. A download cut
    /// short (Ctrl-C, a node going away) resumes when run again into the same directory: the
    /// chunks already there are checked and only the rest are fetched.
    Download {
        reference: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Your region label: the pull goes to the nearest member (same region,
        /// then same zone, then lowest measured round trip).
        #[arg(long, env = "QUIVER_REGION", default_value = "")]
        region: String,
        /// Your zone label.
        #[arg(long, env = "QUIVER_ZONE", default_value = "")]
        zone: String,
        /// Pull from --endpoint itself instead of the nearest member.
        #[arg(long)]
        no_nearest: bool,
    },
    /// Record an evaluation result for a version (evaluation pipelines; the registration never
    /// changes). With the policy's auto-promotion, a version whose Staging gates now pass
    /// enters Staging in the same step.
    Eval(governance::EvalArgs),
    /// A version's evaluation records, oldest first.
    Evaluations {
        reference: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Set or remove a version's tags.
    Tag {
        reference: String,
        /// Set a tag. Repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        set: Vec<(String, String)>,
        /// Remove a tag. Repeatable.
        #[arg(long = "remove", value_name = "KEY")]
        remove: Vec<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Model to add the version to (it must exist: `quiver model create`).
    pub model: String,
    /// A file (registered under its name) or a directory (every file under
    /// it, with relative paths). Repeatable.
    #[arg(long = "artifact", value_name = "PATH", required = true)]
    pub artifacts: Vec<PathBuf>,
    /// The inputs and outputs of the model: a JSON signature file or an
    /// MLflow MLmodel file.
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
    /// Id of the training-data snapshot.
    #[arg(long, value_name = "ID", default_value = "")]
    pub data_snapshot: String,
    #[arg(long, value_name = "SHA", default_value = "")]
    pub code_commit: String,
    /// Id of the pipeline run that trained the model.
    #[arg(long, value_name = "ID", default_value = "")]
    pub run_id: String,
    /// A hyperparameter. Repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub params: Vec<(String, String)>,
    /// A metric; the value must be a number. Repeatable.
    #[arg(long = "metric", value_name = "KEY=NUMBER", value_parser = parse_metric)]
    pub metrics: Vec<(String, f64)>,
    /// A tag on the version. Repeatable.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub tags: Vec<(String, String)>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum StageCommand {
    /// Move a version to a stage (experimental, staging, production, archived).
    Set {
        reference: String,
        #[arg(value_parser = parse_stage_arg)]
        stage: Stage,
        /// Why; recorded in the version's stage history.
        #[arg(long)]
        reason: String,
        /// Accept a signature that breaks callers of the Production version (approvers; the
        /// policy's signature_compatible gate then passes, naming you and --reason).
        #[arg(long)]
        override_signature: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// What the policy's gates say now about a version entering a stage; changes nothing.
    Check {
        reference: String,
        #[arg(value_parser = parse_stage_arg)]
        stage: Stage,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum AliasCommand {
    /// Point MODEL@ALIAS at version number VERSION.
    Set {
        model: String,
        alias: String,
        #[arg(value_parser = parse_version_number)]
        version: u64,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show which version an alias points at.
    Get {
        model: String,
        alias: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Remove an alias.
    Delete {
        model: String,
        alias: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Upload and download throughput against raw disk write and blake3.
    Ingest {
        /// Bytes to upload: 1GiB, 512MiB, 10MB, …
        #[arg(long, value_parser = parse_size, default_value = "1GiB")]
        size: u64,
        /// Number of files the bytes are split over.
        #[arg(long, default_value_t = 4)]
        files: u32,
        /// Directory for the baseline write and the download.
        #[arg(long, value_name = "DIR", default_value = ".")]
        scratch_dir: PathBuf,
        /// Seed of the generated data (default: random).
        #[arg(long)]
        seed: Option<u64>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The chunk protocol between two QUIC endpoints in this process, against a
    /// bare quinn stream and loopback TCP (no node needed).
    Transport {
        #[arg(long, value_parser = parse_size, default_value = "1GiB")]
        size: u64,
        /// Chunk requests in flight.
        #[arg(long, default_value_t = 8)]
        streams: usize,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// A serving agent's model_load_time_ms for a large version (pull from a node, verify,
    /// write, sync, load), beside writing and syncing as many bytes raw plus the runtime's own
    /// load. Needs an admin.
    ModelLoad {
        /// The version's size (MiB).
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The serving agent's own work per prediction (parse, validate against the signature,
    /// route), without the model, beside parsing alone (no node needed).
    AgentOverhead {
        #[arg(long, default_value_t = 200_000)]
        requests: u32,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Registrations per second and read latency under concurrent clients.
    Registry {
        #[arg(long, default_value_t = 8)]
        clients: u32,
        /// Seconds each phase runs.
        #[arg(long, value_name = "SECS", default_value_t = 10)]
        duration: u64,
        /// Model to register into (default: a new one).
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Promotion to Production through three gates and one approval (by a reviewer this
    /// creates), beside a plain stage change of a model without a policy. Needs an admin.
    Promotion {
        /// Promotions of each kind, alternating.
        #[arg(long, default_value_t = 200)]
        promotions: u32,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// How soon rollout steps and rollbacks of an endpoint reach the serving agents (real
    /// `quiver agent`s in this process, spread over the cluster's members), beside the
    /// rollback call itself. Needs an admin.
    Rollback {
        /// Serving agents, round robin over the members.
        #[arg(long, default_value_t = 20)]
        agents: u32,
        /// Rollouts started and rolled back.
        #[arg(long, default_value_t = 20)]
        rollbacks: u32,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// Runs one parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let node = commands::Node {
        endpoint: cli.endpoint,
        token: cli.token,
        ca: cli.ca,
        cert: cli.cert,
        key: cli.key,
    };
    match cli.command {
        Command::Model(command) => commands::model(&node, command).await,
        Command::Version(command) => commands::version(&node, command).await,
        Command::Stage(command) => commands::stage(&node, command).await,
        Command::Alias(command) => commands::alias(&node, command).await,
        Command::Status(output) => commands::status(&node, output.output).await,
        Command::Cluster(command) => cluster::run(&node, command).await,
        Command::Token(command) => access::token(&node, command).await,
        Command::Role(command) => access::role(&node, command).await,
        Command::Whoami(output) => access::whoami(&node, output).await,
        Command::Signature(command) => signature::run(command),
        Command::Audit(command) => audit::run(&node, command).await,
        Command::Policy(command) => governance::policy(&node, command).await,
        Command::Review(command) => governance::review(&node, command).await,
        Command::Lineage(command) => lineage::run(&node, command).await,
        Command::Watch(args) => watch::run(&node, args).await,
        Command::Agent(args) => agent::run(&node, args).await,
        Command::ExampleModel(args) => agent::example_model(args),
        Command::Deploy(command) => deploy::run(&node, command).await,
        Command::Bench(BenchCommand::Transport {
            size,
            streams,
            output,
        }) => benchmarks::transport(size, streams, output.output).await,
        Command::Bench(BenchCommand::AgentOverhead { requests, output }) => {
            benchmarks::agent_overhead(requests, output.output)
        }
        Command::Bench(command) => benchmarks::run(&node.client().await?, command).await,
    }
}

/// Writes command output to stdout. A reader that went away (a closed pipe)
/// is not an error: there is no one left to tell.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

/// The message printed after `error: `: the error and its causes, each once.
pub fn describe(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Entry point shared by the `quiver` binary and the end-to-end tests.
pub fn main() -> std::process::ExitCode {
    use std::process::ExitCode;
    // Usage errors exit with 2 here, inside clap.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            if error.is::<UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(line: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("quiver").chain(line.iter().copied()))
    }

    #[test]
    fn register_parses_repeated_flags() {
        let cli = parse(&[
            "version",
            "register",
            "reco",
            "--artifact",
            "a",
            "--artifact",
            "b",
            "--metric",
            "auc=0.9",
            "--param",
            "lr=0.1",
            "--tag",
            "team=x",
            "--run-id",
            "r1",
        ])
        .unwrap();
        let Command::Version(VersionCommand::Register(args)) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(args.artifacts, [PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(args.metrics, [("auc".to_string(), 0.9)]);
        assert_eq!(args.run_id, "r1");
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_flag_and_value() {
        let error = parse(&[
            "version",
            "register",
            "m",
            "--artifact",
            "a",
            "--metric",
            "auc=hi",
        ])
        .unwrap_err();
        assert_eq!(error.exit_code(), 2);
        let text = error.to_string();
        assert!(
            text.contains("--metric") && text.contains("auc=hi"),
            "{text}"
        );
        assert!(text.contains("metric 'auc'"), "{text}");

        let error = parse(&["model", "create", "m", "--tag", "novalue"]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("--tag") && text.contains("novalue"), "{text}");

        let error = parse(&["bench", "ingest", "--size", "1XB"]).unwrap_err();
        assert!(error.to_string().contains("unknown unit 'XB'"), "{error}");

        let error = parse(&["stage", "set", "m/1", "prod", "--reason", "x"]).unwrap_err();
        assert!(
            error.to_string().contains("unknown stage 'prod'"),
            "{error}"
        );
    }

    #[test]
    fn register_requires_an_artifact_and_stage_set_a_reason() {
        assert!(parse(&["version", "register", "m"]).is_err());
        assert!(parse(&["stage", "set", "m/1", "production"]).is_err());
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = parse(&[
            "model",
            "list",
            "--endpoint",
            "http://h:1",
            "--token",
            "qvr_t",
            "--output",
            "json",
            "--stale",
        ])
        .unwrap();
        assert_eq!(cli.endpoint, "http://h:1");
        assert_eq!(cli.token.as_deref(), Some("qvr_t"));
        let Command::Model(ModelCommand::List { read, .. }) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert!(read.stale);
        assert_eq!(read.output, Output::Json);
    }

    #[test]
    fn describe_prints_each_cause_once() {
        let error = anyhow::Error::new(std::io::Error::other("disk full")).context("write 'x'");
        assert_eq!(describe(&error), "write 'x': disk full");
        let sdk = crate::ClientError::Io {
            context: "read 'y'".into(),
            source: std::io::Error::other("gone"),
        };
        assert_eq!(describe(&anyhow::Error::new(sdk)), "read 'y': gone");
    }
}
