//! What changed between two schemas, and whether a caller written for the
//! old one breaks against the new one.
//!
//! Inputs: an added optional input, a required input made optional and a
//! fixed axis widened to -1 are compatible; a removed input (a rename is a
//! removal and an addition), an added required input, an optional input made
//! required, a changed dtype, a changed rank, a fixed axis changed or an
//! any-size axis (-1) fixed are breaking, and so is an input that moved to
//! another position, because positional requests (lists, `instances`,
//! dataframe columns) send values by position. Outputs: any change breaks
//! the callers that read them.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{shape_text, Field, Schema, ANY_SIZE};

/// Which side of the signature a change is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Input,
    Output,
}

impl Side {
    fn noun(self) -> &'static str {
        match self {
            Side::Input => "input",
            Side::Output => "output",
        }
    }
}

/// The kind of one change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Removed,
    DtypeChanged,
    ShapeChanged,
    BecameRequired,
    BecameOptional,
    Moved,
}

/// One change between two schemas, with the words a user reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub side: Side,
    /// The field's name (in the new schema, or the old one if removed).
    pub field: String,
    pub kind: ChangeKind,
    pub breaking: bool,
    pub detail: String,
}

/// Every change from an old schema to a new one, sorted by side, field name
/// and kind. No changes: the schemas are the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Compatibility {
    pub changes: Vec<Change>,
}

impl Compatibility {
    /// True when some caller of the old schema breaks against the new one.
    pub fn is_breaking(&self) -> bool {
        self.changes.iter().any(|change| change.breaking)
    }

    pub fn breaking(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|change| change.breaking)
    }
}

/// Compares `old` with `new`; see the module's documentation for the rules.
/// A name given twice on one side is compared by its first occurrence.
pub fn compatibility(old: &Schema, new: &Schema) -> Compatibility {
    let mut changes = Vec::new();
    compare_side(Side::Input, &old.inputs, &new.inputs, &mut changes);
    compare_side(Side::Output, &old.outputs, &new.outputs, &mut changes);
    changes.sort_by(|a, b| (a.side, &a.field, a.kind).cmp(&(b.side, &b.field, b.kind)));
    Compatibility { changes }
}

fn by_name(fields: &[Field]) -> BTreeMap<&str, (usize, &Field)> {
    let mut map = BTreeMap::new();
    for (position, field) in fields.iter().enumerate() {
        map.entry(field.name.as_str()).or_insert((position, field));
    }
    map
}

fn describe(field: &Field) -> String {
    format!(
        "{} {}{}",
        field.dtype,
        shape_text(&field.shape),
        if field.optional { ", optional" } else { "" }
    )
}

fn compare_side(side: Side, old: &[Field], new: &[Field], changes: &mut Vec<Change>) {
    let noun = side.noun();
    let old_fields = by_name(old);
    let new_fields = by_name(new);
    let mut push = |field: &str, kind, breaking, detail: String| {
        changes.push(Change {
            side,
            field: field.to_string(),
            kind,
            breaking,
            detail,
        })
    };
    for (name, (_, field)) in &old_fields {
        if !new_fields.contains_key(name) {
            let detail = match side {
                Side::Input => format!(
                    "{noun} {name:?} ({}) was removed: requests that send it are refused \
                     (a rename counts as a removal and an addition)",
                    describe(field)
                ),
                Side::Output => format!(
                    "{noun} {name:?} ({}) was removed: callers that read it break",
                    describe(field)
                ),
            };
            push(name, ChangeKind::Removed, true, detail);
        }
    }
    for (name, (_, field)) in &new_fields {
        if old_fields.contains_key(name) {
            continue;
        }
        let (breaking, consequence) = match side {
            Side::Input if field.optional => (false, "requests without it still work"),
            Side::Input => (true, "requests written for the old signature lack it"),
            Side::Output => (true, "callers that check the outputs see a new one"),
        };
        let detail = format!(
            "{noun} {name:?} ({}) was added: {consequence}",
            describe(field)
        );
        push(name, ChangeKind::Added, breaking, detail);
    }
    for (name, (old_position, old_field)) in &old_fields {
        let Some((new_position, new_field)) = new_fields.get(name) else {
            continue;
        };
        if old_field.dtype != new_field.dtype {
            let detail = format!(
                "{noun} {name:?} changed dtype from {} to {}",
                old_field.dtype, new_field.dtype
            );
            push(name, ChangeKind::DtypeChanged, true, detail);
        }
        if let Some((breaking, detail)) = compare_shapes(side, &old_field.shape, &new_field.shape) {
            let detail = format!("{noun} {name:?} changed shape: {detail}");
            push(name, ChangeKind::ShapeChanged, breaking, detail);
        }
        match (old_field.optional, new_field.optional) {
            (true, false) => push(
                name,
                ChangeKind::BecameRequired,
                true,
                format!("{noun} {name:?} was optional and is now required"),
            ),
            (false, true) => push(
                name,
                ChangeKind::BecameOptional,
                side == Side::Output,
                match side {
                    Side::Input => format!(
                        "{noun} {name:?} was required and is now optional: requests that \
                         send it still work"
                    ),
                    Side::Output => format!(
                        "{noun} {name:?} was always produced and is now optional: callers \
                         that read it may find it missing"
                    ),
                },
            ),
            _ => {}
        }
        if old_position != new_position {
            let detail = format!(
                "{noun} {name:?} moved from position {old_position} to {new_position}: \
                 callers that pass {noun}s by position (lists, instances, dataframe columns) \
                 would send or read the wrong values"
            );
            push(name, ChangeKind::Moved, true, detail);
        }
    }
}

/// `None` when the shapes are equal; else whether the change breaks and a
/// description naming each changed axis.
fn compare_shapes(side: Side, old: &[i64], new: &[i64]) -> Option<(bool, String)> {
    if old == new {
        return None;
    }
    let shapes = format!("{} → {}", shape_text(old), shape_text(new));
    if old.len() != new.len() {
        return Some((
            true,
            format!("{shapes}, rank {} → {} (breaking)", old.len(), new.len()),
        ));
    }
    let mut breaking = false;
    let mut axes = Vec::new();
    for (axis, (&before, &after)) in old.iter().zip(new).enumerate() {
        if before == after {
            continue;
        }
        let (axis_breaks, words) = if after == ANY_SIZE {
            // Widening accepts every request the old shape did; an output
            // that may now have any size surprises its readers.
            (side == Side::Output, format!("{before} → any size"))
        } else if before == ANY_SIZE {
            (true, format!("any size → {after}"))
        } else {
            (true, format!("{before} → {after}"))
        };
        breaking |= axis_breaks;
        axes.push(format!(
            "axis {axis} {words} ({})",
            if axis_breaks {
                "breaking"
            } else {
                "compatible"
            }
        ));
    }
    Some((breaking, format!("{shapes}: {}", axes.join(", "))))
}
