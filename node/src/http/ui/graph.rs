//! The lineage graph as server-side SVG, pure: an entity's upstream walk (what it came from)
//! runs in columns to its left, its impact walk (what came from it) to its right, one column
//! per step; each box links to the entity's page. No layout engine, no script.

use std::collections::{BTreeMap, BTreeSet};

use maud::{html, Markup};

use super::view;
use crate::lineage::{Entity, Walk};

/// Most entities each direction's walk renders, and most edges read of each of them
/// (`lineage_walk_bounded`): a graph cut there says so.
pub const GRAPH_NODES_MAX: usize = 60;
/// Characters of an entity shown in its box (the whole in its tooltip).
const LABEL_CHARS_MAX: usize = 26;
const COLUMN_WIDTH: i64 = 240;
const NODE_WIDTH: i64 = 200;
const ROW_HEIGHT: i64 = 44;
const NODE_HEIGHT: i64 = 28;
const PAD: i64 = 16;

/// One placed box.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub entity: Entity,
    pub x: i64,
    pub y: i64,
}

/// The graph, placed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub nodes: Vec<Placed>,
    /// Indexes into `nodes`: (from, to).
    pub edges: Vec<(usize, usize)>,
    pub width: i64,
    pub height: i64,
}

/// Places `start`, its `upstream` walk (columns left of it) and its `impact` walk (right).
pub fn layout(start: &Entity, upstream: Option<&Walk>, impact: Option<&Walk>) -> Layout {
    let mut column: BTreeMap<Entity, i64> = BTreeMap::new();
    column.insert(start.clone(), 0);
    for (walk, sign) in [(upstream, -1), (impact, 1)] {
        for (entity, depth) in walk.iter().flat_map(|w| &w.nodes) {
            column
                .entry(entity.clone())
                .or_insert(sign * i64::from(*depth));
        }
    }
    let min = column.values().copied().min().unwrap_or(0);
    let max = column.values().copied().max().unwrap_or(0);
    let mut rows: BTreeMap<i64, i64> = BTreeMap::new();
    let mut index: BTreeMap<&Entity, usize> = BTreeMap::new();
    let mut nodes = Vec::with_capacity(column.len());
    // Entities in order within each column (the map is ordered by entity).
    for (entity, col) in &column {
        let row = rows.entry(*col).or_insert(0);
        index.insert(entity, nodes.len());
        nodes.push(Placed {
            entity: entity.clone(),
            x: PAD + (col - min) * COLUMN_WIDTH,
            y: PAD + *row * ROW_HEIGHT,
        });
        *row += 1;
    }
    let mut edges = BTreeSet::new();
    for walk in [upstream, impact].into_iter().flatten() {
        for e in &walk.edges {
            if let (Some(&from), Some(&to)) = (index.get(&e.from), index.get(&e.to)) {
                edges.insert((from, to));
            }
        }
    }
    let tallest = rows.values().copied().max().unwrap_or(1);
    Layout {
        nodes,
        edges: edges.into_iter().collect(),
        width: 2 * PAD + (max - min) * COLUMN_WIDTH + NODE_WIDTH,
        height: 2 * PAD + (tallest - 1) * ROW_HEIGHT + NODE_HEIGHT,
    }
}

/// Where an entity's box links: a version's page, else the entity's own lineage page.
pub fn entity_url(entity: &Entity) -> String {
    match entity.as_version() {
        Some((model, number)) => view::version_url(model, number),
        None => format!(
            "/ui/lineage?entity={}",
            view::query_value(&entity.to_string())
        ),
    }
}

fn label(text: &str) -> String {
    if text.chars().count() <= LABEL_CHARS_MAX {
        return text.to_string();
    }
    let head: String = text.chars().take(LABEL_CHARS_MAX - 1).collect();
    format!("{head}…")
}

