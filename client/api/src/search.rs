//! The syntax of a catalog search's metric range, `METRIC OP VALUE` (`auc>=0.8`), shared by the
//! CLI that reads it and the node that checks it.

use crate::proto::MetricRange;

/// The comparisons a range may use.
pub const COMPARISONS: [&str; 6] = [">=", ">", "<=", "<", "=", "=="];

/// Splits `auc>=0.8` (spaces around the parts allowed) into metric, comparison and value. The
/// metric's name and the value's finiteness are the node's to judge.
pub fn parse_metric_range(text: &str) -> Result<MetricRange, String> {
    let Some(at) = text.find(['<', '>', '=']) else {
        return Err(format!(
            "{text:?} has no comparison: write METRIC>=VALUE (or >, <=, <, =), e.g. auc>=0.8"
        ));
    };
    let rest = &text[at..];
    let op_len = rest
        .bytes()
        .take_while(|b| matches!(b, b'<' | b'>' | b'='))
        .count();
    let (comparison, value) = rest.split_at(op_len);
    if !COMPARISONS.contains(&comparison) {
        return Err(format!(
            "{comparison:?} in {text:?} is not one of >=, >, <=, <, ="
        ));
    }
    let value: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} does not end in a number"))?;
    Ok(MetricRange {
        metric: text[..at].trim().to_string(),
        comparison: comparison.to_string(),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_into_their_parts_or_are_refused() {
        let r = parse_metric_range(" ndcg@10 >= 0.42 ").unwrap();
        assert_eq!(
            (r.metric.as_str(), r.comparison.as_str(), r.value),
            ("ndcg@10", ">=", 0.42)
        );
        assert_eq!(parse_metric_range("loss<1e-3").unwrap().value, 1e-3);
        for bad in ["", "auc", "auc>=", "auc=>1", "auc>>1", "auc>=x", "auc>=1 2"] {
            assert!(parse_metric_range(bad).is_err(), "{bad}");
        }
    }
}
