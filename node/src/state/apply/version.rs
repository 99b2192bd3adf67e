//! `SetVersionStatus` and `SetVersionTags`: what may change of a registered version, beside its
//! content (which never does).

use std::collections::BTreeMap;

use super::{apply_tag_changes, Applied, Write};
use crate::command::Response;
use crate::domain::VersionStatus;
use crate::state::tables::{encode, version_key};
use crate::state::AppResult;
use crate::watch::Change;

pub(super) fn set_version_status(
    w: &mut Write<'_, '_>,
    model: &str,
    number: u64,
    status: VersionStatus,
) -> AppResult<Applied> {
    let mut v = w.app.get_version(w.wtxn, model, number)?;
    v.status = status;
    w.app
        .tables
        .versions
        .put(w.wtxn, &version_key(model, number), &encode(&v)?)?;
    w.changed(Change::VersionStatus {
        model: model.into(),
        number,
        status,
    });
    Ok((Response::Version(Box::new(v)), format!("{model}/{number}")))
}

pub(super) fn set_version_tags(
    w: &mut Write<'_, '_>,
    model: &str,
    number: u64,
    set_tags: &BTreeMap<String, String>,
    remove_tags: &[String],
) -> AppResult<Applied> {
    let mut v = w.app.get_version(w.wtxn, model, number)?;
    apply_tag_changes(&mut v.tags, set_tags, remove_tags)?;
    w.app
        .tables
        .versions
        .put(w.wtxn, &version_key(model, number), &encode(&v)?)?;
    // What a reviewer approved is the version as it was.
    let m = w.app.get_model(w.wtxn, model)?;
    super::review::void_approvals(w, &m, Some(number), "the version's tags changed")?;
    w.changed(Change::VersionTags {
        model: model.into(),
        number,
    });
    Ok((Response::Version(Box::new(v)), format!("{model}/{number}")))
}
