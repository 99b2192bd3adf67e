//! Watch rules, pure (issue 15): the changes a watcher is told of, the filters it may ask for,
//! and the limits of a watch. Apply records every change that serving cares about as a
//! [`WatchEvent`] with a revision (`state/apply/watch.rs`): one counter for the whole registry,
//! increasing by one per event, equal on every node because it is assigned in apply. A watcher
//! resumes after the last revision it saw, on any node, and is told it fell behind when the
//! events after it are no longer kept (decision 0024).

use serde::{Deserialize, Serialize};

use crate::domain::{stage_label, status_label, validate_name, DomainError, Stage, VersionStatus};

/// Events kept for watchers that resume: apply removes the oldest beyond this many. A watcher
/// resuming from before the oldest kept is told to re-read the state.
pub const WATCH_EVENTS_KEPT: u64 = 100_000;
/// Most events one message of a watch carries.
pub const WATCH_BATCH_EVENTS_MAX: usize = 256;
/// Most kept events one read walks, matching or not: a filter that matches rarely answers with
/// progress and goes on, rather than walk every kept event in one read transaction.
pub const WATCH_SCAN_EVENTS_MAX: usize = 4096;

/// One change, as a watcher sees it. New kinds go at the end (their names are stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A model was created, or its description or tags changed.
    Model { model: String },
    /// A version was registered (its number assigned).
    VersionCreated {
        model: String,
        number: u64,
        status: VersionStatus,
    },
    /// A version's status changed (e.g. READY once its copies are durable).
    VersionStatus {
        model: String,
        number: u64,
        status: VersionStatus,
    },
    /// A version's tags changed.
    VersionTags { model: String, number: u64 },
    /// A version moved between stages (a promotion, and the archiving it caused, are two).
    Stage {
        model: String,
        number: u64,
        from: Stage,
        to: Stage,
    },
    /// An alias now points at `number`.
    AliasSet {
        model: String,
        alias: String,
        number: u64,
    },
    /// An alias was removed; it pointed at `number`.
    AliasDeleted {
        model: String,
        alias: String,
        number: u64,
    },
    /// A deployment endpoint (of `model`) changed: its split, shadows or rollout; it is at
    /// `generation` now.
    Deployment {
        endpoint: String,
        model: String,
        #[serde(default)]
        generation: u64,
    },
}

impl Change {
    /// The model the change is about.
    pub fn model(&self) -> &str {
        match self {
            Change::Model { model }
            | Change::VersionCreated { model, .. }
            | Change::VersionStatus { model, .. }
            | Change::VersionTags { model, .. }
            | Change::Stage { model, .. }
            | Change::AliasSet { model, .. }
            | Change::AliasDeleted { model, .. }
            | Change::Deployment { model, .. } => model,
        }
    }

    /// The version the change is about, if one.
    pub fn number(&self) -> Option<u64> {
        match self {
            Change::VersionCreated { number, .. }
            | Change::VersionStatus { number, .. }
            | Change::VersionTags { number, .. }
            | Change::Stage { number, .. }
            | Change::AliasSet { number, .. }
            | Change::AliasDeleted { number, .. } => Some(*number),
            Change::Model { .. } | Change::Deployment { .. } => None,
        }
    }

    /// Short name for the wire and the CLI.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Model { .. } => "model",
            Change::VersionCreated { .. } => "version_created",
            Change::VersionStatus { .. } => "version_status",
            Change::VersionTags { .. } => "version_tags",
            Change::Stage { .. } => "stage",
            Change::AliasSet { .. } => "alias_set",
            Change::AliasDeleted { .. } => "alias_deleted",
            Change::Deployment { .. } => "deployment",
        }
    }

    /// One line for people: `reco/14 staging → production`.
    pub fn describe(&self) -> String {
        match self {
            Change::Model { model } => format!("model {model} changed"),
            Change::VersionCreated {
                model,
                number,
                status,
            } => format!("{model}/{number} registered ({})", status_label(*status)),
            Change::VersionStatus {
                model,
                number,
                status,
            } => format!("{model}/{number} is {}", status_label(*status)),
            Change::VersionTags { model, number } => format!("{model}/{number} tags changed"),
            Change::Stage {
                model,
                number,
                from,
                to,
            } => format!(
                "{model}/{number} {} → {}",
                stage_label(*from),
                stage_label(*to)
            ),
            Change::AliasSet {
                model,
                alias,
                number,
            } => format!("{model}@{alias} → {number}"),
            Change::AliasDeleted {
                model,
                alias,
                number,
            } => format!("{model}@{alias} removed (was {number})"),
            Change::Deployment {
                endpoint,
                model,
                generation,
            } => format!("endpoint {endpoint} ({model}) changed: generation {generation}"),
        }
    }
}

/// A change with its place in the registry's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// 1, 2, 3, …: one per event, in commit order, equal on every node.
    pub revision: u64,
    /// When the command that made it was stamped.
    pub at_ms: i64,
    /// Who made it.
    pub principal: String,
    pub change: Change,
}

/// What a watcher wants to hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchFilter {
    /// Every change (needs the reader role cluster-wide).
    All,
    /// Every change to one model, its versions, aliases and deployments.
    Model(String),
    /// Where `model@alias` points.
    Alias { model: String, alias: String },
    /// Which versions of `model` enter or leave `stage`.
    Stage { model: String, stage: Stage },
    /// One deployment endpoint.
    Endpoint(String),
}

