//! The catalog: what `quiver model search` matches models against, and the matching itself
//! (pure; the state keeps one [`CatalogEntry`] per model in its `catalog` table, written by
//! apply beside the model and its versions, decision 0023).
//!
//! A search is a [`SearchFilter`]: words that must all be among a model's words (its name,
//! description and tags split at every character that is not a letter or digit, lowercased; a
//! word ending in `*` matches every word it starts), and optional filters on namespace, risk
//! tier, stage, owner, metric ranges and quarantine.
//!
//! A search over 100,000 models must answer within milliseconds, so it does not read every
//! entry: the `catalog_index` table holds one key per (namespace, owner, tier, stage held, word)
//! of each model ([`CatalogEntry::index_keys`]), the model's name last, and a search walks the
//! keys of its filters together in name order, reading only the models in all of them
//! ([`SearchFilter::postings`]). A search with none of those filters (metric ranges alone, or
//! nothing) scans the entries, refusing most on their stored bytes before decoding them
//! ([`SearchFilter::fragments`]). Every candidate is decoded and checked exactly
//! ([`SearchFilter::matches`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{
    limits, shown, stage_label, validate_key, validate_name, DomainError, DomainResult, Model,
    RiskTier, Stage,
};

/// Words in one search query, at most.
pub const QUERY_WORDS_MAX: usize = 16;
/// Bytes in one search query, at most.
pub const QUERY_BYTES_MAX: usize = 1024;
/// Metric ranges in one search, at most.
pub const METRIC_RANGES_MAX: usize = 16;
/// Characters a word's start (`rank*`) needs at least.
pub const PREFIX_CHARS_MIN: usize = 2;
/// Bytes of a word that count: longer words are cut there (at a character boundary), in the
/// index and in queries alike, so that an index key fits LMDB's 511 bytes.
pub const WORD_BYTES_MAX: usize = 128;
/// Bytes of an indexed namespace or owner, likewise.
const VALUE_BYTES_MAX: usize = 256;

/// The words of `text`: split at every character that is not a letter or digit, lowercased, each
/// cut to [`WORD_BYTES_MAX`] bytes.
pub fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| cut(w, WORD_BYTES_MAX).to_string())
        .collect()
}

/// `text`'s first `max` bytes at most, ending at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The `catalog_index` key of `value` of `kind` for model `name`: the kind's byte, the value
/// (cut to its limit), NUL, the name.
fn index_key(kind: u8, value: &str, name: &str) -> Vec<u8> {
    let mut k = posting_prefix(kind, value);
    k.extend_from_slice(name.as_bytes());
    k
}

/// The prefix of every `catalog_index` key of `value` of `kind`.
fn posting_prefix(kind: u8, value: &str) -> Vec<u8> {
    let value = cut(value, VALUE_BYTES_MAX);
    let mut k = Vec::with_capacity(2 + value.len() + 64);
    k.push(kind);
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    k
}

const NAMESPACE: u8 = b'n';
const OWNER: u8 = b'o';
const TIER: u8 = b't';
const STAGE: u8 = b's';
const WORD: u8 = b'w';

fn tier_label(tier: RiskTier) -> &'static str {
    match tier {
        RiskTier::Low => "low",
        RiskTier::Medium => "medium",
        RiskTier::High => "high",
    }
}

/// Where a search's candidates come from: model names in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Posting {
    /// The names after this `catalog_index` prefix.
    Exact(Vec<u8>),
    /// The names after every `catalog_index` key starting with this (a word's prefix: its keys
    /// are in word order, so their names are gathered and sorted).
    Prefix(Vec<u8>),
}

/// What the catalog knows of one model: enough to answer a search without reading the model's
/// versions. Stage counts and metrics are kept current by apply as versions are registered and
/// move.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub namespace: String,
    pub risk_tier: Option<RiskTier>,
    pub owner: String,
    /// The model's name, description, and tags (`key=value`), lowercased, one per line: what
    /// the query's words are looked for in.
    pub text: String,
    /// How many of the model's versions are in each stage (stages without any are absent).
    pub stages: BTreeMap<Stage, u64>,
    pub latest_version: u64,
    pub production_version: Option<u64>,
    /// The metrics of the newest version.
    pub latest_metrics: BTreeMap<String, f64>,
    /// The metrics of the version in Production (empty without one).
    pub production_metrics: BTreeMap<String, f64>,
}

