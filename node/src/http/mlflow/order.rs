//! The `order_by` of MLflow's two registry searches, e.g. `["last_updated_timestamp DESC"]`:
//! clauses of a key and an optional `ASC`/`DESC`, with MLflow's keys and its defaults. A
//! registered-model search is ordered by name unless told otherwise; a version search by
//! `last_updated_timestamp DESC, name ASC, version_number DESC`. Ties fall back to name (and
//! version number), so an order is total and pages never overlap.

use std::cmp::Ordering;

use super::ApiError;
use crate::domain::Version;

/// Clauses in one `order_by`.
pub const CLAUSES_MAX: usize = 4;
/// Longest clause accepted.
const CLAUSE_BYTES_MAX: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Name,
    Version,
    Created,
    Updated,
}

/// A total order over search results: (key, ascending) clauses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    clauses: Vec<(SortKey, bool)>,
}

/// The values a result is ordered by.
pub struct SortRow<'a> {
    pub name: &'a str,
    pub number: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl<'a> SortRow<'a> {
    pub fn of_version(v: &'a Version) -> SortRow<'a> {
        SortRow {
            name: &v.model,
            number: v.number,
            created_ms: v.created_at_ms,
            updated_ms: updated_ms(v),
        }
    }
}

/// When a version last changed as MLflow shows it: its newest stage transition, else its
/// creation.
pub fn updated_ms(v: &Version) -> i64 {
    v.stage_history
        .iter()
        .map(|t| t.at_ms)
        .max()
        .unwrap_or(v.created_at_ms)
        .max(v.created_at_ms)
}

const MODEL_KEYS: &[(&str, SortKey)] = &[
    ("name", SortKey::Name),
    // MLflow orders models by their last update for both timestamp keys.
    ("timestamp", SortKey::Updated),
    ("last_updated_timestamp", SortKey::Updated),
    ("creation_timestamp", SortKey::Created),
];

const VERSION_KEYS: &[(&str, SortKey)] = &[
    ("name", SortKey::Name),
    ("version_number", SortKey::Version),
    ("creation_timestamp", SortKey::Created),
    ("last_updated_timestamp", SortKey::Updated),
];

impl Order {
    /// A registered-model search's order; `None` when it is name order, which pages by key
    /// without sorting.
    pub fn models(list: &[String]) -> Result<Option<Order>, ApiError> {
        let mut order = parse(list, MODEL_KEYS)?;
        order.complete(&[(SortKey::Name, true)]);
        Ok((order.clauses != [(SortKey::Name, true)]).then_some(order))
    }

    /// A model-version search's order, MLflow's default when `list` is empty.
    pub fn versions(list: &[String]) -> Result<Order, ApiError> {
        let mut order = parse(list, VERSION_KEYS)?;
        if list.is_empty() {
            order.clauses.push((SortKey::Updated, false));
        }
        order.complete(&[(SortKey::Name, true), (SortKey::Version, false)]);
        Ok(order)
    }

    /// Whether this order is the versions' key order (name, then number, ascending), which
    /// pages by key without sorting.
    pub fn is_key_order(&self) -> bool {
        self.clauses == [(SortKey::Name, true), (SortKey::Version, true)]
    }

    fn complete(&mut self, tie_breakers: &[(SortKey, bool)]) {
        for &(key, ascending) in tie_breakers {
            if !self.clauses.iter().any(|(k, _)| *k == key) {
                self.clauses.push((key, ascending));
            }
        }
    }

    pub fn compare(&self, a: &SortRow<'_>, b: &SortRow<'_>) -> Ordering {
        for &(key, ascending) in &self.clauses {
            let by = match key {
                SortKey::Name => a.name.cmp(b.name),
                SortKey::Version => a.number.cmp(&b.number),
                SortKey::Created => a.created_ms.cmp(&b.created_ms),
                SortKey::Updated => a.updated_ms.cmp(&b.updated_ms),
            };
            let by = if ascending { by } else { by.reverse() };
            if by != Ordering::Equal {
                return by;
            }
        }
        Ordering::Equal
    }
}

fn parse(list: &[String], keys: &[(&str, SortKey)]) -> Result<Order, ApiError> {
    let valid = || {
        keys.iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if list.len() > CLAUSES_MAX {
        return Err(ApiError::invalid(
            "order_by",
            format!("more than {CLAUSES_MAX} clauses"),
        ));
    }
    let mut clauses: Vec<(SortKey, bool)> = Vec::new();
    for clause in list {
        let shown = crate::domain::shown(clause);
        if clause.len() > CLAUSE_BYTES_MAX {
            return Err(ApiError::invalid(
                "order_by",
                format!("{shown} is longer than {CLAUSE_BYTES_MAX} bytes"),
            ));
        }
        let words: Vec<&str> = clause.split_whitespace().collect();
        let (key, ascending) = match words.as_slice() {
            [key] => (*key, true),
            [key, dir] if dir.eq_ignore_ascii_case("asc") => (*key, true),
            [key, dir] if dir.eq_ignore_ascii_case("desc") => (*key, false),
            _ => {
                return Err(ApiError::invalid(
                    "order_by",
                    format!(
                        "{shown} is not a clause: write a key and ASC or DESC, e.g. \"name ASC\""
                    ),
                ))
            }
        };
        let key = key.trim_matches('`');
        let key = key.strip_prefix("attribute.").unwrap_or(key);
        let Some(&(_, sort)) = keys.iter().find(|(name, _)| *name == key) else {
            return Err(ApiError::invalid(
                "order_by",
                format!("{shown} orders by an unknown key: use one of {}", valid()),
            ));
        };
        if clauses.iter().any(|(k, _)| *k == sort) {
            return Err(ApiError::invalid(
                "order_by",
                format!("{shown} orders by a key already given"),
            ));
        }
        clauses.push((sort, ascending));
    }
    Ok(Order { clauses })
}

/// A sorted search's page token: the offset of the page's first result, marked with `@`,
/// which no model name contains, so it never reads as a key-order token.
pub fn offset_token(offset: usize) -> String {
    format!("@{offset}")
}

/// The offset in a sorted search's token; `None` when the token is a key-order one.
pub fn parse_offset(after: &str) -> Option<Result<usize, ApiError>> {
    let offset = after.strip_prefix('@')?;
    Some(offset.parse().map_err(|_| super::registry::bad_token()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn row(name: &str, number: u64, created_ms: i64, updated_ms: i64) -> SortRow<'_> {
        SortRow {
            name,
            number,
            created_ms,
            updated_ms,
        }
    }

    #[test]
    fn defaults_follow_mlflow() {
        assert_eq!(Order::models(&[]).unwrap(), None);
        assert_eq!(Order::models(&list(&["name"])).unwrap(), None);
        assert_eq!(Order::models(&list(&["name asc"])).unwrap(), None);
        let versions = Order::versions(&[]).unwrap();
        assert_eq!(
            versions.clauses,
            [
                (SortKey::Updated, false),
                (SortKey::Name, true),
                (SortKey::Version, false)
            ]
        );
        assert!(Order::versions(&list(&["name ASC", "version_number ASC"]))
            .unwrap()
            .is_key_order());
        assert!(!Order::versions(&list(&["name ASC"]))
            .unwrap()
            .is_key_order());
    }

    #[test]
    fn sorts_by_each_key_with_name_and_number_breaking_ties() {
        let order = Order::models(&list(&["last_updated_timestamp DESC"]))
            .unwrap()
            .expect("not name order");
        let mut rows = [row("b", 0, 1, 5), row("a", 0, 1, 5), row("c", 0, 1, 9)];
        rows.sort_by(|x, y| order.compare(x, y));
        let names: Vec<&str> = rows.iter().map(|r| r.name).collect();
        assert_eq!(names, ["c", "a", "b"]);

        let order = Order::versions(&[]).unwrap();
        let mut rows = [row("m", 1, 1, 7), row("m", 2, 2, 7), row("k", 3, 3, 8)];
        rows.sort_by(|x, y| order.compare(x, y));
        let got: Vec<(&str, u64)> = rows.iter().map(|r| (r.name, r.number)).collect();
        assert_eq!(got, [("k", 3), ("m", 2), ("m", 1)]);

        let order = Order::versions(&list(&["`version_number` asc"])).unwrap();
        let mut rows = [row("m", 2, 1, 1), row("a", 2, 1, 1), row("z", 1, 1, 1)];
        rows.sort_by(|x, y| order.compare(x, y));
        let got: Vec<(&str, u64)> = rows.iter().map(|r| (r.name, r.number)).collect();
        assert_eq!(got, [("z", 1), ("a", 2), ("m", 2)]);
    }

    #[test]
    fn hostile_clauses_are_refused_by_name() {
        let long = "name ".repeat(40);
        for bad in [
            vec![""],
            vec!["   "],
            vec!["name sideways"],
            vec!["name ASC DESC"],
            vec!["run_id"],
            vec!["version_number"],
            vec!["tags.team"],
            vec!["name\0"],
            vec!["../name"],
            vec!["nämé"],
            vec![long.as_str()],
            vec!["name", "name DESC"],
            vec![
                "name",
                "timestamp",
                "creation_timestamp",
                "last_updated_timestamp",
            ],
            vec!["name"; 5],
        ] {
            let err = Order::models(&list(&bad)).expect_err("refused");
            assert!(err.message.contains("order_by"), "{bad:?}: {}", err.message);
        }
        for bad in [vec!["timestamp"], vec!["version_number up"]] {
            let err = Order::versions(&list(&bad)).expect_err("refused");
            assert!(err.message.contains("order_by"), "{bad:?}: {}", err.message);
        }
    }

    #[test]
    fn offset_tokens_never_read_as_names() {
        assert!(parse_offset("fraud").is_none());
        assert!(parse_offset("fraud/3").is_none());
        assert_eq!(
            parse_offset(&offset_token(40)).and_then(Result::ok),
            Some(40)
        );
        assert!(parse_offset("@-1").unwrap().is_err());
        assert!(parse_offset("@99999999999999999999999").unwrap().is_err());
        assert!(crate::domain::validate_name("n", &offset_token(0)).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            rng_seed: proptest::test_runner::RngSeed::Fixed(16),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Whatever is sent, parsing answers (never panics); what parses sorts totally: rows of
        /// two versions never compare equal, and the order is antisymmetric.
        #[test]
        fn any_clause_parses_or_is_refused_and_orders_are_total(
            clauses in proptest::collection::vec("\\PC{0,24}", 0..6),
            a in (0u64..4, 0i64..4, 0i64..4),
            b in (0u64..4, 0i64..4, 0i64..4),
        ) {
            if let Ok(order) = Order::versions(&clauses) {
                let x = row("m", a.0, a.1, a.2);
                let y = row("m", b.0, b.1, b.2);
                if a.0 != b.0 {
                    prop_assert_ne!(order.compare(&x, &y), Ordering::Equal);
                }
                prop_assert_eq!(order.compare(&x, &y), order.compare(&y, &x).reverse());
            }
            let _ = Order::models(&clauses);
        }
    }
}
