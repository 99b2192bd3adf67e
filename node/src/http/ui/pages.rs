//! The UI's pages. Each handler authenticates the session and checks the role the matching API
//! call checks (`Session::with`, or the same per-namespace filter a listing applies), reads one
//! bounded page through `Node::read` (linearizable, like the CLI's default, so a page read on a
//! follower shows a change the leader has committed), and renders it.

use std::collections::BTreeSet;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use quiver_transfer::quic::ChunkPeers;
use quiver_transfer::ChunkSource;
use serde::Deserialize;

use super::graph::{self, GRAPH_NODES_MAX};
use super::session::Session;
use super::view::{self, html_response, page, shown};
use super::{Ui, UiError, UiResult, UiState};
use crate::access::Target;
use crate::auth::{allows, Need, Role};
use crate::catalog::SearchFilter;
use crate::command::Response as Applied;
use crate::domain::{stage_label, status_label, validate_name, RiskTier, Stage, Version};
use crate::error::NodeError;
use crate::governance::{GateReport, ReviewState};
use crate::lineage::{Direction, Entity, Walk};
use crate::node::Consistency;
use crate::state::{AuditFilter, ReviewFilter};

/// Models per catalog page.
pub const CATALOG_PAGE_SIZE: usize = 25;
/// Rows per page of every other listing (versions, reviews, deployments, audit records).
pub const LIST_PAGE_SIZE: usize = 50;
/// A model page's deployments (its endpoints beyond are on the deployments page).
pub const MODEL_DEPLOYMENTS_MAX: usize = 20;
/// A version page's files shown (the rest are counted).
pub const VERSION_FILES_SHOWN_MAX: usize = 200;
/// Longest query-string value accepted (a search, a page token, a filter).
pub const QUERY_VALUE_BYTES_MAX: usize = 512;
/// Longest review comment accepted from the form.
pub const COMMENT_BYTES_MAX: usize = 4096;

const STAGES: [Stage; 4] = [
    Stage::Experimental,
    Stage::Staging,
    Stage::Production,
    Stage::Archived,
];
const TIERS: [(RiskTier, &str); 3] = [
    (RiskTier::Low, "low"),
    (RiskTier::Medium, "medium"),
    (RiskTier::High, "high"),
];

fn tier_label(tier: RiskTier) -> &'static str {
    TIERS
        .iter()
        .find(|(t, _)| *t == tier)
        .map_or("?", |(_, l)| l)
}

/// Whether the request came from htmx (answer with the fragment it swaps in).
fn from_htmx(headers: &HeaderMap) -> bool {
    headers.get("hx-request").is_some_and(|v| v == "true")
}

/// A query string's values, or a refusal naming what was wrong with it.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> UiResult<T> {
    q.map(|Query(t)| t).map_err(|e| {
        UiError::BadRequest(format!(
            "the query string is not one this page reads: {}",
            shown(&e.body_text())
        ))
    })
}

/// An optional query value: absent or empty is `None`; over-long is refused, by name.
fn value<'a>(field: &str, v: &'a Option<String>) -> UiResult<Option<&'a str>> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(text) if text.len() > QUERY_VALUE_BYTES_MAX => Err(UiError::BadRequest(format!(
            "{field} is {} bytes, over the limit of {QUERY_VALUE_BYTES_MAX}",
            text.len()
        ))),
        Some(text) => Ok(Some(text)),
    }
}

/// A name-like query value (namespace, model, page token), checked as a name.
fn name_value<'a>(field: &str, v: &'a Option<String>) -> UiResult<Option<&'a str>> {
    let v = value(field, v)?;
    if let Some(text) = v {
        validate_name(field, text)?;
    }
    Ok(v)
}

/// A numeric page token (`after`): a sequence number or id from the previous page.
fn number_value(field: &str, v: &Option<String>) -> UiResult<u64> {
    match value(field, v)? {
        None => Ok(0),
        Some(text) => text.parse().map_err(|_| {
            UiError::BadRequest(format!(
                "{field} {} is not a page token: follow the page's own \"Next page\" link",
                shown(text)
            ))
        }),
    }
}

/// A model named in a path: one that cannot exist is not found.
fn path_model(model: &str) -> UiResult<()> {
    validate_name("model", model).map_err(|_| {
        UiError::NotFound(format!(
            "there is no model {}: model names are 1-128 characters of a-z, 0-9, '-', '_', '.'",
            shown(model)
        ))
    })
}