impl CatalogEntry {
    /// Takes the model's own fields (name, namespace, tier, owner, description, tags, latest
    /// and Production version) from `m`, keeping the counts and metrics.
    pub fn describe(&mut self, m: &Model) {
        self.namespace = m.namespace.clone();
        self.risk_tier = Some(m.risk_tier);
        self.owner = m.created_by.name.clone();
        let mut text = format!("{}\n{}", m.name, m.description);
        for (k, v) in &m.tags {
            text.push('\n');
            text.push_str(k);
            text.push('=');
            text.push_str(v);
        }
        self.text = text.to_lowercase();
        self.latest_version = m.version_count;
        self.production_version = m.production_version;
        if m.production_version.is_none() {
            self.production_metrics.clear();
        }
    }

    /// The model's words (see [`words`]).
    pub fn words(&self) -> std::collections::BTreeSet<String> {
        words(&self.text).into_iter().collect()
    }

    /// The `catalog_index` keys of model `name` with this entry.
    pub fn index_keys(&self, name: &str) -> std::collections::BTreeSet<Vec<u8>> {
        let mut keys: std::collections::BTreeSet<Vec<u8>> = self
            .words()
            .iter()
            .map(|w| index_key(WORD, w, name))
            .collect();
        keys.insert(index_key(NAMESPACE, &self.namespace, name));
        keys.insert(index_key(OWNER, &self.owner, name));
        if let Some(tier) = self.risk_tier {
            keys.insert(index_key(TIER, tier_label(tier), name));
        }
        for stage in self.stages.keys() {
            keys.insert(index_key(STAGE, stage_label(*stage), name));
        }
        keys
    }

    /// One more version in `stage` (`added`) or one fewer.
    pub fn count(&mut self, stage: Stage, added: bool) {
        let n = self.stages.entry(stage).or_default();
        *n = if added {
            n.saturating_add(1)
        } else {
            n.saturating_sub(1)
        };
        if *n == 0 {
            self.stages.remove(&stage);
        }
    }
}

/// How a metric compares with a bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    AtLeast,
    Above,
    AtMost,
    Below,
    Equal,
}

impl Comparison {
    /// `>=`, `>`, `<=`, `<` or `=` (also `==`).
    pub fn parse(op: &str) -> Option<Comparison> {
        Some(match op {
            ">=" => Comparison::AtLeast,
            ">" => Comparison::Above,
            "<=" => Comparison::AtMost,
            "<" => Comparison::Below,
            "=" | "==" => Comparison::Equal,
            _ => return None,
        })
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Comparison::AtLeast => ">=",
            Comparison::Above => ">",
            Comparison::AtMost => "<=",
            Comparison::Below => "<",
            Comparison::Equal => "=",
        }
    }

    fn holds(self, value: f64, bound: f64) -> bool {
        match self {
            Comparison::AtLeast => value >= bound,
            Comparison::Above => value > bound,
            Comparison::AtMost => value <= bound,
            Comparison::Below => value < bound,
            Comparison::Equal => value == bound,
        }
    }
}

/// `metric OP value`, e.g. `auc >= 0.8`.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRange {
    pub metric: String,
    pub comparison: Comparison,
    pub value: f64,
}

impl MetricRange {
    /// Refuses a metric name no version can carry and a bound that is not a finite number.
    pub fn check(&self) -> DomainResult<()> {
        validate_key("metric", &self.metric, limits::TAG_KEY_BYTES_MAX)?;
        if !self.value.is_finite() {
            return Err(DomainError::invalid(
                format!("metric.{}", self.metric),
                format!("the bound {} is not a finite number", self.value),
            ));
        }
        Ok(())
    }
}

/// A catalog search. Every part is optional; all given parts must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SearchFilter {
    /// Words (see [`words`]) that must all be among the model's; one ending in `*` matches
    /// every word it starts.
    pub words: Vec<String>,
    pub namespace: Option<String>,
    pub risk_tier: Option<RiskTier>,
    /// Models with at least one version in this stage.
    pub stage: Option<Stage>,
    /// Who registered the model (its `created_by`).
    pub owner: Option<String>,
    /// Checked against the Production version's metrics when `stage` is Production, else
    /// against the newest version's.
    pub metrics: Vec<MetricRange>,
    /// Whether a version of the model that is not archived is downstream of a quarantine.
    pub quarantined: Option<bool>,
}