impl WatchFilter {
    /// Whether `change` is one this filter asks for.
    pub fn matches(&self, change: &Change) -> bool {
        match self {
            WatchFilter::All => true,
            WatchFilter::Model(model) => change.model() == model,
            WatchFilter::Alias { model, alias } => match change {
                Change::AliasSet {
                    model: m, alias: a, ..
                }
                | Change::AliasDeleted {
                    model: m, alias: a, ..
                } => m == model && a == alias,
                _ => false,
            },
            WatchFilter::Stage { model, stage } => match change {
                Change::Stage {
                    model: m, from, to, ..
                } => m == model && (from == stage || to == stage),
                _ => false,
            },
            WatchFilter::Endpoint(endpoint) => {
                matches!(change, Change::Deployment { endpoint: e, .. } if e == endpoint)
            }
        }
    }

    /// Every name in the filter within its limits.
    pub fn check(&self) -> Result<(), DomainError> {
        match self {
            WatchFilter::All => Ok(()),
            WatchFilter::Model(model) | WatchFilter::Stage { model, .. } => {
                validate_name("model", model)
            }
            WatchFilter::Alias { model, alias } => {
                validate_name("model", model)?;
                validate_name("alias", alias)
            }
            WatchFilter::Endpoint(endpoint) => validate_name("endpoint", endpoint),
        }
    }

    /// The model the filter is about, if it names one (its namespace's reader may watch).
    pub fn model(&self) -> Option<&str> {
        match self {
            WatchFilter::Model(model)
            | WatchFilter::Alias { model, .. }
            | WatchFilter::Stage { model, .. } => Some(model),
            WatchFilter::All | WatchFilter::Endpoint(_) => None,
        }
    }
}

/// One read of the kept events after a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchRead {
    /// The matching events after the revision asked for (at most [`WATCH_BATCH_EVENTS_MAX`]),
    /// and how far the read got: every event up to `through` was read (matching or not), so
    /// the next read starts after it.
    Events {
        events: Vec<WatchEvent>,
        through: u64,
    },
    /// Events after the revision asked for are no longer kept: the watcher must re-read the
    /// state and watch again from `latest`.
    Behind { oldest_kept: u64, latest: u64 },
}

/// The refusal of a watch resumed from a revision whose successors were dropped.
pub fn behind_message(after: u64, oldest_kept: u64, latest: u64) -> String {
    format!(
        "watch: the events after revision {after} are no longer kept (the oldest kept is \
         {oldest_kept}); re-read the state, then watch again from revision {latest}"
    )
}

/// The refusal of a watch resumed from a revision this node has not reached.
pub fn ahead_message(after: u64, latest: u64) -> String {
    format!(
        "watch: revision {after} is ahead of this registry's latest ({latest}); resume from a \
         revision a watch gave you"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(model: &str, from: Stage, to: Stage) -> Change {
        Change::Stage {
            model: model.into(),
            number: 3,
            from,
            to,
        }
    }

    #[test]
    fn a_stage_filter_hears_versions_entering_and_leaving_its_stage_only() {
        let f = WatchFilter::Stage {
            model: "reco".into(),
            stage: Stage::Production,
        };
        assert!(f.matches(&stage("reco", Stage::Staging, Stage::Production)));
        assert!(f.matches(&stage("reco", Stage::Production, Stage::Archived)));
        assert!(!f.matches(&stage("reco", Stage::Experimental, Stage::Staging)));
        assert!(!f.matches(&stage("other", Stage::Staging, Stage::Production)));
        assert!(!f.matches(&Change::Model {
            model: "reco".into()
        }));
    }

    #[test]
    fn an_alias_filter_hears_its_alias_of_its_model_only() {
        let f = WatchFilter::Alias {
            model: "reco".into(),
            alias: "champion".into(),
        };
        let set = |model: &str, alias: &str| Change::AliasSet {
            model: model.into(),
            alias: alias.into(),
            number: 1,
        };
        assert!(f.matches(&set("reco", "champion")));
        assert!(f.matches(&Change::AliasDeleted {
            model: "reco".into(),
            alias: "champion".into(),
            number: 1
        }));
        assert!(!f.matches(&set("reco", "challenger")));
        assert!(!f.matches(&set("other", "champion")));
        assert!(WatchFilter::Model("reco".into()).matches(&set("reco", "x")));
        assert!(WatchFilter::All.matches(&set("other", "x")));
    }

    #[test]
    fn an_endpoint_filter_hears_its_endpoint_only() {
        let f = WatchFilter::Endpoint("reco-prod".into());
        let d = |e: &str| Change::Deployment {
            endpoint: e.into(),
            model: "reco".into(),
            generation: 1,
        };
        assert!(f.matches(&d("reco-prod")));
        assert!(!f.matches(&d("reco-canary")));
        assert!(!f.matches(&stage("reco", Stage::Staging, Stage::Production)));
    }

    #[test]
    fn hostile_names_in_a_filter_are_refused_naming_the_field() {
        let long = "a".repeat(65);
        for bad in ["", "A", "../x", "a\0b", "ünï", long.as_str(), "a/b", "C:x"] {
            let e = WatchFilter::Model(bad.into()).check().unwrap_err();
            assert!(e.to_string().contains("model"), "{bad:?}: {e}");
            let e = WatchFilter::Endpoint(bad.into()).check().unwrap_err();
            assert!(e.to_string().contains("endpoint"), "{bad:?}: {e}");
            let e = WatchFilter::Alias {
                model: "reco".into(),
                alias: bad.into(),
            }
            .check()
            .unwrap_err();
            assert!(e.to_string().contains("alias"), "{bad:?}: {e}");
        }
        WatchFilter::All.check().unwrap();
        WatchFilter::Stage {
            model: "reco".into(),
            stage: Stage::Staging,
        }
        .check()
        .unwrap();
    }
}