/// Whether the session's principal holds the reader role cluster-wide (what shows names of
/// every namespace at once).
async fn reads_cluster<S: ChunkSource + Clone, P: ChunkPeers>(
    ui: &Ui<S, P>,
    session: &Session,
    action: &str,
) -> UiResult<bool> {
    match ui
        .node
        .check_access(&session.actor, Role::Reader, Target::Cluster, action)
        .await
    {
        Ok(()) => Ok(true),
        Err(NodeError::PermissionDenied(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether `actor`'s `grants` read namespace `ns` (anonymous sessions do not exist here).
fn reads(grants: &[crate::auth::Grant], ns: Option<&str>) -> bool {
    ns.is_some_and(|ns| allows(grants, &Need::namespace(Role::Reader, ns)))
}

// ---------------------------------------------------------------------------------------------
// Catalog

#[derive(Deserialize, Default)]
pub struct CatalogQuery {
    q: Option<String>,
    namespace: Option<String>,
    stage: Option<String>,
    tier: Option<String>,
    after: Option<String>,
}

/// `GET /ui/models`: the catalog, searched and filtered, one page; htmx asks for the results
/// alone as one types.
pub async fn catalog<S: ChunkSource + Clone, P: ChunkPeers>(
    State(ui): UiState<S, P>,
    headers: HeaderMap,
    q: Result<Query<CatalogQuery>, QueryRejection>,
) -> UiResult<Response> {
    let session = Session::of(&ui, &headers).await?;
    let q = query(q)?;
    let text = value("q", &q.q)?.unwrap_or("");
    let namespace = name_value("namespace", &q.namespace)?;
    let after = name_value("after", &q.after)?.unwrap_or("");
    let stage = match value("stage", &q.stage)? {
        None => None,
        Some(label) => Some(
            STAGES
                .into_iter()
                .find(|s| stage_label(*s) == label)
                .ok_or_else(|| {
                    UiError::BadRequest(format!(
                        "stage {} is not one of experimental, staging, production, archived",
                        shown(label)
                    ))
                })?,
        ),
    };
    let tier = match value("tier", &q.tier)? {
        None => None,
        Some(label) => Some(
            TIERS
                .iter()
                .find(|(_, l)| *l == label)
                .map(|(t, _)| *t)
                .ok_or_else(|| {
                    UiError::BadRequest(format!(
                        "tier {} is not one of low, medium, high",
                        shown(label)
                    ))
                })?,
        ),
    };
    let filter = SearchFilter {
        words: SearchFilter::words_of(text)?,
        namespace: namespace.map(str::to_string),
        risk_tier: tier,
        stage,
        owner: None,
        metrics: Vec::new(),
        quarantined: None,
    };
    filter.check()?;
    let principal = session.actor.name.clone();
    let (hits, next) = ui
        .node
        .read(Consistency::Linearizable, |app, txn| {
            let grants = app.grants_of(txn, &principal)?;
            let visible = |ns: &str| reads(&grants, Some(ns));
            app.search_models(txn, &filter, &visible, CATALOG_PAGE_SIZE, after)
        })
        .await?;
    let next_href = (!next.is_empty()).then(|| {
        format!(
            "/ui/models?q={}&namespace={}&stage={}&tier={}&after={}",
            view::query_value(text),
            view::query_value(namespace.unwrap_or("")),
            stage.map_or("", stage_label),
            tier.map_or("", tier_label),
            view::query_value(&next)
        )
    });
    let results = html! {
        @if hits.is_empty() {
            p.muted #no-models { "No model matches." }
        } @else {
            table #models {
                thead { tr { th { "Model" } th { "Namespace" } th { "Risk" } th { "Owner" }
                    th { "Versions" } th { "Production" } th { "Description" } } }
                tbody {
                    @for hit in &hits {
                        tr.model-row data-model=(hit.model.name) {
                            td { a href=(view::model_url(&hit.model.name)) { (hit.model.name) }
                                @if hit.quarantined { " " span.fail title="a live version is downstream of a quarantine" { "quarantined" } } }
                            td { (hit.model.namespace) }
                            td { (tier_label(hit.model.risk_tier)) }
                            td { (hit.entry.owner) }
                            td { (hit.model.version_count) }
                            td { @match hit.model.production_version {
                                Some(n) => a href=(view::version_url(&hit.model.name, n)) { "v" (n) },
                                None => span.muted { "—" },
                            } }
                            td { (hit.model.description) }
                        }
                    }
                }
            }
            (view::next_link(next_href))
        }
    };
    if from_htmx(&headers) {
        return Ok(html_response(results));
    }
    let body = html! {
        h1 { "Catalog" }
        form.filters method="get" action="/ui/models" role="search" {
            label { "Search"
                input #search type="search" name="q" value=(text) placeholder="words, prefix*"
                    maxlength=(QUERY_VALUE_BYTES_MAX) autocomplete="off"
                    hx-get="/ui/models" hx-trigger="input changed delay:200ms, search"
                    hx-target="#results" hx-include="closest form" hx-push-url="true";
            }
            label { "Namespace"
                input type="text" name="namespace" value=(namespace.unwrap_or(""))
                    hx-get="/ui/models" hx-trigger="input changed delay:300ms"
                    hx-target="#results" hx-include="closest form" hx-push-url="true";
            }
            label { "Stage"
                select name="stage" hx-get="/ui/models" hx-trigger="change" hx-target="#results"
                    hx-include="closest form" hx-push-url="true" {
                    option value="" { "any" }
                    @for s in STAGES {
                        option value=(stage_label(s)) selected[stage == Some(s)] { (stage_label(s)) }
                    }
                }
            }
            label { "Risk tier"
                select name="tier" hx-get="/ui/models" hx-trigger="change" hx-target="#results"
                    hx-include="closest form" hx-push-url="true" {
                    option value="" { "any" }
                    @for (t, l) in TIERS {
                        option value=(l) selected[tier == Some(t)] { (l) }
                    }
                }
            }
            button type="submit" { "Search" }
        }
        div #results { (results) }
    };
    Ok(html_response(page(&session, "/ui/models", "Catalog", body)))
}

// ---------------------------------------------------------------------------------------------
// Model

#[derive(Deserialize, Default)]
pub struct PageQuery {
    after: Option<String>,
    model: Option<String>,
    all: Option<String>,
}

/// `GET /ui/models/{model}`: versions (paged), stages, aliases, the policy in force,
/// deployments.
pub async fn model<S: ChunkSource + Clone, P: ChunkPeers>(
    State(ui): UiState<S, P>,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> UiResult<Response> {
    path_model(&name)?;
    let action = format!("read model {name}");
    let session = Session::with(&ui, &headers, Role::Reader, Target::Model(&name), &action).await?;
    let q = query(q)?;
    let after = number_value("after", &q.after)?;
    let token = if after == 0 {
        String::new()
    } else {
        after.to_string()
    };
    let (m, (versions, next), aliases, (scope, policy), deployments) = ui
        .node
        .read(Consistency::Linearizable, |app, txn| {
            let m = app.get_model(txn, &name)?;
            let versions = app.list_versions(txn, &name, None, "", LIST_PAGE_SIZE, &token)?;
            let aliases = app.aliases_of_model(txn, &name)?;
            let policy = app.applicable_policy(txn, &m)?;
            let (deployments, _) =
                app.list_deployments(txn, Some(&name), "", MODEL_DEPLOYMENTS_MAX)?;
            Ok((m, versions, aliases, policy, deployments))
        })
        .await?;
    let next_href =
        (!next.is_empty()).then(|| format!("{}?after={next}", view::model_url(&m.name)));
    let body = html! {
        h1 { "Model " (m.name) }
        section.card {
            dl.facts {
                dt { "Namespace" } dd { (m.namespace) }
                dt { "Risk tier" } dd { (tier_label(m.risk_tier)) }
                dt { "Description" } dd { (m.description) }
                dt { "Created" } dd { (view::time(m.created_at_ms)) " by " (m.created_by.name) }
                dt { "Versions" } dd { (m.version_count) }
                dt { "Production" } dd { @match m.production_version {
                    Some(n) => a href=(view::version_url(&m.name, n)) { "v" (n) },
                    None => span.muted { "none" },
                } }
                dt { "Tags" } dd { @for (k, v) in &m.tags { code { (k) "=" (v) } " " } }
            }
        }
        h2 { "Aliases" }
        @if aliases.is_empty() { p.muted { "No alias." } } @else {
            table #aliases { thead { tr { th { "Alias" } th { "Version" } th { "Set by" } th { "At" } } }
                tbody { @for a in &aliases { tr {
                    td { code { "@" (a.alias) } }
                    td { a href=(view::version_url(&m.name, a.version)) { "v" (a.version) } }
                    td { (a.updated_by.name) } td { (view::time(a.updated_at_ms)) }
                } } } }
        }
        h2 { "Versions" }
        @if versions.is_empty() { p.muted { "No version on this page." } } @else {
            table #versions {
                thead { tr { th { "Version" } th { "Stage" } th { "Status" } th { "Size" }
                    th { "Registered" } th { "By" } } }
                tbody { @for v in &versions { tr.version-row data-version=(v.number) {
                    td { a href=(view::version_url(&m.name, v.number)) { "v" (v.number) } }
                    td { (view::stage(v.stage)) }
                    td { (status_label(v.status)) }
                    td { (view::bytes(v.total_size_bytes)) }
                    td { (view::time(v.created_at_ms)) }
                    td { (v.created_by.name) }
                } } }
            }
            (view::next_link(next_href))
        }
        h2 { "Policy" }
        section.card {
            p { @match &scope {
                Some(s) => { "In force: " (s.to_string()) },
                None => span.muted { "No policy applies: no gates." },
            } }
            @if scope.is_some() {
                pre.mono { (crate::service::governance::policy_json(&policy)) }
            }
        }
        h2 { "Deployments" }
        (deployments_table(&deployments))
        @if deployments.len() == MODEL_DEPLOYMENTS_MAX {
            p { a href={ "/ui/deployments?model=" (m.name) } { "Every endpoint of " (m.name) " →" } }
        }
    };
    Ok(html_response(page(&session, "/ui/models", &m.name, body)))
}

// ---------------------------------------------------------------------------------------------
// Version

/// What a version page shows, read in one transaction.
struct VersionFacts {
    version: Version,
    aliases: Vec<String>,
    evaluations: Vec<crate::governance::Evaluation>,
    reports: Vec<GateReport>,
    review: Option<crate::governance::Review>,
    upstream: Walk,
    impact: Option<Walk>,
    quarantined: BTreeSet<Entity>,
    /// Its chunks live in the replicated state (a small version), not the chunk stores.
    inline: bool,
    /// Every member, with its region (what placement decides by).
    members: Vec<(u64, String)>,
}

/// A version page's query: the review just decided from the queue, if any.
#[derive(Deserialize, Default)]
pub struct DecidedQuery {
    review: Option<u64>,
}

/// `GET /ui/models/{model}/versions/{number}`.
pub async fn version<S: ChunkSource + Clone, P: ChunkPeers>(
    State(ui): UiState<S, P>,
    headers: HeaderMap,
    Path((name, number)): Path<(String, String)>,
    q: Result<Query<DecidedQuery>, QueryRejection>,
) -> UiResult<Response> {
    path_model(&name)?;
    let decided = query(q)?.review.filter(|id| *id > 0);
    let number: u64 = match number.parse() {
        Ok(n) if n >= 1 => n,
        _ => {
            return Err(UiError::NotFound(format!(
                "there is no version {} of model {name}: versions are numbered from 1",
                shown(&number)
            )))
        }
    };
    let action = format!("read model {name}");
    let session = Session::with(&ui, &headers, Role::Reader, Target::Model(&name), &action).await?;
    // The impact of a version is read across models: the API asks for the reader role
    // cluster-wide, and so does this page before it shows it.
    let impact_allowed = reads_cluster(&ui, &session, "read the impact of a version").await?;
    let facts = ui
        .node
        .read(Consistency::Linearizable, |app, txn| {
            let m = app.get_model(txn, &name)?;
            let version = app.get_version(txn, &name, number)?;
            let aliases = app
                .aliases_of_model(txn, &name)?
                .into_iter()
                .filter(|a| a.version == number)
                .map(|a| a.alias)
                .collect();
            let reports = [Stage::Staging, Stage::Production]
                .into_iter()
                .map(|s| app.gate_report(txn, &m, &version, s))
                .collect::<Result<Vec<_>, _>>()?;
            let start = Entity::version(&name, number);
            let upstream = app.lineage_walk_bounded(
                txn,
                &start,
                Direction::Upstream,
                GRAPH_NODES_MAX,
                GRAPH_NODES_MAX,
            )?;
            let impact = match impact_allowed {
                true => Some(app.lineage_walk_bounded(
                    txn,
                    &start,
                    Direction::Downstream,
                    GRAPH_NODES_MAX,
                    GRAPH_NODES_MAX,
                )?),
                false => None,
            };
            let mut quarantined = BTreeSet::new();
            for (e, _) in upstream
                .nodes
                .iter()
                .chain(impact.iter().flat_map(|w| &w.nodes))
            {
                if app.quarantine_of(txn, e)?.is_some() {
                    quarantined.insert(e.clone());
                }
            }
            let inline = app.inline_chunks(txn, &version.manifest_root)?.is_some();
            let members = app
                .nodes(txn)?
                .into_iter()
                .map(|n| (n.node_id, n.region))
                .collect();
            Ok(VersionFacts {
                inline,
                members,
                evaluations: app.evaluations(txn, &name, number)?,
                review: app.open_review(txn, &name, number)?,
                version,
                aliases,
                reports,
                upstream,
                impact,
                quarantined,
            })
        })
        .await?;
    let v = &facts.version;
    let title = format!("{}/{}", v.model, v.number);
    let start = Entity::version(&v.model, v.number);
    let layout = graph::layout(&start, Some(&facts.upstream), facts.impact.as_ref());
    let md = &v.metadata;
    let body = html! {
        h1 { a href=(view::model_url(&v.model)) { (v.model) } " / v" (v.number) " "
            span #stage { (view::stage(v.stage)) } }
        @if let Some(id) = decided {
            p.ok #decided role="status" { "Review #" (id) " decided: this version is now "
                (stage_label(v.stage)) "." }
        }
        section.card {
            dl.facts {
                dt { "Status" } dd #status { (status_label(v.status)) }
                dt { "Aliases" } dd { @for a in &facts.aliases { code { "@" (a) } " " }
                    @if facts.aliases.is_empty() { span.muted { "none" } } }
                dt { "Registered" } dd { (view::time(v.created_at_ms)) " by " (v.created_by.name) }
                dt { "Size" } dd { (view::bytes(v.total_size_bytes)) " in " (v.files.len()) " file(s)" }
                dt { "Manifest root" } dd { code { (v.manifest_root) } }
                dt { "Tags" } dd { @for (k, val) in &v.tags { code { (k) "=" (val) } " " } }
                @if let Some(r) = &facts.review {
                    dt { "Pending review" } dd { a href="/ui/reviews" { "#" (r.id) } " for " (stage_label(r.stage)) }
                }
            }
        }
        h2 { "Files" }
        table #files {
            thead { tr { th { "Path" } th { "Size" } th { "Chunks" } } }
            tbody { @for f in v.files.iter().take(VERSION_FILES_SHOWN_MAX) { tr {
                td { code { (f.path) } } td { (view::bytes(f.size_bytes)) } td { (f.chunk_count) }
            } } }
        }
        @if v.files.len() > VERSION_FILES_SHOWN_MAX {
            p.muted { "and " (v.files.len() - VERSION_FILES_SHOWN_MAX) " more files" }
        }
        h2 { "Signature" }
        @if v.signature.inputs.is_empty() && v.signature.outputs.is_empty() {
            p.muted { "No signature." }
        } @else {
            table #signature {
                thead { tr { th { "Side" } th { "Name" } th { "Type" } th { "Shape" } th { "Optional" } } }
                tbody {
                    @for (side, specs) in [("input", &v.signature.inputs), ("output", &v.signature.outputs)] {
                        @for t in specs { tr {
                            td { (side) } td { code { (t.name) } } td { (t.dtype) }
                            td { (format!("{:?}", t.shape)) } td { (t.optional) }
                        } }
                    }
                }
            }
        }
        h2 { "Metadata" }
        section.card { dl.facts {
            dt { "Data snapshot" } dd { (md.data_snapshot_id) }
            dt { "Code commit" } dd { (md.code_commit) }
            dt { "Run" } dd { (md.pipeline_run_id) }
            @for (k, val) in &md.hyperparameters { dt { (k) } dd { (val) } }
        } }
        h2 { "Metrics" }
        @if md.metrics.is_empty() { p.muted { "No metric recorded at registration." } } @else {
            table #metrics { tbody { @for (k, val) in &md.metrics { tr { td { (k) } td { (val) } } } } }
        }
        h2 { "Evaluations" }
        @if facts.evaluations.is_empty() { p.muted { "No evaluation." } } @else {
            table #evaluations {
                thead { tr { th { "#" } th { "Kind" } th { "Metrics" } th { "Summary" } th { "By" } th { "At" } } }
                tbody { @for e in &facts.evaluations { tr {
                    td { (e.seq) } td { (e.kind) }
                    td { @for (k, val) in &e.metrics { code { (k) "=" (val) } " " } }
                    td { (e.summary) } td { (e.recorded_by) } td { (view::time(e.at_ms)) }
                } } }
            }
        }
        h2 { "Gates" }
        @for report in &facts.reports { (gate_report(report)) }
        h2 { "Stage history" }
        table #history {
            thead { tr { th { "At" } th { "From" } th { "To" } th { "By" } th { "Reason" } th { "Gates" } } }
            tbody { @for t in &v.stage_history { tr {
                td { (view::time(t.at_ms)) }
                td { @match t.from { Some(s) => (view::stage(s)), None => span.muted { "—" } } }
                td { (view::stage(t.to)) }
                td { (t.actor.name) } td { (t.reason) }
                td { @match &t.gate_report { Some(r) => (r.summary()), None => span.muted { "—" } } }
            } } }
        }
        h2 { "Replication" }
        (replication(&facts, ui.node.node_id(), ui.node.repair.is_complete(&v.manifest_root)))
        h2 { "Lineage" }
        p.muted { "Upstream (what it came from) on the left, impact (what came from it) on the right; each box opens its page." }
        @if facts.upstream.truncated || facts.impact.as_ref().is_some_and(|w| w.truncated) {
            p.problem { "The graph is cut at " (GRAPH_NODES_MAX) " entities each way." }
        }
        @if facts.impact.is_none() {
            p.muted { "Impact needs the reader role cluster-wide; only upstream is shown." }
        }
        div #lineage { (graph::svg(&layout, &start, &facts.quarantined)) }
    };
    Ok(html_response(page(&session, "/ui/models", &title, body)))
}

