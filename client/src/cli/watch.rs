//! `quiver watch`: follow changes as they are applied (decision 0024), one line per event (one
//! JSON object per line with `--output json`), resumed on another member when the node goes away.

use clap::Args;
use serde::Serialize;

use super::args::Output;
use super::commands::Node;
use super::view::{stage_text, time_text};
use crate::proto::{WatchEvent, WatchRequest};
use crate::sdk::{Client, WatchItem, Watcher};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Every change to this model: versions, stages, aliases, deployments.
    #[arg(long, conflicts_with_all = ["reference", "deployment"])]
    pub model: Option<String>,
    /// Where an alias points (MODEL@ALIAS), or which versions enter and leave a stage
    /// (MODEL:STAGE).
    #[arg(long = "ref", conflicts_with = "deployment")]
    pub reference: Option<String>,
    /// One deployment endpoint, by name (`--endpoint` is the node to talk to).
    #[arg(long, value_name = "ENDPOINT")]
    pub deployment: Option<String>,
    /// Resume: only events after this revision (the last one a watch printed). Default: from
    /// now.
    #[arg(long)]
    pub after: Option<u64>,
    /// Stop after this many events. Default: follow until interrupted.
    #[arg(long)]
    pub count: Option<u64>,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// One event as `--output json` prints it (one object per line).
#[derive(Serialize)]
struct EventView<'a> {
    revision: u64,
    at_ms: i64,
    principal: &'a str,
    kind: &'a str,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to_stage: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    alias: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    endpoint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    description: &'a str,
}

fn view(e: &WatchEvent) -> EventView<'_> {
    let stage = |raw: i32| (raw != 0).then(|| stage_text(raw));
    EventView {
        revision: e.revision,
        at_ms: e.at_ms,
        principal: &e.principal,
        kind: &e.kind,
        model: &e.model,
        version: (e.version != 0).then_some(e.version),
        from_stage: stage(e.from_stage),
        to_stage: stage(e.to_stage),
        alias: &e.alias,
        endpoint: &e.endpoint,
        generation: (e.generation != 0).then_some(e.generation),
        description: &e.description,
    }
}

/// The node named first, then the other members it knows of (best effort: a node that cannot
/// say is watched alone).
async fn members(first: Client) -> Vec<Client> {
    let mut members = vec![first.clone()];
    if let Ok(status) = first.cluster_status().await {
        for m in status.members {
            if m.node_id != status.node_id && !m.api_addr.is_empty() {
                if let Ok(client) = first.connect_to(&m.api_addr).await {
                    members.push(client);
                }
            }
        }
    }
    members
}

pub async fn run(node: &Node, args: WatchArgs) -> anyhow::Result<()> {
    let client = node.client().await?;
    let filter = WatchRequest {
        model: args.model.unwrap_or_default(),
        reference: args.reference.unwrap_or_default(),
        endpoint: args.deployment.unwrap_or_default(),
        after_revision: args.after,
    };
    let mut watcher = Watcher::new(members(client).await, filter)?;
    let mut printed = 0u64;
    if args.count == Some(0) {
        return Ok(());
    }
    loop {
        match watcher.next().await? {
            WatchItem::Batch(batch) => {
                for e in &batch.events {
                    match args.output {
                        Output::Json => outln!("{}", serde_json::to_string(&view(e))?),
                        Output::Table => outln!(
                            "{:>8}  {}  {:<16}  {}",
                            e.revision,
                            time_text(e.at_ms),
                            e.principal,
                            e.description
                        ),
                    }
                    printed += 1;
                    if args.count.is_some_and(|count| printed >= count) {
                        return Ok(());
                    }
                }
            }
            WatchItem::Resumed { endpoint, after } => {
                eprintln!("watch resumed on {endpoint} after revision {after}");
            }
            WatchItem::Behind(message) => {
                eprintln!("{message}");
                anyhow::bail!(
                    "the watch fell behind the events this registry keeps: re-read what you \
                     follow (`quiver version list`, `quiver alias get`), then run `quiver watch` \
                     again without --after"
                );
            }
        }
    }
}
