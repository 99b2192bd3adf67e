//! Collecting violations, and quoting request text in them, bounded.

use serde_json::Value;

use super::{Violation, ViolationKind, VIOLATIONS_MAX};

/// Longest piece of a request (a name, a string value) quoted in a message.
const SHOWN_CHARS_MAX: usize = 64;

/// A value's kind in words: "a list", "a string", "null".
pub(super) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A scalar as it would be quoted in a message, bounded.
pub(super) fn shown_value(value: &Value) -> String {
    match value {
        Value::String(text) => shown(text),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        other => kind_of(other).to_string(),
    }
}

/// A name or string from the request, quoted and cut to `SHOWN_CHARS_MAX`.
pub(super) fn shown(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(SHOWN_CHARS_MAX).collect();
    if chars.next().is_some() {
        format!("{head:?}… ({} bytes)", text.len())
    } else {
        format!("{head:?}")
    }
}

/// Collects violations up to a limit, counting the rest.
pub(super) struct Collector {
    list: Vec<Violation>,
    limit: usize,
    /// Every violation pushed, listed or not.
    pub(super) found: usize,
    /// A probe stops walking at the first violation.
    stop_at_first: bool,
}

impl Collector {
    pub(super) fn new(limit: usize, stop_at_first: bool) -> Collector {
        Collector {
            list: Vec::new(),
            limit,
            found: 0,
            stop_at_first,
        }
    }

    pub(super) fn stop(&self) -> bool {
        self.stop_at_first && self.found > 0
    }

    pub(super) fn push(
        &mut self,
        kind: ViolationKind,
        field: &str,
        path: &str,
        message: impl FnOnce() -> String,
    ) {
        self.found += 1;
        if self.list.len() < self.limit {
            self.list.push(Violation {
                kind,
                field: cut(field),
                path: cut(path),
                message: message(),
            });
        }
    }

    pub(super) fn finish(mut self) -> Vec<Violation> {
        let left_out = self.found - self.list.len();
        if left_out > 0 {
            self.list.push(Violation {
                kind: ViolationKind::Truncated,
                field: String::new(),
                path: String::new(),
                message: format!(
                    "{left_out} more violations were found; only the first {VIOLATIONS_MAX} \
                     are listed"
                ),
            });
        }
        self.list
    }
}

/// A name or path from the request, cut to a bounded length for the report.
fn cut(text: &str) -> String {
    const CUT_BYTES_MAX: usize = 4 * SHOWN_CHARS_MAX;
    if text.len() <= CUT_BYTES_MAX {
        return text.to_string();
    }
    let mut end = CUT_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