impl SearchFilter {
    /// Checks every part, as sent by a client: the words, the namespace and owner as names, the
    /// metric ranges.
    pub fn check(&self) -> DomainResult<()> {
        if self.words.len() > QUERY_WORDS_MAX {
            return Err(DomainError::invalid(
                "query",
                format!(
                    "{} words is over the limit of {QUERY_WORDS_MAX}",
                    self.words.len()
                ),
            ));
        }
        let well_formed = |w: &String| {
            let bare = w.strip_suffix('*').unwrap_or(w);
            !bare.is_empty()
                && bare.len() <= WORD_BYTES_MAX
                && bare.chars().all(char::is_alphanumeric)
        };
        if let Some(w) = self.words.iter().find(|w| !well_formed(w)) {
            return Err(DomainError::invalid(
                "query",
                format!(
                    "{} is not a word: send what `SearchFilter::words_of` makes of the query",
                    shown(w)
                ),
            ));
        }
        // A start of one character gathers a large part of the catalog before anything else
        // narrows it.
        if let Some(w) = self.words.iter().find(|w| {
            w.strip_suffix('*')
                .is_some_and(|start| start.chars().count() < PREFIX_CHARS_MIN)
        }) {
            return Err(DomainError::invalid(
                "query",
                format!(
                    "{} is too short a start: a word ending in * needs at least \
                     {PREFIX_CHARS_MIN} characters before it",
                    shown(w)
                ),
            ));
        }
        if let Some(ns) = &self.namespace {
            validate_name("namespace", ns)?;
        }
        if let Some(owner) = &self.owner {
            if owner.is_empty()
                || owner.len() > limits::ID_BYTES_MAX
                || owner.chars().any(char::is_control)
            {
                return Err(DomainError::invalid(
                    "owner",
                    format!(
                        "{} is not a principal's name: 1-{} bytes without control characters",
                        shown(owner),
                        limits::ID_BYTES_MAX
                    ),
                ));
            }
        }
        if self.metrics.len() > METRIC_RANGES_MAX {
            return Err(DomainError::invalid(
                "metric",
                format!(
                    "{} metric ranges is over the limit of {METRIC_RANGES_MAX}",
                    self.metrics.len()
                ),
            ));
        }
        self.metrics.iter().try_for_each(MetricRange::check)
    }

    /// The words of `query` (see [`words`]); a word written with a `*` at its end keeps it on
    /// its last part (`reco-rank*`: `reco`, `rank*`). Refuses a query over
    /// [`QUERY_BYTES_MAX`] bytes or with control characters.
    pub fn words_of(query: &str) -> DomainResult<Vec<String>> {
        if query.len() > QUERY_BYTES_MAX {
            return Err(DomainError::invalid(
                "query",
                format!(
                    "{} bytes is over the limit of {QUERY_BYTES_MAX}",
                    query.len()
                ),
            ));
        }
        if query.chars().any(char::is_control) {
            return Err(DomainError::invalid(
                "query",
                "contains control characters: search for printable text",
            ));
        }
        let mut out = Vec::new();
        for written in query.split_whitespace() {
            let mut parts = words(written);
            if written.ends_with('*') {
                if let Some(last) = parts.last_mut() {
                    last.push('*');
                }
            }
            out.extend(parts);
        }
        Ok(out)
    }

    /// Where the candidates come from: one posting per word and per filter on namespace,
    /// owner, tier or stage (a model matches only if it is in all of them). Empty: every
    /// entry is a candidate.
    pub fn postings(&self) -> Vec<Posting> {
        let mut out = Vec::new();
        if let Some(ns) = &self.namespace {
            out.push(Posting::Exact(posting_prefix(NAMESPACE, ns)));
        }
        if let Some(owner) = &self.owner {
            out.push(Posting::Exact(posting_prefix(OWNER, owner)));
        }
        if let Some(tier) = self.risk_tier {
            out.push(Posting::Exact(posting_prefix(TIER, tier_label(tier))));
        }
        if let Some(stage) = self.stage {
            out.push(Posting::Exact(posting_prefix(STAGE, stage_label(stage))));
        }
        for w in &self.words {
            out.push(match w.strip_suffix('*') {
                Some(start) => {
                    let mut k = vec![WORD];
                    k.extend_from_slice(start.as_bytes());
                    Posting::Prefix(k)
                }
                None => Posting::Exact(posting_prefix(WORD, w)),
            });
        }
        out
    }

