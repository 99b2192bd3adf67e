//! `quiver deploy …`: endpoints, their traffic split and shadows, rollouts and rollbacks
//! (issue 15). A plan is written as the steps people say: `shadow:10m,5%:30m,25%:30m,100%`
//! (or `shadow 10m -> 5% 30m -> 100%`).

use clap::Subcommand;
use serde::Serialize;

use super::commands::{print_one, Node};
use super::view::{table, time_text};
use super::{OutputArgs, ReadArgs};
use crate::proto::{Deployment, DeploymentRecord, ReadConsistency, RolloutBounds, RolloutStep};

#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Create ENDPOINT serving all traffic from a Production version (--version reco:production).
    Create {
        #[arg(value_name = "ENDPOINT")]
        name: String,
        /// The version: MODEL/N, MODEL@ALIAS or MODEL:production.
        #[arg(long)]
        version: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Set ENDPOINT's split by hand: --split 14=95,15=5 (shares sum to 100), --shadow 16.
    Set {
        #[arg(value_name = "ENDPOINT")]
        name: String,
        #[arg(long, value_parser = parse_split)]
        split: Split,
        /// A version receiving copies of requests (answers logged, never returned). Repeatable.
        #[arg(long = "shadow", value_name = "N")]
        shadows: Vec<u64>,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Move ENDPOINT's traffic to a version step by step: --plan shadow:10m,5%:30m,25%:30m,100%.
    /// Each step holds its duration within the bounds before the next.
    Rollout {
        #[arg(value_name = "ENDPOINT")]
        name: String,
        /// The version to move to (MODEL/N, MODEL@ALIAS, MODEL:staging …).
        #[arg(long)]
        version: String,
        #[arg(long, value_parser = parse_plan)]
        plan: Plan,
        /// Highest error rate (percent) of the new version before it is rolled back.
        #[arg(long, default_value_t = 1.0)]
        max_error_rate: f64,
        /// Highest p99 latency (ms) of the new version before it is rolled back.
        #[arg(long, default_value_t = 500.0)]
        max_p99_ms: f64,
        /// Requests the new version must have seen in a step before the controller moves on.
        #[arg(long, default_value_t = 0)]
        min_requests: u64,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Move ENDPOINT's rollout to its next step now that the step in force has held.
    Advance {
        #[arg(value_name = "ENDPOINT")]
        name: String,
        /// The step you saw in force (from `deploy status`, counted from 1); default: whichever
        /// is.
        #[arg(long)]
        from_step: Option<u32>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Hold ENDPOINT's rollout at its step.
    Pause {
        #[arg(value_name = "ENDPOINT")]
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Let ENDPOINT's rollout go on (the step's clock starts again).
    Resume {
        #[arg(value_name = "ENDPOINT")]
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Route all of ENDPOINT's traffic back to the version that served before (recorded with
    /// who, why and when).
    Rollback {
        #[arg(value_name = "ENDPOINT")]
        name: String,
        /// Why (required: the history keeps it).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// ENDPOINT's split, shadows and rollout.
    Status {
        #[arg(value_name = "ENDPOINT")]
        name: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// ENDPOINT's changes, newest first.
    History {
        #[arg(value_name = "ENDPOINT")]
        name: String,
        /// Most records (default 50, at most 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Endpoints (of --model only, if given).
    List {
        #[arg(long, default_value = "")]
        model: String,
        #[arg(long, default_value = "")]
        page_token: String,
        #[command(flatten)]
        read: ReadArgs,
    },
}

/// A split as given: (version, percent).
pub type Split = Vec<(u64, u32)>;
/// A plan as given.
pub type Plan = Vec<RolloutStep>;

/// `14=95,15=5`.
pub fn parse_split(text: &str) -> Result<Split, String> {
    let bad = |part: &str, why: &str| {
        format!("'{part}' {why}: give VERSION=PERCENT pairs, e.g. 14=95,15=5 (shares sum to 100)")
    };
    text.split(',')
        .map(str::trim)
        .map(|part| {
            let (v, p) = part
                .split_once('=')
                .ok_or_else(|| bad(part, "has no '='"))?;
            let version = v
                .trim()
                .parse::<u64>()
                .map_err(|_| bad(part, "has no version number"))?;
            let percent = p
                .trim()
                .trim_end_matches('%')
                .parse::<u32>()
                .map_err(|_| bad(part, "has no whole percentage"))?;
            Ok((version, percent))
        })
        .collect()
}

/// `10m`, `30s`, `2h`, `500ms`, `1d`: milliseconds.
fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// `shadow:10m,5%:30m,25%:30m,100%` or `shadow 10m -> 5% 30m -> 100%` (`→` too).
pub fn parse_plan(text: &str) -> Result<Plan, String> {
    let normalized = text.replace("->", ",").replace('→', ",");
    let mut plan = Vec::new();
    for part in normalized.split(',').map(str::trim) {
        let bad = |why: &str| {
            format!(
                "step '{part}' {why}: write steps as shadow:10m,5%:30m,25%:30m,100% (a share in \
                 percent or 'shadow', then how long it holds)"
            )
        };
        if part.is_empty() {
            return Err(bad("is empty"));
        }
        let mut pieces = part.split(|c: char| c == ':' || c.is_whitespace());
        let share = pieces.next().unwrap_or_default();
        let duration = pieces.find(|p| !p.is_empty());
        if pieces.any(|p| !p.is_empty()) {
            return Err(bad("has more than a share and a duration"));
        }
        let percent = if share.eq_ignore_ascii_case("shadow") {
            0
        } else {
            share
                .strip_suffix('%')
                .and_then(|p| p.parse::<u32>().ok())
                .ok_or_else(|| bad("does not start with a share such as 5% or shadow"))?
        };
        let duration_ms = match duration {
            None => 0,
            Some(d) => parse_duration_ms(d)
                .ok_or_else(|| bad("has a duration that is not like 30s, 10m, 2h or 1d"))?,
        };
        plan.push(RolloutStep {
            percent,
            duration_ms,
        });
    }
    Ok(plan)
}

fn step_text(step: &RolloutStep) -> String {
    let share = match step.percent {
        0 => "shadow".to_string(),
        p => format!("{p}%"),
    };
    if step.duration_ms == 0 {
        return share;
    }
    let d = step.duration_ms;
    let duration = match d {
        d if d % 3_600_000 == 0 => format!("{}h", d / 3_600_000),
        d if d % 60_000 == 0 => format!("{}m", d / 60_000),
        d if d % 1000 == 0 => format!("{}s", d / 1000),
        d => format!("{d}ms"),
    };
    format!("{share} {duration}")
}

/// An endpoint as `--output json` prints it.
#[derive(Serialize)]
struct DeploymentView {
    endpoint: String,
    model: String,
    namespace: String,
    split: Vec<ShareView>,
    shadows: Vec<u64>,
    stable: u64,
    previous: Option<u64>,
    rollout: Option<RolloutView>,
    generation: u64,
    traffic: String,
    updated_by: String,
    updated_at_ms: i64,
}

#[derive(Serialize)]
struct ShareView {
    version: u64,
    percent: u32,
}

#[derive(Serialize)]
struct RolloutView {
    target: u64,
    plan: Vec<String>,
    /// Counted from 1.
    step: u32,
    step_started_ms: i64,
    paused: bool,
    max_error_rate_pct: f64,
    max_p99_ms: f64,
}

fn deployment_view(d: Deployment) -> DeploymentView {
    DeploymentView {
        split: d
            .split
            .iter()
            .map(|s| ShareView {
                version: s.version,
                percent: s.percent,
            })
            .collect(),
        rollout: d.rollout.map(|r| {
            let bounds = r.bounds.unwrap_or_default();
            RolloutView {
                target: r.target,
                plan: r.plan.iter().map(step_text).collect(),
                step: r.step + 1,
                step_started_ms: r.step_started_ms,
                paused: r.paused,
                max_error_rate_pct: bounds.error_rate_pct_max,
                max_p99_ms: bounds.p99_ms_max,
            }
        }),
        endpoint: d.endpoint,
        model: d.model,
        namespace: d.namespace,
        shadows: d.shadows,
        stable: d.stable,
        previous: d.previous,
        generation: d.generation,
        traffic: d.traffic,
        updated_by: d.updated_by,
        updated_at_ms: d.updated_at_ms,
    }
}

fn deployment_text(d: &DeploymentView) -> String {
    let mut out = format!(
        "endpoint {} (model {}, namespace {})\ntraffic: {}\nstable: {}/{}",
        d.endpoint, d.model, d.namespace, d.traffic, d.model, d.stable
    );
    if let Some(p) = d.previous {
        out.push_str(&format!("; rollback goes to {}/{p}", d.model));
    }
    match &d.rollout {
        Some(r) => out.push_str(&format!(
            "\nrollout to {}/{}: step {} of {} ({}), since {}{}\nplan: {}\nbounds: errors ≤ {}%, \
             p99 ≤ {} ms",
            d.model,
            r.target,
            r.step,
            r.plan.len(),
            r.plan.get(r.step as usize - 1).cloned().unwrap_or_default(),
            time_text(r.step_started_ms),
            if r.paused { ", PAUSED" } else { "" },
            r.plan.join(" → "),
            r.max_error_rate_pct,
            r.max_p99_ms
        )),
        None => out.push_str("\nrollout: none"),
    }
    out.push_str(&format!(
        "\nchange {} by {} at {}\n",
        d.generation,
        d.updated_by,
        time_text(d.updated_at_ms)
    ));
    out
}

#[derive(Serialize)]
struct RecordView {
    generation: u64,
    kind: String,
    principal: String,
    at_ms: i64,
    reason: String,
    traffic: String,
}

fn record_view(r: DeploymentRecord) -> RecordView {
    RecordView {
        generation: r.generation,
        kind: r.kind,
        principal: r.principal,
        at_ms: r.at_ms,
        reason: r.reason,
        traffic: r.traffic,
    }
}

fn consistency(read: &ReadArgs) -> ReadConsistency {
    if read.stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    }
}

fn print_deployment(output: &OutputArgs, d: Deployment) -> anyhow::Result<()> {
    print_one(output.output, &deployment_view(d), deployment_text)
}

pub async fn run(node: &Node, command: DeployCommand) -> anyhow::Result<()> {
    let client = node.client().await?;
    match command {
        DeployCommand::Create {
            name: endpoint,
            version,
            reason,
            output,
        } => print_deployment(
            &output,
            client
                .create_deployment(&endpoint, &version, &reason)
                .await?,
        ),
        DeployCommand::Set {
            name: endpoint,
            split,
            shadows,
            reason,
            output,
        } => print_deployment(
            &output,
            client
                .set_traffic(&endpoint, &split, &shadows, &reason)
                .await?,
        ),
        DeployCommand::Rollout {
            name: endpoint,
            version,
            plan,
            max_error_rate,
            max_p99_ms,
            min_requests,
            reason,
            output,
        } => {
            let bounds = RolloutBounds {
                error_rate_pct_max: max_error_rate,
                p99_ms_max: max_p99_ms,
                min_requests,
            };
            print_deployment(
                &output,
                client
                    .start_rollout(&endpoint, &version, plan, Some(bounds), &reason)
                    .await?,
            )
        }
        DeployCommand::Advance {
            name: endpoint,
            from_step,
            output,
        } => {
            // People count steps from 1, the wire from 0.
            let from_step = from_step.map(|s| s.saturating_sub(1));
            print_deployment(&output, client.advance_rollout(&endpoint, from_step).await?)
        }
        DeployCommand::Pause {
            name: endpoint,
            reason,
            output,
        } => print_deployment(
            &output,
            client.pause_rollout(&endpoint, true, &reason).await?,
        ),
        DeployCommand::Resume {
            name: endpoint,
            reason,
            output,
        } => print_deployment(
            &output,
            client.pause_rollout(&endpoint, false, &reason).await?,
        ),
        DeployCommand::Rollback {
            name: endpoint,
            reason,
            output,
        } => print_deployment(&output, client.rollback(&endpoint, &reason).await?),
        DeployCommand::Status {
            name: endpoint,
            read,
        } => {
            let d = client.get_deployment(&endpoint, consistency(&read)).await?;
            print_one(read.output, &deployment_view(d), deployment_text)
        }
        DeployCommand::History {
            name: endpoint,
            limit,
            read,
        } => {
            let records: Vec<RecordView> = client
                .deployment_history(&endpoint, limit, consistency(&read))
                .await?
                .into_iter()
                .map(record_view)
                .collect();
            print_one(read.output, &records, |records| {
                let rows: Vec<Vec<String>> = records
                    .iter()
                    .map(|r| {
                        vec![
                            r.generation.to_string(),
                            time_text(r.at_ms),
                            r.kind.clone(),
                            r.principal.clone(),
                            r.traffic.clone(),
                            r.reason.clone(),
                        ]
                    })
                    .collect();
                table(&["CHANGE", "AT", "KIND", "BY", "TRAFFIC", "REASON"], &rows)
            })
        }
        DeployCommand::List {
            model,
            page_token,
            read,
        } => {
            let page = client
                .list_deployments(&model, &page_token, consistency(&read))
                .await?;
            let next = page.next_page_token.clone();
            let views: Vec<DeploymentView> =
                page.deployments.into_iter().map(deployment_view).collect();
            print_one(read.output, &views, |views| {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|d| {
                        vec![
                            d.endpoint.clone(),
                            d.model.clone(),
                            d.traffic.clone(),
                            match &d.rollout {
                                Some(r) => format!("step {}/{}", r.step, r.plan.len()),
                                None => "-".into(),
                            },
                        ]
                    })
                    .collect();
                let mut text = table(&["ENDPOINT", "MODEL", "TRAFFIC", "ROLLOUT"], &rows);
                if !next.is_empty() {
                    text.push_str(&format!("next page: --page-token {next}\n"));
                }
                text
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(plan: &Plan) -> Vec<(u32, u64)> {
        plan.iter().map(|s| (s.percent, s.duration_ms)).collect()
    }

    #[test]
    fn a_plan_reads_as_people_write_it() {
        let want = vec![(0, 600_000), (5, 1_800_000), (25, 1_800_000), (100, 0)];
        for text in [
            "shadow:10m,5%:30m,25%:30m,100%",
            "shadow 10m -> 5% 30m -> 25% 30m -> 100%",
            "shadow 10m → 5% 30m → 25% 30m → 100%",
            " SHADOW:10m , 5%:30m,25%:30m , 100% ",
        ] {
            assert_eq!(steps(&parse_plan(text).unwrap()), want, "{text}");
        }
        assert_eq!(
            steps(&parse_plan("5%:90s,50%:2h,100%:1d").unwrap()),
            [(5, 90_000), (50, 7_200_000), (100, 86_400_000)]
        );
        assert_eq!(
            step_text(&parse_plan("5%:90s").unwrap()[0]),
            "5% 90s".to_string()
        );
    }

    #[test]
    fn a_bad_plan_or_split_is_refused_naming_the_step_and_the_form() {
        let long = "9".repeat(100);
        for text in [
            "",
            ",",
            "5",
            "five%:1m",
            "5%:1y",
            "5%:10m:extra",
            "5%:-1m",
            "\0",
            "../x",
            &format!("{long}%:1m"),
            "5%:99999999999999999999d",
        ] {
            let e = parse_plan(text).unwrap_err();
            assert!(
                e.contains("step") && e.contains("shadow:10m"),
                "{text:?}: {e}"
            );
        }
        assert_eq!(parse_split("14=95,15=5%").unwrap(), [(14, 95), (15, 5)]);
        for text in ["", "14", "x=5", "14=x", "14=95;15=5", "-1=100", "14=\0"] {
            let e = parse_split(text).unwrap_err();
            assert!(e.contains("VERSION=PERCENT"), "{text:?}: {e}");
        }
    }
}
