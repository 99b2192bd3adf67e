//! Parsers for argument values. Each error names the value and what a good
//! one looks like; clap adds the flag, so the user sees both.

use std::collections::BTreeMap;
use std::fmt;

use crate::proto::{RiskTier, Stage};
use crate::reference::parse_stage;

/// A mistake in the command line found after clap parsed it (a key given
/// twice, a flag combination). Exits with 2 like clap's own usage errors.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// How read commands print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// Stable JSON for scripts.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RiskTierArg {
    Low,
    Medium,
    High,
}

impl From<RiskTierArg> for RiskTier {
    fn from(tier: RiskTierArg) -> RiskTier {
        match tier {
            RiskTierArg::Low => RiskTier::Low,
            RiskTierArg::Medium => RiskTier::Medium,
            RiskTierArg::High => RiskTier::High,
        }
    }
}

/// `KEY=VALUE`; the value may be empty and may itself contain '='.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE (for example team=search), got '{text}'"))?;
    if key.trim().is_empty() {
        return Err(format!("the key before '=' is empty in '{text}'"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// `KEY=NUMBER` for `--metric`.
pub fn parse_metric(text: &str) -> Result<(String, f64), String> {
    let (key, value) = parse_key_value(text)?;
    match value.trim().parse::<f64>() {
        Ok(number) if number.is_finite() => Ok((key, number)),
        _ => Err(format!(
            "metric '{key}' has value '{value}', which is not a finite number (for example {key}=0.93)"
        )),
    }
}

/// A catalog search's `METRIC>=VALUE` (or `>`, `<=`, `<`, `=`), with a finite value.
pub fn parse_metric_range_arg(text: &str) -> Result<crate::proto::MetricRange, String> {
    let range = quiver_api::search::parse_metric_range(text)?;
    if range.metric.is_empty() {
        return Err(format!(
            "{text:?} names no metric: write METRIC>=VALUE, e.g. auc>=0.8"
        ));
    }
    if !range.value.is_finite() {
        return Err(format!("{text:?}: the bound is not a finite number"));
    }
    Ok(range)
}

/// Collects `KEY=VALUE` pairs of one flag into a map, refusing a key given twice.
pub fn into_map<V>(flag: &str, pairs: Vec<(String, V)>) -> Result<BTreeMap<String, V>, UsageError> {
    let mut map = BTreeMap::new();
    for (key, value) in pairs {
        if map.insert(key.clone(), value).is_some() {
            return Err(UsageError(format!(
                "{flag} gives the key '{key}' twice; give each key once"
            )));
        }
    }
    Ok(map)
}

/// A stage name as users type it; `unspecified` is not one.
pub fn parse_stage_arg(text: &str) -> Result<Stage, String> {
    match parse_stage(text) {
        Some(stage) if stage != Stage::Unspecified => Ok(stage),
        _ => Err(format!(
            "unknown stage '{text}' (expected experimental, staging, production or archived)"
        )),
    }
}

/// A version number: a positive integer.
pub fn parse_version_number(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(number) if number > 0 => Ok(number),
        _ => Err(format!(
            "'{text}' is not a version number (a positive integer such as 3)"
        )),
    }
}

/// A byte size: a whole number with an optional unit, decimal (KB, MB, GB,
/// TB) or binary (KiB, MiB, GiB, TiB), case-insensitive: `1GiB`, `512MiB`,
/// `10MB`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "invalid size '{text}': expected a whole number with an optional unit, such as \
             1GiB, 512MiB or 10MB"
        ));
    }
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "invalid size '{text}': unknown unit '{}' (expected B, KB, MB, GB, TB, KiB, \
                 MiB, GiB or TiB)",
                unit.trim()
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(multiplier))
        .ok_or_else(|| format!("invalid size '{text}': too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_key_value("team=search").unwrap(),
            ("team".into(), "search".into())
        );
        assert_eq!(
            parse_key_value("q=a=b").unwrap(),
            ("q".into(), "a=b".into())
        );
        assert_eq!(parse_key_value("k=").unwrap(), ("k".into(), String::new()));
        let error = parse_key_value("team").unwrap_err();
        assert!(
            error.contains("expected KEY=VALUE") && error.contains("'team'"),
            "{error}"
        );
        assert!(parse_key_value("=x")
            .unwrap_err()
            .contains("key before '=' is empty"));
    }

    #[test]
    fn metrics_must_be_finite_numbers_and_errors_name_the_key() {
        assert_eq!(parse_metric("auc=0.93").unwrap(), ("auc".into(), 0.93));
        assert_eq!(parse_metric("loss=-1e-3").unwrap().1, -0.001);
        let error = parse_metric("auc=high").unwrap_err();
        assert!(
            error.starts_with("metric 'auc' has value 'high'"),
            "{error}"
        );
        assert!(parse_metric("auc=NaN").is_err());
        assert!(parse_metric("auc=inf").is_err());
    }

    #[test]
    fn a_key_given_twice_is_a_usage_error_naming_flag_and_key() {
        let pairs = vec![
            ("a".to_string(), "1".to_string()),
            ("a".to_string(), "2".to_string()),
        ];
        let error = into_map("--tag", pairs).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--tag gives the key 'a' twice; give each key once"
        );
        let map = into_map("--tag", vec![("b".to_string(), 1), ("a".to_string(), 2)]).unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("8mib").unwrap(), 8 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("3 KiB").unwrap(), 3072);
        assert!(parse_size("1XB").unwrap_err().contains("unknown unit 'XB'"));
        assert!(parse_size("GiB").unwrap_err().contains("whole number"));
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("99999999999TiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn stages_and_version_numbers() {
        assert_eq!(parse_stage_arg("Production").unwrap(), Stage::Production);
        assert!(parse_stage_arg("unspecified").is_err());
        assert!(parse_stage_arg("prod").unwrap_err().contains("'prod'"));
        assert_eq!(parse_version_number("3").unwrap(), 3);
        assert!(parse_version_number("0").is_err());
        assert!(parse_version_number("v3").unwrap_err().contains("'v3'"));
    }
}