/// Where a version's bytes are: in the replicated state (a small version), or in the chunk
/// stores of the members placement names; and whether this node's repair loop has verified its
/// own full copy.
fn replication(facts: &VersionFacts, this_node: u64, complete_here: bool) -> Markup {
    let root = &facts.version.manifest_root;
    let holders: Vec<u64> = facts
        .members
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| crate::replication::should_hold(root, *id, &facts.members))
        .collect();
    html! {
        section.card #replication {
            @if facts.inline {
                p { "Small enough to live in the replicated state (at most "
                    (view::bytes(crate::domain::limits::INLINE_VERSION_BYTES_MAX as u64))
                    "): every member holds it once it has applied the log." }
            } @else {
                p { "Full copies on nodes "
                    @for (i, id) in holders.iter().enumerate() {
                        @if i > 0 { ", " } (id)
                    }
                    " (placement), each made whole by its repair loop." }
                p { "This node (" (this_node) "): "
                    @if !holders.contains(&this_node) { span.muted { "not a holder; reads through from peers" } }
                    @else if complete_here { span.pass { "full copy, verified" } }
                    @else { span.fail { "not yet verified by repair" } " (reads through from peers meanwhile)" }
                }
            }
        }
    }
}

fn gate_report(report: &GateReport) -> Markup {
    html! {
        section.card.gates data-stage=(stage_label(report.stage)) {
            p { "For " strong { (stage_label(report.stage)) } ": "
                @if report.passed() { span.pass { "all gates pass" } } @else { span.fail { "blocked" } } }
            @if report.results.is_empty() { p.muted { "No gate." } } @else {
                ul { @for r in &report.results { li {
                    @if r.passed { span.pass { "pass " } } @else { span.fail { "FAIL " } }
                    code { (r.gate) } " — " (r.detail)
                } } }
            }
        }
    }
}

