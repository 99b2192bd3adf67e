//! Review requests: a stage change whose only failing gates are approvals opens one (or keeps the
//! version's open one); `DecideReview` approves or rejects it. An approval is checked here,
//! against the committed state, whoever proposed it: the review is open, the approver is not the
//! version's registrant and has not approved it before, and holds the role the approvals gate
//! counts in the model's namespace. The approval that completes the gates moves the version in
//! the same command, with the report. Approvals are voided when the version's tags or the
//! model's policy change mid-review.

use super::stage::{transition_to, Transition};
use super::{Applied, Write};
use crate::auth;
use crate::command::Response;
use crate::domain::{stage_label, DomainError, Model, Stage, Version};
use crate::governance::{
    self, Approval, GateReport, Policy, Review, ReviewState, SignatureOverride, VoidedApprovals,
};
use crate::state::tables::{encode, version_key};
use crate::state::{AppResult, Decided};

/// Opens a review of `v` for entering `stage` (or keeps its open one for that stage, with the
/// new report); an open review for another stage is closed, replaced by this one.
pub(super) fn request(
    w: &mut Write<'_, '_>,
    v: Version,
    stage: Stage,
    reason: &str,
    report: GateReport,
    open: Option<Review>,
    signature_override: Option<SignatureOverride>,
) -> AppResult<Applied> {
    let subject_of = |r: &Review| {
        format!(
            "{}/{}: review #{} for {} waits for approvals",
            r.model,
            r.number,
            r.id,
            stage_label(r.stage)
        )
    };
    // Closing a replaced review takes no id: the new one's is known before.
    let id = w.app.next_review_id(w.wtxn)?;
    if let Some(mut r) = open {
        if r.stage == stage {
            r.report = report;
            if signature_override.is_some() {
                r.signature_override = signature_override;
            }
            put(w, &r)?;
            let subject = subject_of(&r);
            return Ok((Response::Review(Box::new((r, v))), subject));
        }
        close(
            w,
            r,
            ReviewState::Closed,
            format!("replaced by review #{id}"),
        )?;
    }
    let review = Review {
        id,
        model: v.model.clone(),
        number: v.number,
        stage,
        requested_by: w.actor.name.clone(),
        requested_at_ms: w.at_ms,
        reason: reason.to_string(),
        state: ReviewState::Open,
        approvals: Vec::new(),
        voided: Vec::new(),
        closed_by: None,
        closed_at_ms: None,
        closing_comment: String::new(),
        report,
        signature_override,
    };
    put(w, &review)?;
    w.app.tables.open_reviews.put(
        w.wtxn,
        &version_key(&review.model, review.number),
        &review.id.to_be_bytes(),
    )?;
    let subject = subject_of(&review);
    Ok((Response::Review(Box::new((review, v))), subject))
}

pub(super) fn decide(
    w: &mut Write<'_, '_>,
    model: &str,
    id: u64,
    approve: bool,
    comment: &str,
) -> AppResult<Applied> {
    let Some(mut review) = w.app.review(w.wtxn, id)? else {
        return Err(DomainError::ReviewNotFound { id }.into());
    };
    if review.model != model {
        return Err(DomainError::invalid(
            "model",
            format!(
                "review #{id} is of model {}, not {}",
                review.model,
                crate::domain::shown(model)
            ),
        )
        .into());
    }
    if review.state != ReviewState::Open {
        return Err(DomainError::ReviewClosed {
            id,
            state: review.state.label().into(),
        }
        .into());
    }
    let m = w.app.get_model(w.wtxn, model)?;
    let v = w.app.get_version(w.wtxn, model, review.number)?;
    if !approve {
        let subject = format!("{model}/{}: review #{id} rejected", review.number);
        let review = close(w, review, ReviewState::Rejected, comment.to_string())?;
        return Ok((Response::Review(Box::new((review, v))), subject));
    }
    let (_, policy) = w.app.applicable_policy(w.wtxn, &m)?;
    // PLANTED BUG `registrant-approval-counts` (test only): the decision forgets who registered
    // the version.
    let mut v = v;
    let registrant = std::mem::take(&mut v.created_by.name);
    if !w.app.registrant_approves() {
        v.created_by.name = registrant.clone();
    }
    let grants = w.app.grants_of(w.wtxn, &w.actor.name)?;
    let held = auth::highest_role(&grants, &m.namespace);
    governance::may_approve(
        &review,
        &v.created_by.name,
        &w.actor.name,
        held,
        stage_gates(&policy, review.stage),
    )?;
    review.approvals.push(Approval {
        principal: w.actor.name.clone(),
        // `may_approve` found a role.
        role: held.unwrap_or(auth::Role::Approver),
        at_ms: w.at_ms,
        comment: comment.to_string(),
    });
    let decided = Decided {
        approvals: review.approvals.clone(),
        signature_override: review.signature_override.clone(),
    };
    let report = w
        .app
        .gate_report_with(w.wtxn, &m, &v, review.stage, &policy, &decided)?;
    review.report = report.clone();
    if !report.passed() {
        v.created_by.name = registrant;
        put(w, &review)?;
        let subject = format!(
            "{model}/{}: review #{id} approved by {}, waits: {report}",
            review.number, w.actor.name
        );
        return Ok((Response::Review(Box::new((review, v))), subject));
    }
    let stage = review.stage;
    let review = close(w, review, ReviewState::Promoted, comment.to_string())?;
    v.created_by.name = registrant;
    let moved = transition_to(
        w,
        m,
        v,
        Transition {
            stage,
            reason: format!("review #{id} approved: {}", review.reason),
            report: Some(report),
        },
    )?;
    let subject = format!(
        "{model}/{}: review #{id} approved by {}, promoted to {}",
        moved.number,
        w.actor.name,
        stage_label(stage)
    );
    Ok((Response::Review(Box::new((review, moved))), subject))
}

