//! The search filters MLflow's client sends, e.g. `name LIKE 'fraud-%'`, `name = 'x' AND
//! run_id = 'r'`, `tags.team = 'risk'`: conditions joined by `AND`, each a key, an operator
//! (`=`, `!=`, `LIKE`, `ILIKE`) and a quoted string. Anything else is refused by name.

use std::collections::BTreeMap;

use super::ApiError;

/// Longest filter accepted.
pub const FILTER_BYTES_MAX: usize = 4096;
/// Conditions in one filter.
pub const CONDITIONS_MAX: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Name,
    RunId,
    Tag(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Like,
    ILike,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub key: Key,
    pub op: Op,
    pub value: String,
}

/// A parsed filter: every condition must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub conditions: Vec<Condition>,
}

/// What a filter is matched against.
pub struct Subject<'a> {
    pub name: &'a str,
    pub run_id: &'a str,
    pub tags: &'a BTreeMap<String, String>,
}

impl Filter {
    /// Parses `text`; `run_id` says whether the key is allowed (model versions only).
    pub fn parse(text: &str, run_id: bool) -> Result<Filter, ApiError> {
        let bad = |why: String| {
            ApiError::invalid(
                "filter",
                format!(
                    "{why}; write conditions like name LIKE 'fraud-%' or name = 'fraud'{} \
                     joined by AND",
                    if run_id { " or run_id = '…'" } else { "" }
                ),
            )
        };
        if text.len() > FILTER_BYTES_MAX {
            return Err(bad(format!(
                "{} bytes is over the limit of {FILTER_BYTES_MAX}",
                text.len()
            )));
        }
        let mut conditions = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            if conditions.len() == CONDITIONS_MAX {
                return Err(bad(format!("more than {CONDITIONS_MAX} conditions")));
            }
            // The key: letters, digits, '_', '.', or a backquoted tag key.
            let key_end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '`'))
                .unwrap_or(rest.len());
            let raw_key = &rest[..key_end];
            let key = match raw_key.to_ascii_lowercase().as_str() {
                "name" => Key::Name,
                "run_id" if run_id => Key::RunId,
                k if k.starts_with("tags.") || k.starts_with("tag.") => {
                    let tag = raw_key
                        .split_once('.')
                        .map_or("", |(_, t)| t)
                        .trim_matches('`');
                    if tag.is_empty() {
                        return Err(bad("a tag condition needs the tag's key".into()));
                    }
                    Key::Tag(tag.to_string())
                }
                _ => {
                    return Err(bad(format!(
                        "{} is not a key Quiver filters on",
                        crate::domain::shown(raw_key)
                    )))
                }
            };
            rest = rest[key_end..].trim_start();
            let upper: String = rest
                .chars()
                .take(6)
                .collect::<String>()
                .to_ascii_uppercase();
            let (op, len) = if rest.starts_with("!=") {
                (Op::Ne, 2)
            } else if rest.starts_with('=') {
                (Op::Eq, 1)
            } else if upper.starts_with("ILIKE") {
                (Op::ILike, 5)
            } else if upper.starts_with("LIKE") {
                (Op::Like, 4)
            } else {
                return Err(bad("expected =, !=, LIKE or ILIKE after the key".into()));
            };
            rest = rest[len..].trim_start();
            let quote = match rest.chars().next() {
                Some(q @ ('\'' | '"')) => q,
                _ => return Err(bad("the value must be a quoted string".into())),
            };
            let Some(close) = rest[1..].find(quote) else {
                return Err(bad("a quoted value is not closed".into()));
            };
            let value = rest[1..1 + close].to_string();
            rest = rest[close + 2..].trim_start();
            conditions.push(Condition { key, op, value });
            if rest.is_empty() {
                break;
            }
            let and: String = rest
                .chars()
                .take(3)
                .collect::<String>()
                .to_ascii_uppercase();
            if and != "AND" || !rest[3..].starts_with(char::is_whitespace) {
                return Err(bad("conditions must be joined by AND".into()));
            }
            rest = rest[3..].trim_start();
            if rest.is_empty() {
                return Err(bad("AND must be followed by a condition".into()));
            }
        }
        Ok(Filter { conditions })
    }

    pub fn matches(&self, subject: &Subject<'_>) -> bool {
        self.conditions.iter().all(|c| {
            let value = match &c.key {
                Key::Name => Some(subject.name),
                Key::RunId => Some(subject.run_id),
                Key::Tag(key) => subject.tags.get(key).map(String::as_str),
            };
            // A missing tag differs from every value (MLflow's client asks for
            // `tag.mlflow.prompt.is_prompt != 'true'` on every search).
            let Some(value) = value else {
                return c.op == Op::Ne;
            };
            match c.op {
                Op::Eq => value == c.value,
                Op::Ne => value != c.value,
                Op::Like => like(value, &c.value),
                Op::ILike => like(&value.to_lowercase(), &c.value.to_lowercase()),
            }
        })
    }

    /// The name every match has, if the filter fixes it (`name = 'x'`).
    pub fn exact_name(&self) -> Option<&str> {
        self.conditions
            .iter()
            .find(|c| c.key == Key::Name && c.op == Op::Eq)
            .map(|c| c.value.as_str())
    }

    /// A prefix every matching name has (from `name = 'x'` or `name LIKE 'x%…'`), to start the
    /// scan at; `None` when no model name can have it (too long, or characters no name has),
    /// so nothing matches.
    pub fn name_prefix(&self) -> Option<&str> {
        let prefix = match self.exact_name() {
            Some(name) => name,
            None => self
                .conditions
                .iter()
                .filter(|c| c.key == Key::Name && c.op == Op::Like)
                .map(|c| &c.value[..c.value.find(['%', '_']).unwrap_or(c.value.len())])
                .max_by_key(|p| p.len())
                .unwrap_or(""),
        };
        let name_like = prefix.len() <= crate::domain::limits::NAME_BYTES_MAX
            && prefix.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            });
        name_like.then_some(prefix)
    }
}

