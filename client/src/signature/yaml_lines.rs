//! Just enough of YAML to read the `signature:` block of an MLflow `MLmodel`
//! file (decision 0020): a top-level `signature:` key whose children are
//! `key: scalar` lines, the scalars quoted (as PyYAML's `safe_dump` writes a
//! JSON string) or null, possibly folded over indented continuation lines.
//! Anything else in the block is refused with a message naming it.

use super::SignatureError;

/// Most children the signature block may have (MLflow writes three).
const SIGNATURE_KEYS_MAX: usize = 16;

/// One child of the `signature:` block: its key and value (`None` for null).
pub(super) type Entry = (String, Option<String>);

/// The `signature:` block's children in file order. `Ok(None)`: the file
/// has no signature (absent or null).
pub(super) fn signature_block(text: &str) -> Result<Option<Vec<Entry>>, SignatureError> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|line| is_key(line, 0, "signature")) else {
        return Ok(None);
    };
    let header = lines[start]["signature:".len()..].trim();
    match header {
        "" => {}
        "null" | "~" | "{}" => return Ok(None),
        other => {
            return Err(structure(format!(
                "signature: is followed by {:?} on its line; expected its keys on the lines below",
                shown(other)
            )))
        }
    }
    let mut entries = Vec::new();
    let mut index = start + 1;
    let mut child_indent = None;
    while index < lines.len() {
        let line = lines[index];
        if is_blank(line) {
            index += 1;
            continue;
        }
        let indent = indent_of(line);
        if indent == 0 {
            break;
        }
        let expected = *child_indent.get_or_insert(indent);
        if indent != expected {
            return Err(structure(format!(
                "line {} is indented {indent} spaces inside signature:, where its keys are \
                 indented {expected}",
                index + 1
            )));
        }
        let content = &line[indent..];
        let Some((key, rest)) = content.split_once(':') else {
            return Err(structure(format!(
                "line {} inside signature: is not `key: value`",
                index + 1
            )));
        };
        if entries.len() == SIGNATURE_KEYS_MAX {
            return Err(structure(format!(
                "signature: has more than {SIGNATURE_KEYS_MAX} keys"
            )));
        }
        let (value, next) = scalar(&lines, index, rest.trim_start(), indent, key)?;
        entries.push((key.trim().to_string(), value));
        index = next;
    }
    Ok(Some(entries))
}

/// Reads the scalar that starts as `rest` on line `index`, with its
/// continuation lines (indented deeper than `indent`). Returns the value and
/// the index of the first line after it.
fn scalar(
    lines: &[&str],
    index: usize,
    rest: &str,
    indent: usize,
    key: &str,
) -> Result<(Option<String>, usize), SignatureError> {
    let quote = match rest.chars().next() {
        Some(quote @ ('\'' | '"')) => quote,
        _ => {
            let plain = strip_comment(rest).trim();
            let continued = lines
                .get(index + 1)
                .is_some_and(|line| !is_blank(line) && indent_of(line) > indent);
            return match plain {
                "" | "null" | "~" if !continued => Ok((None, index + 1)),
                _ => Err(structure(format!(
                    "signature.{key} is not a quoted JSON string or null (it starts {:?})",
                    shown(plain)
                ))),
            };
        }
    };
    let mut value = String::new();
    let mut line_index = index;
    let mut chars: Vec<char> = rest[1..].chars().collect();
    loop {
        let mut position = 0;
        while position < chars.len() {
            let c = chars[position];
            if c == quote {
                if quote == '\'' && chars.get(position + 1) == Some(&'\'') {
                    value.push('\'');
                    position += 2;
                    continue;
                }
                let after: String = chars[position + 1..].iter().collect();
                if !strip_comment(&after).trim().is_empty() {
                    return Err(structure(format!(
                        "signature.{key} has text after its closing quote on line {}",
                        line_index + 1
                    )));
                }
                return Ok((Some(value), line_index + 1));
            }
            if quote == '"' && c == '\\' {
                match escape(&chars[position + 1..]) {
                    Some((decoded, used)) => {
                        value.push_str(&decoded);
                        position += 1 + used;
                        continue;
                    }
                    None if position + 1 == chars.len() => {
                        // An escaped line break: the lines join without a space.
                        line_index += 1;
                        let Some(next) = lines.get(line_index) else {
                            break;
                        };
                        chars = next.trim_start().chars().collect();
                        position = 0;
                        continue;
                    }
                    None => {
                        return Err(structure(format!(
                            "signature.{key} has an escape this reader does not know on line {}",
                            line_index + 1
                        )))
                    }
                }
            }
            value.push(c);
            position += 1;
        }
        // The line ended inside the quotes: fold. Trailing spaces go; each
        // blank line is a newline; otherwise the break is one space.
        let kept = value.trim_end_matches([' ', '\t']).len();
        value.truncate(kept);
        line_index += 1;
        let mut newlines = 0;
        while lines
            .get(line_index)
            .is_some_and(|line| line.trim().is_empty())
        {
            newlines += 1;
            line_index += 1;
        }
        let Some(next) = lines.get(line_index) else {
            return Err(structure(format!(
                "signature.{key}'s quoted value is not closed before the end of the file"
            )));
        };
        if indent_of(next) <= indent {
            return Err(structure(format!(
                "signature.{key}'s quoted value is not closed before line {}",
                line_index + 1
            )));
        }
        if newlines == 0 {
            value.push(' ');
        } else {
            value.extend(std::iter::repeat_n('\n', newlines));
        }
        chars = next.trim_start().chars().collect();
    }
}

/// A double-quoted scalar's escape after the backslash: the text and how
/// many characters it used.
fn escape(after: &[char]) -> Option<(String, usize)> {
    let simple = |c: char| Some((c.to_string(), 1));
    match after.first()? {
        '"' => simple('"'),
        '\\' => simple('\\'),
        '/' => simple('/'),
        'n' => simple('\n'),
        't' => simple('\t'),
        'r' => simple('\r'),
        '0' => simple('\0'),
        ' ' => simple(' '),
        kind @ ('x' | 'u' | 'U') => {
            let digits = match kind {
                'x' => 2,
                'u' => 4,
                _ => 8,
            };
            let hex: String = after.get(1..=digits)?.iter().collect();
            let code = u32::from_str_radix(&hex, 16).ok()?;
            Some((char::from_u32(code)?.to_string(), 1 + digits))
        }
        _ => None,
    }
}

fn is_key(line: &str, indent: usize, key: &str) -> bool {
    indent_of(line) == indent
        && line[indent..]
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with(':'))
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_blank(line: &str) -> bool {
    let trimmed = line.trim();
    trimmed.is_empty() || trimmed.starts_with('#')
}

fn strip_comment(text: &str) -> &str {
    match text.find(" #") {
        Some(at) => &text[..at],
        None if text.starts_with('#') => "",
        None => text,
    }
}

fn shown(text: &str) -> String {
    text.chars().take(40).collect()
}

fn structure(reason: String) -> SignatureError {
    SignatureError::Field {
        field: "signature".into(),
        reason,
    }
}
