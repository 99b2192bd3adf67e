//! `quiver lineage …`: record edges, walk upstream of a version and downstream of an entity
//! (impact) as text, JSON or Graphviz DOT, quarantine an entity and lift it (decision 0021).

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use super::commands::{print_one, Node};
use super::view::{stage_text, status_text, table, time_text};
use super::{OutputArgs, ReadArgs};
use crate::proto::{LineageEdge, LineageGraph, QuarantineRecord, ReadConsistency};

#[derive(Debug, Subcommand)]
pub enum LineageCommand {
    /// Record that FROM went into TO: `quiver lineage add data:47 features:user-features@12`.
    /// Entities are KIND:ID with KIND data, features, code, run, version (version:MODEL/N) or
    /// deployment.
    Add {
        from: String,
        to: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Everything a version (MODEL/N, MODEL@ALIAS, MODEL:STAGE) came from, transitively.
    Upstream {
        reference: String,
        #[command(flatten)]
        graph: GraphArgs,
    },
    /// Everything that came from an entity, transitively: which versions, in which stages.
    Impact {
        entity: String,
        #[command(flatten)]
        graph: GraphArgs,
    },
    /// Block promotion (Staging, Production) of every version downstream of ENTITY, and flag
    /// those already in Production.
    Quarantine {
        entity: String,
        /// Why; kept with the quarantine and in the audit log.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Lift ENTITY's quarantine (audited, with the reason).
    Lift {
        entity: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The quarantines in force.
    Quarantines {
        #[command(flatten)]
        read: ReadArgs,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum GraphOutput {
    /// An indented list by distance, then the versions reached.
    #[default]
    Text,
    /// Stable JSON for scripts.
    Json,
    /// Graphviz DOT: `… --output dot | dot -Tsvg > lineage.svg`.
    Dot,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    #[arg(long, value_enum, default_value_t = GraphOutput::Text)]
    pub output: GraphOutput,
    /// Answer from the node's local state without a round of consensus.
    #[arg(long)]
    pub stale: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct QuarantineView {
    pub entity: String,
    pub reason: String,
    pub by: String,
    pub at_ms: i64,
}

impl From<&QuarantineRecord> for QuarantineView {
    fn from(q: &QuarantineRecord) -> Self {
        QuarantineView {
            entity: q.entity.clone(),
            reason: q.reason.clone(),
            by: q.by.clone(),
            at_ms: q.at_ms,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EdgeView {
    pub from: String,
    pub to: String,
    pub source: String,
    pub by: String,
    pub at_ms: i64,
}

impl From<&LineageEdge> for EdgeView {
    fn from(e: &LineageEdge) -> Self {
        EdgeView {
            from: e.from.clone(),
            to: e.to.clone(),
            source: e.source.clone(),
            by: e.by.clone(),
            at_ms: e.at_ms,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeView {
    pub entity: String,
    pub depth: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<QuarantineView>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GraphVersionView {
    pub reference: String,
    pub stage: String,
    pub status: String,
    pub depth: u32,
}

/// A lineage walk as the CLI prints it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GraphView {
    pub root: String,
    pub nodes: Vec<NodeView>,
    pub edges: Vec<EdgeView>,
    pub versions: Vec<GraphVersionView>,
    pub truncated: bool,
}

impl From<&LineageGraph> for GraphView {
    fn from(g: &LineageGraph) -> Self {
        GraphView {
            root: g.root.clone(),
            nodes: g
                .nodes
                .iter()
                .map(|n| NodeView {
                    entity: n.entity.clone(),
                    depth: n.depth,
                    quarantine: n.quarantine.as_ref().map(Into::into),
                })
                .collect(),
            edges: g.edges.iter().map(Into::into).collect(),
            versions: g
                .versions
                .iter()
                .map(|v| GraphVersionView {
                    reference: format!("{}/{}", v.model, v.version),
                    stage: stage_text(v.stage),
                    status: status_text(v.status),
                    depth: v.depth,
                })
                .collect(),
            truncated: g.truncated,
        }
    }
}

impl GraphView {
    /// Entities by distance from the start (`<-` upstream, `->` downstream), quarantines
    /// marked, then the versions reached.
    pub fn text(&self, arrow: &str) -> String {
        let mut nodes: Vec<&NodeView> = self.nodes.iter().collect();
        nodes.sort_by(|a, b| (a.depth, &a.entity).cmp(&(b.depth, &b.entity)));
        let mut out = String::new();
        for n in nodes {
            let indent = "  ".repeat(n.depth.min(16) as usize);
            let lead = if n.depth == 0 { "" } else { arrow };
            out.push_str(&format!("{indent}{lead}{}", n.entity));
            if let Some(q) = &n.quarantine {
                out.push_str(&format!(
                    "  QUARANTINED by {} at {}: {}",
                    q.by,
                    time_text(q.at_ms),
                    q.reason
                ));
            }
            out.push('\n');
        }
        if !self.versions.is_empty() {
            out.push_str("\nversions:\n");
            let rows: Vec<Vec<String>> = self
                .versions
                .iter()
                .map(|v| {
                    vec![
                        v.reference.clone(),
                        v.stage.clone(),
                        v.status.clone(),
                        v.depth.to_string(),
                    ]
                })
                .collect();
            out.push_str(&table(&["VERSION", "STAGE", "STATUS", "DEPTH"], &rows));
        }
        if self.truncated {
            out.push_str(&format!(
                "\n(truncated: the walk stopped at {} entities; the graph goes on)\n",
                self.nodes.len()
            ));
        }
        out
    }

    /// Graphviz DOT: entities as nodes (versions with their stage, quarantined ones red),
    /// explicit edges dashed.
    pub fn dot(&self) -> String {
        let stage_of = |entity: &str| {
            let reference = entity.strip_prefix("version:")?;
            self.versions
                .iter()
                .find(|v| v.reference == reference)
                .map(|v| v.stage.clone())
        };
        let mut out = String::from("digraph lineage {\n  rankdir=LR;\n  node [shape=box];\n");
        for n in &self.nodes {
            let mut label = n.entity.clone();
            if let Some(stage) = stage_of(&n.entity) {
                label.push_str(&format!("\n{stage}"));
            }
            let mut attrs = vec![format!("label={}", dot_string(&label))];
            if n.entity.starts_with("version:") {
                attrs.push("shape=ellipse".into());
            }
            if n.depth == 0 {
                attrs.push("penwidth=2".into());
            }
            if n.quarantine.is_some() {
                attrs.push("color=red".into());
                attrs.push("fontcolor=red".into());
                attrs.push(format!("tooltip={}", dot_string("quarantined")));
            }
            out.push_str(&format!(
                "  {} [{}];\n",
                dot_string(&n.entity),
                attrs.join(", ")
            ));
        }
        for e in &self.edges {
            let style = if e.source == "explicit" {
                " [style=dashed]"
            } else {
                ""
            };
            out.push_str(&format!(
                "  {} -> {}{style};\n",
                dot_string(&e.from),
                dot_string(&e.to)
            ));
        }
        if self.truncated {
            out.push_str("  label=\"truncated: the graph goes on\";\n");
        }
        out.push_str("}\n");
        out
    }
}

/// `text` as a DOT double-quoted string: `"` and `\` escaped; a newline becomes DOT's `\n`.
fn dot_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn quarantines_table(list: &[QuarantineView]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|q| {
            vec![
                q.entity.clone(),
                q.by.clone(),
                time_text(q.at_ms),
                q.reason.clone(),
            ]
        })
        .collect();
    table(&["ENTITY", "BY", "SINCE", "REASON"], &rows)
}

fn print_graph(output: GraphOutput, graph: &LineageGraph, arrow: &str) -> anyhow::Result<()> {
    let view = GraphView::from(graph);
    match output {
        GraphOutput::Json => outln!("{}", serde_json::to_string_pretty(&view)?),
        GraphOutput::Text => out!("{}", view.text(arrow)),
        GraphOutput::Dot => out!("{}", view.dot()),
    }
    Ok(())
}

/// Most quarantines `quiver status` looks behind.
const STATUS_QUARANTINES_MAX: usize = 64;

/// The versions in Production downstream of the quarantines in force, as `MODEL/N (ENTITY)`,
/// from this node's state. Empty when the caller may not read the quarantines (they need the
/// reader role cluster-wide; `quiver status` itself needs none) or the node cannot say.
pub async fn quarantined_in_production(client: &crate::Client) -> Vec<String> {
    let Ok(list) = client.list_quarantines(ReadConsistency::Stale).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for q in list.iter().take(STATUS_QUARANTINES_MAX) {
        let Ok(g) = client
            .lineage_impact(&q.entity, ReadConsistency::Stale)
            .await
        else {
            continue;
        };
        for v in &g.versions {
            if v.stage == crate::proto::Stage::Production as i32 {
                out.push(format!("{}/{} ({})", v.model, v.version, q.entity));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn read_consistency(stale: bool) -> ReadConsistency {
    match stale {
        true => ReadConsistency::Stale,
        false => ReadConsistency::Linearizable,
    }
}

pub async fn run(node: &Node, command: LineageCommand) -> anyhow::Result<()> {
    let client = node.client().await?;
    match command {
        LineageCommand::Add { from, to, output } => {
            let edge = client.add_lineage_edge(&from, &to).await?;
            print_one(output.output, &EdgeView::from(&edge), |e| {
                format!("recorded {} -> {}\n", e.from, e.to)
            })
        }
        LineageCommand::Upstream { reference, graph } => {
            let g = client
                .lineage_upstream(&reference, read_consistency(graph.stale))
                .await?;
            print_graph(graph.output, &g, "<- ")
        }
        LineageCommand::Impact { entity, graph } => {
            let g = client
                .lineage_impact(&entity, read_consistency(graph.stale))
                .await?;
            print_graph(graph.output, &g, "-> ")
        }
        LineageCommand::Quarantine {
            entity,
            reason,
            output,
        } => {
            let q = client.quarantine(&entity, &reason).await?;
            print_one(output.output, &QuarantineView::from(&q), |q| {
                format!(
                    "quarantined {}: no version downstream may enter staging or production \
                     until `quiver lineage lift {} --reason …`\n",
                    q.entity, q.entity
                )
            })
        }
        LineageCommand::Lift {
            entity,
            reason,
            output,
        } => {
            let q = client.lift_quarantine(&entity, &reason).await?;
            print_one(output.output, &QuarantineView::from(&q), |q| {
                format!(
                    "lifted the quarantine of {} (set by {}: {})\n",
                    q.entity, q.by, q.reason
                )
            })
        }
        LineageCommand::Quarantines { read } => {
            let list = client
                .list_quarantines(read_consistency(read.stale))
                .await?;
            let views: Vec<QuarantineView> = list.iter().map(Into::into).collect();
            print_one(read.output, &views, |v| quarantines_table(v))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{LineageNode, LineageVersion, Stage, VersionStatus};

    fn graph() -> LineageGraph {
        LineageGraph {
            root: "data:47".into(),
            nodes: vec![
                LineageNode {
                    entity: "data:47".into(),
                    depth: 0,
                    quarantine: Some(QuarantineRecord {
                        entity: "data:47".into(),
                        reason: "label leak".into(),
                        by: "carol".into(),
                        at_ms: 0,
                    }),
                },
                LineageNode {
                    entity: "version:reco/1".into(),
                    depth: 1,
                    quarantine: None,
                },
                LineageNode {
                    entity: "data:say \"hi\" \\ there".into(),
                    depth: 1,
                    quarantine: None,
                },
            ],
            edges: vec![
                LineageEdge {
                    from: "data:47".into(),
                    to: "version:reco/1".into(),
                    source: "registration".into(),
                    ..Default::default()
                },
                LineageEdge {
                    from: "data:47".into(),
                    to: "data:say \"hi\" \\ there".into(),
                    source: "explicit".into(),
                    ..Default::default()
                },
            ],
            versions: vec![LineageVersion {
                model: "reco".into(),
                version: 1,
                stage: Stage::Production.into(),
                status: VersionStatus::Ready.into(),
                depth: 1,
            }],
            truncated: false,
            nodes_max: 10_000,
        }
    }

    #[test]
    fn text_lists_entities_by_distance_marks_quarantines_and_lists_versions() {
        let text = GraphView::from(&graph()).text("-> ");
        assert!(
            text.starts_with("data:47  QUARANTINED by carol at -: label leak\n"),
            "{text}"
        );
        assert!(text.contains("\n  -> version:reco/1\n"), "{text}");
        assert!(
            text.contains("reco/1") && text.contains("production"),
            "{text}"
        );
        assert!(!text.contains("truncated"));
    }

    #[test]
    fn dot_escapes_ids_marks_quarantines_and_dashes_explicit_edges() {
        let dot = GraphView::from(&graph()).dot();
        assert!(dot.starts_with("digraph lineage {"), "{dot}");
        assert!(dot.ends_with("}\n"));
        assert!(
            dot.contains(r#""data:say \"hi\" \\ there""#),
            "quotes and backslashes escaped: {dot}"
        );
        assert!(dot.contains("color=red"), "{dot}");
        assert!(
            dot.contains(r#""data:47" -> "version:reco/1";"#)
                && dot.contains(r#"-> "data:say \"hi\" \\ there" [style=dashed];"#),
            "{dot}"
        );
        assert!(
            dot.contains(r#"label="version:reco/1\nproduction""#),
            "{dot}"
        );
        // Every quote outside an escape is paired: the document stays balanced.
        let unescaped = dot.replace("\\\\", "").replace("\\\"", "");
        assert_eq!(unescaped.matches('"').count() % 2, 0);
    }

    #[test]
    fn json_has_a_stable_shape() {
        let json = serde_json::to_value(GraphView::from(&graph())).unwrap();
        assert_eq!(json["root"], "data:47");
        assert_eq!(json["nodes"][0]["quarantine"]["reason"], "label leak");
        assert!(json["nodes"][1].get("quarantine").is_none());
        assert_eq!(json["versions"][0]["reference"], "reco/1");
        assert_eq!(json["versions"][0]["stage"], "production");
        assert_eq!(json["edges"][1]["source"], "explicit");
        assert_eq!(json["truncated"], false);
    }

    #[test]
    fn dot_strings_survive_hostile_text() {
        for text in ["", "\0", "a\nb", "🚀\"\\", "../../etc/passwd", "C:\\x"] {
            let quoted = dot_string(text);
            assert!(quoted.starts_with('"') && quoted.ends_with('"'));
            assert!(
                !quoted.contains('\0') && !quoted.contains('\n'),
                "{quoted:?}"
            );
        }
    }
}