/// The SVG of `layout`; `start` is marked, and so is every entity in `quarantined`.
pub fn svg(layout: &Layout, start: &Entity, quarantined: &BTreeSet<Entity>) -> Markup {
    html! {
        svg.lineage xmlns="http://www.w3.org/2000/svg" role="img"
            width=(layout.width) height=(layout.height)
            viewBox={ "0 0 " (layout.width) " " (layout.height) }
            aria-label={ "lineage of " (start) } {
            defs {
                marker #arrow viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7"
                    markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" {}
                }
            }
            @for (from, to) in &layout.edges {
                @let (a, b) = (&layout.nodes[*from], &layout.nodes[*to]);
                @let (x1, x2) = if a.x <= b.x { (a.x + NODE_WIDTH, b.x) } else { (a.x, b.x + NODE_WIDTH) };
                line x1=(x1) y1=(a.y + NODE_HEIGHT / 2) x2=(x2) y2=(b.y + NODE_HEIGHT / 2)
                    marker-end="url(#arrow)"
                    data-from=(a.entity) data-to=(b.entity) {}
            }
            @for node in &layout.nodes {
                @let text = node.entity.to_string();
                @let class = format!(
                    "node kind-{}{}{}",
                    node.entity.kind.as_str(),
                    if &node.entity == start { " start" } else { "" },
                    if quarantined.contains(&node.entity) { " quarantined" } else { "" },
                );
                a href=(entity_url(&node.entity)) {
                    g class=(class) data-entity=(text) {
                        title { (text) @if quarantined.contains(&node.entity) { " (quarantined)" } }
                        rect x=(node.x) y=(node.y) width=(NODE_WIDTH) height=(NODE_HEIGHT) rx="4" {}
                        text x=(node.x + 8) y=(node.y + 18) { (label(&text)) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lineage::{Edge, EdgeSource, EntityKind};

    fn entity(kind: EntityKind, id: &str) -> Entity {
        Entity {
            kind,
            id: id.into(),
        }
    }

    fn edge(from: &Entity, to: &Entity) -> Edge {
        Edge {
            from: from.clone(),
            to: to.clone(),
            source: EdgeSource::Registration,
            by: "t".into(),
            at_ms: 0,
        }
    }

    #[test]
    fn upstream_goes_left_impact_right_and_edges_join_placed_boxes() {
        let v = Entity::version("reco", 2);
        let data = entity(EntityKind::Data, "snap-1");
        let code = entity(EntityKind::Code, "abc");
        let child = Entity::version("ranker", 1);
        let up = Walk {
            nodes: vec![(v.clone(), 0), (data.clone(), 1), (code.clone(), 1)],
            edges: vec![edge(&data, &v), edge(&code, &v)],
            truncated: false,
        };
        let down = Walk {
            nodes: vec![(v.clone(), 0), (child.clone(), 1)],
            edges: vec![edge(&v, &child)],
            truncated: false,
        };
        let l = layout(&v, Some(&up), Some(&down));
        assert_eq!(l.nodes.len(), 4);
        let x_of = |e: &Entity| l.nodes.iter().find(|n| &n.entity == e).unwrap().x;
        assert!(x_of(&data) < x_of(&v) && x_of(&v) < x_of(&child));
        assert_eq!(x_of(&data), x_of(&code));
        assert_eq!(l.edges.len(), 3);
        let markup = svg(&l, &v, &BTreeSet::from([data.clone()])).into_string();
        for e in [&v, &data, &code, &child] {
            assert!(markup.contains(&format!("data-entity=\"{e}\"")), "{markup}");
        }
        assert!(markup.contains("/ui/models/ranker/versions/1"));
        assert!(markup.contains("/ui/lineage?entity=data%3Asnap-1"));
        assert!(markup.contains("quarantined"));
    }

    #[test]
    fn hostile_ids_are_escaped_and_cut() {
        let v = Entity::version("reco", 1);
        let evil = entity(EntityKind::Run, "<script>alert(1)</script>\"&'");
        let up = Walk {
            nodes: vec![(v.clone(), 0), (evil.clone(), 1)],
            edges: vec![edge(&evil, &v)],
            truncated: false,
        };
        let markup = svg(&layout(&v, Some(&up), None), &v, &BTreeSet::new()).into_string();
        assert!(!markup.contains("<script>"), "{markup}");
        assert!(markup.contains("&lt;script&gt;"));
    }

    #[test]
    fn a_lone_entity_is_one_box() {
        let v = Entity::version("reco", 1);
        let l = layout(&v, None, None);
        assert_eq!(l.nodes.len(), 1);
        assert!(l.edges.is_empty());
        assert_eq!(l.width, 2 * PAD + NODE_WIDTH);
    }
}