#[derive(Deserialize, Default)]
pub struct EntityQuery {
    entity: Option<String>,
}

/// `GET /ui/lineage?entity=KIND:ID`: an entity's upstream and impact (the reader role
/// cluster-wide, as the API's impact query).
pub async fn entity<S: ChunkSource + Clone, P: ChunkPeers>(
    State(ui): UiState<S, P>,
    headers: HeaderMap,
    q: Result<Query<EntityQuery>, QueryRejection>,
) -> UiResult<Response> {
    let q = query(q)?;
    let text = value("entity", &q.entity)?
        .ok_or_else(|| UiError::BadRequest("name an entity: ?entity=data:snap-47".into()))?;
    let entity = Entity::parse("entity", text)?;
    let action = format!("read the impact of {entity}");
    let session = Session::with(&ui, &headers, Role::Reader, Target::Cluster, &action).await?;
    let start = entity.clone();
    let (upstream, impact, quarantined) = ui
        .node
        .read(Consistency::Linearizable, move |app, txn| {
            if let Some((m, n)) = entity.as_version() {
                app.get_version(txn, m, n)?;
            }
            let up = app.lineage_walk_bounded(
                txn,
                &entity,
                Direction::Upstream,
                GRAPH_NODES_MAX,
                GRAPH_NODES_MAX,
            )?;
            let down = app.lineage_walk_bounded(
                txn,
                &entity,
                Direction::Downstream,
                GRAPH_NODES_MAX,
                GRAPH_NODES_MAX,
            )?;
            let mut quarantined = BTreeSet::new();
            for (e, _) in up.nodes.iter().chain(&down.nodes) {
                if app.quarantine_of(txn, e)?.is_some() {
                    quarantined.insert(e.clone());
                }
            }
            Ok((up, down, quarantined))
        })
        .await?;
    let layout = graph::layout(&start, Some(&upstream), Some(&impact));
    let title = start.to_string();
    let body = html! {
        h1 { "Lineage of " code { (title) } }
        @if quarantined.contains(&start) { p.fail { "This entity is quarantined." } }
        @if upstream.truncated || impact.truncated {
            p.problem { "The graph is cut at " (GRAPH_NODES_MAX) " entities each way." }
        }
        div #lineage { (graph::svg(&layout, &start, &quarantined)) }
    };
    Ok(html_response(page(&session, "/ui/models", &title, body)))
}