/// The gates of `policy` for entering `stage`.
pub(super) fn stage_gates(policy: &Policy, stage: Stage) -> &[governance::Gate] {
    match stage {
        Stage::Staging => &policy.staging,
        Stage::Production => &policy.production,
        Stage::Experimental | Stage::Archived => &[],
    }
}

fn put(w: &mut Write<'_, '_>, review: &Review) -> AppResult<()> {
    w.app
        .tables
        .reviews
        .put(w.wtxn, &review.id.to_be_bytes(), &encode(review)?)?;
    Ok(())
}

/// Closes `review` as `state` by this command's actor, and forgets it as its version's open one.
pub(super) fn close(
    w: &mut Write<'_, '_>,
    mut review: Review,
    state: ReviewState,
    comment: String,
) -> AppResult<Review> {
    review.state = state;
    review.closed_by = Some(w.actor.name.clone());
    review.closed_at_ms = Some(w.at_ms);
    review.closing_comment = comment;
    put(w, &review)?;
    w.app
        .tables
        .open_reviews
        .delete(w.wtxn, &version_key(&review.model, review.number))?;
    Ok(review)
}

/// Closes the open review of `v`, if any, now that it moved to `stage` another way (or by it):
/// promoted if it was for that stage.
pub(super) fn settle(w: &mut Write<'_, '_>, v: &Version, stage: Stage) -> AppResult<()> {
    if let Some(r) = w.app.open_review(w.wtxn, &v.model, v.number)? {
        let (state, comment) = match r.stage == stage {
            true => (
                ReviewState::Promoted,
                "promoted by a stage change".to_string(),
            ),
            false => (
                ReviewState::Closed,
                format!("the version moved to {}", stage_label(stage)),
            ),
        };
        close(w, r, state, comment)?;
    }
    Ok(())
}

/// Voids the approvals of the open reviews of `model` (of version `number` only, if given):
/// what they approved changed.
pub(super) fn void_approvals(
    w: &mut Write<'_, '_>,
    model: &Model,
    number: Option<u64>,
    why: &str,
) -> AppResult<()> {
    for r in w.app.open_reviews_of(w.wtxn, Some(&model.name))? {
        if number.is_none_or(|n| n == r.number) {
            void(w, r, why)?;
        }
    }
    Ok(())
}

/// The open reviews whose model's policy `scope` may set, each with the policy that applies to
/// its model now: after the policy changes, [`void_changed`] voids those whose policy did.
pub(super) fn under_scope(
    w: &mut Write<'_, '_>,
    scope: &governance::PolicyScope,
) -> AppResult<Vec<(Review, Policy)>> {
    let reviews = match scope {
        governance::PolicyScope::Model(model) => w.app.open_reviews_of(w.wtxn, Some(model))?,
        governance::PolicyScope::Namespace { .. } => w.app.open_reviews_of(w.wtxn, None)?,
    };
    let mut out = Vec::new();
    for r in reviews {
        let m = w.app.get_model(w.wtxn, &r.model)?;
        let covered = match scope {
            governance::PolicyScope::Model(_) => true,
            governance::PolicyScope::Namespace { namespace, .. } => *namespace == m.namespace,
        };
        if covered {
            let (_, policy) = w.app.applicable_policy(w.wtxn, &m)?;
            out.push((r, policy));
        }
    }
    Ok(out)
}

/// Voids the approvals of each of `before`'s reviews whose model's policy is no longer the one
/// it had.
pub(super) fn void_changed(w: &mut Write<'_, '_>, before: Vec<(Review, Policy)>) -> AppResult<()> {
    for (r, old) in before {
        let m = w.app.get_model(w.wtxn, &r.model)?;
        let (_, now) = w.app.applicable_policy(w.wtxn, &m)?;
        if now != old {
            void(w, r, "the model's policy changed")?;
        }
    }
    Ok(())
}

fn void(w: &mut Write<'_, '_>, mut r: Review, why: &str) -> AppResult<()> {
    if r.approvals.is_empty() {
        return Ok(());
    }
    let approvals = std::mem::take(&mut r.approvals);
    r.voided.push(VoidedApprovals {
        approvals,
        reason: why.to_string(),
        at_ms: w.at_ms,
    });
    put(w, &r)
}