/// SQL LIKE: `%` any run of characters, `_` any one character, everything else itself.
pub fn like(text: &str, pattern: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    let pattern: Vec<char> = pattern.chars().collect();
    // Greedy matching with backtracking to the last `%`: linear in practice, quadratic at worst
    // (both are bounded by the name and filter limits).
    let (mut t, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '_' || pattern[p] == text[t]) {
            t += 1;
            p += 1;
        } else if p < pattern.len() && pattern[p] == '%' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '%')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> BTreeMap<String, String> {
        [("team".to_string(), "risk".to_string())].into()
    }

    #[test]
    fn like_matches_as_sql_does() {
        assert!(like("fraud-model", "fraud-%"));
        assert!(like("fraud-model", "%model"));
        assert!(like("fraud-model", "%ud-m%"));
        assert!(like("abc", "a_c"));
        assert!(like("", "%"));
        assert!(!like("abc", "a_"));
        assert!(!like("fraud", "fraud-%"));
        assert!(like("aaa", "%a%a%a%"));
        assert!(!like("aa", "%a%a%a%"));
    }

    #[test]
    fn filters_parse_and_match() {
        let f = Filter::parse("name LIKE 'fr%' AND tags.team = \"risk\"", false).unwrap();
        assert_eq!(f.name_prefix(), Some("fr"));
        let none = Filter::parse(&format!("name LIKE '{}%'", "é".repeat(600)), false).unwrap();
        assert_eq!(
            none.name_prefix(),
            None,
            "no name starts so: nothing to scan"
        );
        let t = tags();
        let s = |name| Subject {
            name,
            run_id: "",
            tags: &t,
        };
        assert!(f.matches(&s("fraud")));
        assert!(!f.matches(&s("churn")));
        let f = Filter::parse("name='m' and run_id = 'r1'", true).unwrap();
        assert_eq!(f.exact_name(), Some("m"));
        assert!(f.matches(&Subject {
            name: "m",
            run_id: "r1",
            tags: &t
        }));
        assert!(Filter::parse("", false).unwrap().conditions.is_empty());
        let prompts = "name LIKE 'fr%' AND tag.`mlflow.prompt.is_prompt` != 'true'";
        let f = Filter::parse(prompts, false).unwrap();
        assert!(f.matches(&s("fraud")), "a missing tag is not 'true'");
        assert!(Filter::parse("name ILIKE 'FR%'", false)
            .unwrap()
            .matches(&s("fraud")));
    }

    #[test]
    fn malformed_filters_are_refused_naming_the_field() {
        for bad in [
            "name",
            "name =",
            "name = fraud",
            "name = 'fraud",
            "name = 'a' OR name = 'b'",
            "name = 'a' AND",
            "run_id = 'r'",
            "owner = 'x'",
            "tags. = 'x'",
            "name = 'a' name = 'b'",
            "\0 = 'x'",
            "名前 = 'x'",
        ] {
            let e = Filter::parse(bad, false).unwrap_err();
            assert_eq!(e.code, "INVALID_PARAMETER_VALUE", "{bad:?}");
            assert!(e.message.contains("filter"), "{bad:?}: {}", e.message);
        }
        let long = format!("name LIKE '{}'", "%".repeat(FILTER_BYTES_MAX));
        assert!(Filter::parse(&long, false).is_err());
        let many = vec!["name = 'a'"; CONDITIONS_MAX + 1].join(" AND ");
        assert!(Filter::parse(&many, false).is_err());
    }
}