// ---------------------------------------------------------------------------------------------
// Reviews

/// `GET /ui/reviews`: open reviews (`?all=1`: every review) the session may read, paged, each
/// with approve and reject.
pub async fn reviews<S: ChunkSource + Clone, P: ChunkPeers>(
    State(ui): UiState<S, P>,
    headers: HeaderMap,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> UiResult<Response> {
    let session = Session::of(&ui, &headers).await?;
    let q = query(q)?;
    let after = number_value("after", &q.after)?;
    let model = name_value("model", &q.model)?.map(str::to_string);
    let all = value("all", &q.all)?.is_some();
    let filter = ReviewFilter {
        model: model.clone(),
        open_only: !all,
        after,
        limit: LIST_PAGE_SIZE,
    };
    let (shown_reviews, next) = crate::service::governance::readable_reviews(
        &ui.node,
        &session.actor,
        filter,
        Consistency::Linearizable,
    )
    .await?;
    let next_href = next.map(|id| {
        format!(
            "/ui/reviews?after={id}&model={}{}",
            model.as_deref().unwrap_or(""),
            if all { "&all=1" } else { "" }
        )
    });
    let body = html! {
        h1 { "Review queue" }
        p { @if all { a href="/ui/reviews" { "Open reviews only" } } @else { a href="/ui/reviews?all=1" { "Every review" } } }
        @if shown_reviews.is_empty() { p.muted #no-reviews { "No review waits." } } @else {
            table #reviews {
                thead { tr { th { "#" } th { "Version" } th { "For" } th { "Asked by" } th { "Reason" }
                    th { "Approvals" } th { "Gates" } th { "State" } th { "Decide" } } }
                tbody { @for r in &shown_reviews { tr.review-row data-review=(r.id) {
                    td { (r.id) }
                    td { a href=(view::version_url(&r.model, r.number)) { (r.model) "/" (r.number) } }
                    td { (view::stage(r.stage)) }
                    td { (r.requested_by) " " span.muted { (view::time(r.requested_at_ms)) } }
                    td { (r.reason) }
                    td { @for a in &r.approvals { (a.principal) " " } @if r.approvals.is_empty() { span.muted { "none" } } }
                    td { (r.report.summary()) }
                    td { (r.state.label()) }
                    td { @if r.state == ReviewState::Open {
                        form.decide method="post" action={ "/ui/reviews/" (r.id) "/decide" } {
                            input type="hidden" name="csrf" value=(session.csrf);
                            input type="text" name="comment" placeholder="comment"
                                maxlength=(COMMENT_BYTES_MAX) aria-label="comment";
                            button type="submit" name="decision" value="approve" { "Approve" }
                            button.reject type="submit" name="decision" value="reject" { "Reject" }
                        }
                    } @else { span.muted { (r.closing_comment) } } }
                } } }
            }
            (view::next_link(next_href))
        }
    };
    Ok(html_response(page(
        &session,
        "/ui/reviews",
        "Reviews",
        body,
    )))
}