    /// Byte strings that the stored JSON of every entry this filter matches contains (a
    /// necessary condition, not a sufficient one: an entry holding them all is decoded and
    /// checked with [`SearchFilter::matches`]).
    pub fn fragments(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self
            .words
            .iter()
            .map(|w| json_inner(w.strip_suffix('*').unwrap_or(w)))
            .collect();
        if let Some(ns) = &self.namespace {
            out.push(format!("\"namespace\":\"{}\"", escaped(ns)).into_bytes());
        }
        if let Some(owner) = &self.owner {
            out.push(format!("\"owner\":\"{}\"", escaped(owner)).into_bytes());
        }
        if let Some(tier) = self.risk_tier {
            out.push(format!("\"risk_tier\":{}", json(&tier)).into_bytes());
        }
        if let Some(stage) = self.stage {
            out.push(format!("{}:", json(&stage)).into_bytes());
        }
        for m in &self.metrics {
            out.push(format!("\"{}\":", escaped(&m.metric)).into_bytes());
        }
        out
    }

    /// Whether `entry` (of a model whose versions are downstream of a quarantine when
    /// `quarantined`) matches.
    pub fn matches(&self, entry: &CatalogEntry, quarantined: bool) -> bool {
        let metrics = match self.stage {
            Some(Stage::Production) => &entry.production_metrics,
            _ => &entry.latest_metrics,
        };
        let own = if self.words.is_empty() {
            Default::default()
        } else {
            entry.words()
        };
        self.words.iter().all(|w| match w.strip_suffix('*') {
            Some(start) => own.iter().any(|o| o.starts_with(start)),
            None => own.contains(w),
        }) && self
            .namespace
            .as_ref()
            .is_none_or(|ns| *ns == entry.namespace)
            && self.owner.as_ref().is_none_or(|o| *o == entry.owner)
            && self.risk_tier.is_none_or(|t| entry.risk_tier == Some(t))
            && self
                .stage
                .is_none_or(|s| entry.stages.get(&s).is_some_and(|n| *n > 0))
            && self.metrics.iter().all(|r| {
                metrics
                    .get(&r.metric)
                    .is_some_and(|v| r.comparison.holds(*v, r.value))
            })
            && self.quarantined.is_none_or(|q| q == quarantined)
    }

    /// The filter in words, for a listing's header and an empty result's message.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.words.is_empty() {
            parts.push(format!("{:?}", self.words.join(" ")));
        }
        if let Some(ns) = &self.namespace {
            parts.push(format!("namespace {ns}"));
        }
        if let Some(t) = self.risk_tier {
            parts.push(format!("{t:?} risk").to_lowercase());
        }
        if let Some(s) = self.stage {
            parts.push(format!("a version in {}", stage_label(s)));
        }
        if let Some(o) = &self.owner {
            parts.push(format!("owner {o}"));
        }
        for m in &self.metrics {
            parts.push(format!(
                "{} {} {}",
                m.metric,
                m.comparison.symbol(),
                m.value
            ));
        }
        match self.quarantined {
            Some(true) => parts.push("quarantined".into()),
            Some(false) => parts.push("not quarantined".into()),
            None => {}
        }
        if parts.is_empty() {
            "every model".into()
        } else {
            parts.join(", ")
        }
    }
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("a plain value serializes")
}

/// `text` as it appears inside a JSON string (escaped, without the quotes).
fn escaped(text: &str) -> String {
    let quoted = json(&text);
    quoted[1..quoted.len() - 1].to_string()
}

fn json_inner(text: &str) -> Vec<u8> {
    escaped(text).into_bytes()
}

#[cfg(test)]
pub(crate) mod tests;