#[derive(Deserialize)]
pub struct DecideForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    comment: String,
}

/// `POST /ui/reviews/{id}/decide`: approve or reject, as `DecideReview` does (the same
/// function, the same checks); then the version's page.
pub async fn decide<S: ChunkSource + Clone, P: ChunkPeers>(
    State(ui): UiState<S, P>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<DecideForm>, FormRejection>,
) -> UiResult<Response> {
    let session = Session::of(&ui, &headers).await?;
    let Form(form) = form.map_err(|e| {
        let why = format!(
            "the form is not one this page sends: {}",
            shown(&e.body_text())
        );
        match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => UiError::TooLarge(why),
            _ => UiError::BadRequest(why),
        }
    })?;
    session.check_action(&headers, &form.csrf)?;
    let id: u64 = id
        .parse()
        .map_err(|_| UiError::NotFound(format!("there is no review {}", shown(&id))))?;
    let approve = match form.decision.as_str() {
        "approve" => true,
        "reject" => false,
        other => {
            return Err(UiError::BadRequest(format!(
                "decision {} is neither approve nor reject",
                shown(other)
            )))
        }
    };
    if form.comment.len() > COMMENT_BYTES_MAX {
        return Err(UiError::BadRequest(format!(
            "the comment is {} bytes, over the limit of {COMMENT_BYTES_MAX}",
            form.comment.len()
        )));
    }
    let applied = crate::service::governance::decide_review(
        &ui.node,
        session.actor,
        id,
        approve,
        form.comment,
    )
    .await?;
    match applied {
        Applied::Review(outcome) => {
            let (review, version) = &*outcome;
            let location = format!(
                "{}?review={}",
                view::version_url(&version.model, version.number),
                review.id
            );
            Ok((StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response())
        }
        other => Err(UiError::Internal(format!(
            "unexpected apply result {}",
            shown(&format!("{other:?}"))
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Deployments

/// A deployment's split as one bar: each version's share, the rollout's target marked.
fn split_bar(d: &crate::deploy::Deployment) -> Markup {
    const WIDTH: u64 = 240;
    let target = d.rollout.as_ref().map(|r| r.target);
    // (version, percent, x, width) of each share, left to right.
    let mut x = 0u64;
    let shares: Vec<(u64, u8, u64, u64)> = d
        .split
        .iter()
        .map(|(version, percent)| {
            let w = WIDTH * u64::from(*percent) / 100;
            x += w;
            (*version, *percent, x - w, w)
        })
        .collect();
    html! {
        svg.split xmlns="http://www.w3.org/2000/svg" width=(WIDTH) height="20"
            role="img" aria-label="traffic split" {
            @for (version, percent, x, w) in shares {
                rect class={ "share" @if Some(version) == target { " target" } }
                    x=(x) y="0" width=(w) height="20" {
                    title { "v" (version) ": " (percent) "%" }
                }
                @if w >= 36 { text x=(x + 4) y="14" { "v" (version) " " (percent) "%" } }
            }
        }
    }
}

fn deployments_table(deployments: &[crate::deploy::Deployment]) -> Markup {
    html! {
        @if deployments.is_empty() { p.muted #no-deployments { "No deployment." } } @else {
            table #deployments {
                thead { tr { th { "Endpoint" } th { "Model" } th { "Split" } th { "Shadows" }
                    th { "Rollout" } th { "Stable" } th { "Generation" } th { "Updated" } } }
                tbody { @for d in deployments { tr.deployment-row data-endpoint=(d.endpoint) {
                    td { code { (d.endpoint) } }
                    td { a href=(view::model_url(&d.model)) { (d.model) } }
                    td { (split_bar(d)) br; @for (v, p) in &d.split {
                        a href=(view::version_url(&d.model, *v)) { "v" (v) } " " (p) "% " } }
                    td { @for v in &d.shadows { "v" (v) " " } }
                    td { @match &d.rollout {
                        None => span.muted { "none" },
                        Some(r) => {
                            "to " a href=(view::version_url(&d.model, r.target)) { "v" (r.target) }
                            ": step " (r.step + 1) " of " (r.plan.len())
                            @if let Some(step) = r.plan.get(r.step) {
                                " (" @if step.percent == 0 { "shadow" } @else { (step.percent) "%" } ")"
                            }
                            progress max=(r.plan.len()) value=(r.step + 1) {}
                            @if r.paused { " " span.fail { "paused" } }
                            br; span.muted { "step since " (view::time(r.step_started_ms)) }
                        },
                    } }
                    td { "v" (d.stable) }
                    td { (d.generation) }
                    td { (view::time(d.updated_at_ms)) " by " (d.updated_by) }
                } } }
            }
        }
    }
}

/// `GET /ui/deployments`: every endpoint (the reader role cluster-wide, as the API's listing),
/// or one model's (`?model=`), paged.
pub async fn deployments<S: ChunkSource + Clone, P: ChunkPeers>(
    State(ui): UiState<S, P>,
    headers: HeaderMap,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> UiResult<Response> {
    let q = query(q)?;
    let model = name_value("model", &q.model)?;
    let after = name_value("after", &q.after)?.unwrap_or("");
    let session = match model {
        Some(m) => {
            let action = format!("list the endpoints of model {m}");
            Session::with(&ui, &headers, Role::Reader, Target::Model(m), &action).await?
        }
        None => {
            Session::with(
                &ui,
                &headers,
                Role::Reader,
                Target::Cluster,
                "list every endpoint (give a model to list only its endpoints)",
            )
            .await?
        }
    };
    let (page_rows, next) = ui
        .node
        .read(Consistency::Linearizable, |app, txn| {
            if let Some(m) = model {
                app.get_model(txn, m)?;
            }
            app.list_deployments(txn, model, after, LIST_PAGE_SIZE)
        })
        .await?;
    let next_href = next.map(|n| {
        format!(
            "/ui/deployments?after={}&model={}",
            view::query_value(&n),
            model.unwrap_or("")
        )
    });
    let body = html! {
        h1 { "Deployments" @if let Some(m) = model { " of " (m) } }
        (deployments_table(&page_rows))
        (view::next_link(next_href))
    };
    Ok(html_response(page(
        &session,
        "/ui/deployments",
        "Deployments",
        body,
    )))
}

// ---------------------------------------------------------------------------------------------
// Cluster

/// `GET /ui/cluster`: members, their roles, the leader, replication lag (any signed-in
/// principal, as the API's cluster status).
pub async fn cluster<S: ChunkSource + Clone, P: ChunkPeers>(
    State(ui): UiState<S, P>,
    headers: HeaderMap,
) -> UiResult<Response> {
    let session = Session::with(
        &ui,
        &headers,
        Role::Reader,
        Target::Anyone,
        "read cluster status",
    )
    .await?;
    let status = ui
        .node
        .raft
        .cluster_status()
        .await
        .map_err(NodeError::from)?;
    let nodes = ui
        .node
        .read(Consistency::Stale, |app, txn| app.nodes(txn))
        .await?;
    // Which versions are not yet whole names models of every namespace: shown to a reader
    // cluster-wide only; anyone signed in sees the counts.
    let names_shown = reads_cluster(&ui, &session, "read which versions are repaired").await?;
    let body = html! {
        h1 { "Cluster" }
        section.card { dl.facts {
            dt { "This node" } dd { (status.node_id) " (" (status.state) ")" }
            dt { "Leader" } dd #leader { @match status.leader_id { Some(l) => { "node " (l) }, None => span.fail { "none known" } } }
            dt { "Term" } dd { (status.term) }
            dt { "Log" } dd { "last " (status.last_log_index) ", committed " (status.committed_index)
                ", applied " (status.applied_index) }
        } }
        h2 { "Members" }
        table #members {
            thead { tr { th { "Node" } th { "Role" } th { "API" } th { "Peer" } th { "Chunks (QUIC)" }
                th { "Region / zone" } th { "Matched index" } th { "Lag (entries)" } } }
            tbody { @for m in &status.members {
                @let info = nodes.iter().find(|n| n.node_id == m.node_id);
                @let role = if status.leader_id == Some(m.node_id) { "leader" } else if m.voter { "follower" } else { "learner" };
                tr.member-row data-node=(m.node_id) data-role=(role) {
                    td { (m.node_id) @if m.node_id == status.node_id { " (this node)" } }
                    td { (role) }
                    td { code { (info.map_or("", |n| n.api_addr.as_str())) } }
                    td { code { (m.addr) } }
                    td { code { (info.map_or("", |n| n.quic_addr.as_str())) } }
                    td { (info.map_or("", |n| n.region.as_str())) " / " (info.map_or("", |n| n.zone.as_str())) }
                    td { @match m.matched_index { Some(i) => (i), None => span.muted { "—" } } }
                    td { @match m.lag { Some(l) => (l), None => span.muted { "—" } } }
                }
            } }
        }
        h2 { "Replication" }
        (held_copies(status.node_id, ui.node.repair.last_pass(), &nodes, names_shown))
    };
    Ok(html_response(page(
        &session,
        "/ui/cluster",
        "Cluster",
        body,
    )))
}

/// Where this node's copies of the READY versions stand after its last repair pass, and where
/// the other members show theirs (each node knows its own copies).
fn held_copies(
    this_node: u64,
    last_pass: Option<crate::replication::HeldSummary>,
    nodes: &[crate::domain::NodeInfo],
    names_shown: bool,
) -> Markup {
    let others: Vec<&crate::domain::NodeInfo> =
        nodes.iter().filter(|n| n.node_id != this_node).collect();
    html! {
        section.card #replication {
            @match last_pass {
                None => p.muted { "This node has not finished a repair pass yet (one runs every "
                    (crate::replication::REPAIR_INTERVAL.as_secs()) " s)." },
                Some(pass) => {
                    p { "Node " (this_node) ", at " (view::time(pass.at_ms)) ": of "
                        span #ready-versions { (pass.ready_versions) } " READY versions kept in chunk stores, placement gives it "
                        span #held-versions { (pass.held) } ", " span #complete-versions { (pass.complete) }
                        " of them verified whole. "
                        @if pass.complete == pass.held { span.pass { "Every copy it should hold is whole." } }
                        @else { span.fail { (pass.held - pass.complete) " still being fetched from peers" }
                            " (reads go through to peers meanwhile)." }
                    }
                    @if !pass.pending.is_empty() && !names_shown {
                        p.muted { "Which versions they are is shown to readers of the whole cluster." }
                    }
                    @if !pass.pending.is_empty() && names_shown {
                        p { "Not yet whole here"
                            @if pass.held - pass.complete > pass.pending.len() { " (the first " (pass.pending.len()) ")" } ":" }
                        ul #pending { @for (model, number) in &pass.pending {
                            li { a href=(view::version_url(model, *number)) { (model) "/" (number) } }
                        } }
                    }
                }
            }
            p.muted { "Small versions (at most " (view::bytes(crate::domain::limits::INLINE_VERSION_BYTES_MAX as u64))
                ") live in the replicated state, on every member. With at most " (crate::replication::FULL_REPLICATION_NODES_MAX)
                " members every member holds every version; beyond that, placement spreads the copies over regions. "
                "Each member's own page shows its copies"
                @if !others.is_empty() { ": "
                    @for (i, n) in others.iter().enumerate() {
                        @if i > 0 { ", " }
                        a href=(format!("http://{}/ui/cluster", n.api_addr)) { "node " (n.node_id) }
                    }
                }
                "." }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Audit

/// `GET /ui/audit`: the audit log (every record: the reader role cluster-wide; `?model=`: that
/// model's), oldest first, paged; verification on request.
pub async fn audit<S: ChunkSource + Clone, P: ChunkPeers>(
    State(ui): UiState<S, P>,
    headers: HeaderMap,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> UiResult<Response> {
    let q = query(q)?;
    let model = name_value("model", &q.model)?.unwrap_or("").to_string();
    let after = number_value("after", &q.after)?;
    let session = if model.is_empty() {
        Session::with(
            &ui,
            &headers,
            Role::Reader,
            Target::Cluster,
            "read the whole audit log (give a model to read only its records)",
        )
        .await?
    } else {
        let action = format!("read the audit log of model {model}");
        Session::with(&ui, &headers, Role::Reader, Target::Model(&model), &action).await?
    };
    let filter = AuditFilter {
        model: model.clone(),
        since_ms: 0,
    };
    let page_rows = ui
        .node
        .read(Consistency::Linearizable, |app, txn| {
            if !filter.model.is_empty() {
                app.get_model(txn, &filter.model)?;
            }
            app.list_audit(txn, &filter, LIST_PAGE_SIZE, after)
        })
        .await?;
    let next_href = page_rows
        .next_after
        .map(|n| format!("/ui/audit?after={n}&model={model}"));
    let body = html! {
        h1 { "Audit log" @if !model.is_empty() { " of " (model) } }
        section.card {
            button type="button" hx-get="/ui/audit/verify" hx-target="#verdict" hx-swap="innerHTML" {
                "Verify the chain on this node" }
            " " a href="/ui/audit/verify" { "(without script)" }
            div #verdict {}
        }
        @if page_rows.records.is_empty() { p.muted { "No record." } } @else {
            table #audit {
                thead { tr { th { "#" } th { "At" } th { "Principal" } th { "Action" } th { "Subject" }
                    th { "Reason" } th { "Detail" } th { "Hash" } } }
                tbody { @for r in &page_rows.records { tr.audit-row {
                    td { (r.seq) } td { (view::time(r.at_ms)) } td { (r.principal) }
                    td { code { (r.kind) } } td { (r.subject) } td { (r.reason) } td { (r.detail) }
                    td { code title=(r.hash) { (r.hash.get(..12).unwrap_or(&r.hash)) "…" } }
                } } }
            }
        }
        (view::next_link(next_href))
    };
    Ok(html_response(page(
        &session,
        "/ui/audit",
        "Audit log",
        body,
    )))
}

/// `GET /ui/audit/verify`: this node's audit chain verified from its first record (the reader
/// role cluster-wide, as the API).
pub async fn verify_audit<S: ChunkSource + Clone, P: ChunkPeers>(
    State(ui): UiState<S, P>,
    headers: HeaderMap,
) -> UiResult<Response> {
    let session = Session::with(
        &ui,
        &headers,
        Role::Reader,
        Target::Cluster,
        "verify the audit log",
    )
    .await?;
    let verdict = ui
        .node
        .read(Consistency::Stale, |app, txn| app.verify_audit(txn))
        .await?;
    let node_id = ui.node.node_id();
    let result = html! {
        @match &verdict {
            Ok(head) => p.ok #audit-ok { "The chain on node " (node_id) " holds: " (head.count)
                " records, head " code { (head.hash) } },
            Err(e) => p.fail #audit-broken { "The chain on node " (node_id) " is broken: "
                (crate::service::bounded(e.to_string())) },
        }
    };
    if from_htmx(&headers) {
        return Ok(html_response(result));
    }
    let body = html! { h1 { "Audit verification" } (result) p { a href="/ui/audit" { "Back to the log" } } };
    Ok(html_response(page(
        &session,
        "/ui/audit",
        "Audit verification",
        body,
    )))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::deploy::{Bounds, Deployment, Rollout, Split, Step};

    #[test]
    fn a_rollout_shows_its_split_target_and_progress() {
        let d = Deployment {
            endpoint: "reco-prod".into(),
            model: "reco".into(),
            namespace: "search".into(),
            split: Split::from([(1, 95), (2, 5)]),
            shadows: BTreeSet::new(),
            stable: 1,
            previous: None,
            rollout: Some(Rollout {
                target: 2,
                plan: vec![
                    Step {
                        percent: 0,
                        duration_ms: 60_000,
                    },
                    Step {
                        percent: 5,
                        duration_ms: 60_000,
                    },
                    Step {
                        percent: 100,
                        duration_ms: 0,
                    },
                ],
                step: 1,
                step_started_ms: 0,
                paused: true,
                bounds: Bounds {
                    error_rate_pct_max: 1.0,
                    p99_ms_max: 100.0,
                    min_requests: 0,
                },
            }),
            generation: 3,
            created_by: "root".into(),
            created_at_ms: 0,
            updated_by: "root".into(),
            updated_at_ms: 0,
        };
        let html = deployments_table(std::slice::from_ref(&d)).into_string();
        for expected in [
            "step 2 of 3",
            "(5%)",
            "paused",
            "class=\"share target\"",
            "width=\"228\"",
            "width=\"12\"",
            "/ui/models/reco/versions/2",
        ] {
            assert!(html.contains(expected), "{expected}: {html}");
        }
    }
}
