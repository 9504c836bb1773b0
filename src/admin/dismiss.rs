//! Dismissing failed intakes: an operator closes failures that will not be retried (resolution
//! `dismissed`, with who and why), batch by batch, each batch's rows marked and their
//! `case.intake_resolved` events queued in the outbox in one transaction. The row keeps its
//! record, and the key's recorded outcome is left as it is: the same body still gets the
//! recorded failure, a corrected body is still the key's next attempt (fix and resend).

use std::collections::HashSet;
use std::time::Instant;

use chrono::Utc;
use serde::Serialize;
use sqlx::PgPool;

use crate::admin::failed::{self, Selected};
use crate::admin::pacing::BulkOptions;
use crate::infra::redact;
use crate::intake::event::{self, Resolution};
use crate::intake::window::WindowContext;
use crate::store::failed::{FailedIntake, Filter};
use crate::store::{self, OutboxBody, OutboxRow, ResolvedRow};

/// The longest dismissal reason, in characters.
pub const MAX_REASON: usize = 500;
/// The longest operator name, in characters (as `failed_intake_edits.operator`).
pub const MAX_OPERATOR: usize = 200;

/// Who dismisses and why: both checked ([`Dismissal::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dismissal {
    operator: String,
    reason: String,
}

impl Dismissal {
    /// A dismissal by `operator` for `reason`: the reason 1–500 characters, the operator
    /// 1–200 ([`check_operator`]); neither may hold control characters (both are shown to
    /// operators later).
    pub fn new(operator: &str, reason: &str) -> Result<Self, String> {
        let reason = reason.trim();
        let n = reason.chars().count();
        if n == 0 || n > MAX_REASON {
            return Err(format!(
                "a dismissal needs a --reason of 1 to {MAX_REASON} characters ({n} given)"
            ));
        }
        if reason.chars().any(char::is_control) {
            return Err("the --reason must not hold control characters".into());
        }
        Ok(Self {
            operator: check_operator(operator)?,
            reason: reason.to_owned(),
        })
    }

    /// Who dismisses, as recorded (`resolved_by`).
    pub fn operator(&self) -> &str {
        &self.operator
    }

    /// Why, as recorded (`resolution_reason`).
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// An operator name as recorded (`resolved_by`): trimmed, 1–200 characters, no control
/// characters.
pub fn check_operator(name: &str) -> Result<String, String> {
    let name = name.trim();
    let n = name.chars().count();
    if n == 0 || n > MAX_OPERATOR {
        return Err(format!(
            "an operator name has 1 to {MAX_OPERATOR} characters ({n} given)"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "the operator name {:?} holds control characters",
            redact::display_text(name)
        ));
    }
    Ok(name.to_owned())
}

/// The operator a command acts for: `flag` (`--operator`), else the first of
/// `CASE_INTAKE_OPERATOR`, `USER`, `LOGNAME` that `env` has and is not blank.
pub fn operator_from(flag: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Option<String> {
    if let Some(name) = flag {
        return Some(name.to_owned());
    }
    ["CASE_INTAKE_OPERATOR", "USER", "LOGNAME"]
        .into_iter()
        .filter_map(env)
        .find(|v| !v.trim().is_empty())
}

/// Totals of a dismissal (of a dry run: what it would come to now).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct DismissReport {
    pub selected: usize,
    pub dismissed: usize,
    /// Resolved by someone else between selection and update (or purged): left as they were.
    pub already_resolved: usize,
    /// Nothing was written: each batch was rolled back.
    pub dry_run: bool,
}

/// Dismisses the open failed intakes matching `f`, in batches paced to `options.rate`,
/// calling `progress` once per batch. With `options.dry_run` each batch's transaction runs
/// and is rolled back.
pub async fn dismiss(
    pool: &PgPool,
    ctx: &WindowContext,
    f: &Filter,
    who: &Dismissal,
    options: BulkOptions,
    progress: impl FnMut(&DismissReport),
) -> Result<DismissReport, sqlx::Error> {
    let selected = failed::select_open(pool, f).await?;
    dismiss_selected(pool, ctx, &selected, who, options, progress).await
}

/// Dismisses the failed intakes of `selected` (see [`dismiss`]): every row is accounted for,
/// those resolved since the selection (by a resend, a replay, an edit) as `already_resolved`.
pub async fn dismiss_selected(
    pool: &PgPool,
    ctx: &WindowContext,
    selected: &Selected,
    who: &Dismissal,
    options: BulkOptions,
    mut progress: impl FnMut(&DismissReport),
) -> Result<DismissReport, sqlx::Error> {
    let pacing = options.pacing();
    let mut report = DismissReport {
        dry_run: options.dry_run,
        ..DismissReport::default()
    };
    for ids in selected.ids().chunks(pacing.batch().max(1)) {
        let started = Instant::now();
        // Resolved rows too: the update below skips them (it takes only rows still open, after
        // waiting for a resend that holds one), and they count as already resolved.
        let rows: Vec<FailedIntake> = store::failed::failed_by_ids(pool, ids)
            .await?
            .into_iter()
            .map(|s| s.intake)
            .collect();
        let dismissed = dismiss_batch(pool, ctx, &rows, who, options.dry_run).await?;
        report.selected += ids.len();
        report.dismissed += dismissed;
        report.already_resolved += ids.len() - dismissed;
        progress(&report);
        tokio::time::sleep(pacing.pause(ids.len(), started.elapsed())).await;
    }
    Ok(report)
}

/// One batch in one transaction: the rows still open marked dismissed and one
/// `case.intake_resolved` event queued for each. Returns how many were dismissed.
async fn dismiss_batch(
    pool: &PgPool,
    ctx: &WindowContext,
    rows: &[FailedIntake],
    who: &Dismissal,
    dry_run: bool,
) -> Result<usize, sqlx::Error> {
    let now = Utc::now();
    let resolved: Vec<ResolvedRow> = rows
        .iter()
        .map(|r| ResolvedRow {
            failed_intake_id: r.id,
            how: Resolution::Dismissed,
            event_id: None,
            operator: Some(who.operator.clone()),
            reason: Some(who.reason.clone()),
        })
        .collect();
    let mut tx = pool.begin().await?;
    let open: HashSet<i64> = store::resolve_failed(&mut tx, &resolved, now)
        .await?
        .into_iter()
        .collect();
    let events: Vec<OutboxRow> = rows
        .iter()
        .filter(|r| open.contains(&r.id))
        .map(|r| resolved_event(ctx, r, now))
        .collect();
    let outbox_ids = store::insert_outbox(&mut tx, &events, now).await?;
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
        if let Some(handoff) = &ctx.handoff {
            handoff.push(&outbox_ids);
        }
    }
    Ok(open.len())
}

/// The outbox row of a dismissed failure's `case.intake_resolved` event: no outcome event,
/// no case. The reason is not published.
fn resolved_event(ctx: &WindowContext, r: &FailedIntake, now: chrono::DateTime<Utc>) -> OutboxRow {
    let key = r.message_key.as_deref();
    let resolved = event::Resolved {
        message_key: key,
        how: Resolution::Dismissed,
        failed_event_id: r.event_id,
        attempt: r.attempts,
        outcome_event_id: None,
        case_id: None,
        household_id: None,
    };
    // An operator's action, not part of the failed intake's trace.
    let head = event::Head {
        source: &ctx.source,
        routing_key: &ctx.resolved_routing_key,
        subject: key,
        time: now,
        trace: None,
    };
    let ev = event::resolved(head, &resolved);
    OutboxRow {
        event_id: ev.id,
        routing_key: ev.routing_key,
        body: OutboxBody::Inline(ev.body.to_string()),
        correlation_id: r.correlation_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dismissal_needs_a_reason_and_an_operator() {
        assert!(Dismissal::new("ana", "duplicate of a paper form").is_ok());
        assert!(Dismissal::new("ana", "  ").is_err());
        assert!(Dismissal::new("ana", &"x".repeat(MAX_REASON)).is_ok());
        assert!(Dismissal::new("ana", &"é".repeat(MAX_REASON + 1)).is_err());
        assert!(Dismissal::new("ana", "bad\u{1b}[2J").is_err());
        assert!(Dismissal::new("", "why").is_err());
        assert!(Dismissal::new(&"o".repeat(MAX_OPERATOR + 1), "why").is_err());
        let e = check_operator("x\u{7}123-45-6789").unwrap_err();
        assert!(!e.contains('\u{7}') && !e.contains("123-45"), "{e}");
    }

    #[test]
    fn the_operator_comes_from_the_flag_then_the_environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let all = &[
            ("CASE_INTAKE_OPERATOR", "ops-ana"),
            ("USER", "ana"),
            ("LOGNAME", "al"),
        ];
        assert_eq!(operator_from(Some("bo"), env(all)).as_deref(), Some("bo"));
        assert_eq!(operator_from(None, env(all)).as_deref(), Some("ops-ana"));
        let blank = &[("CASE_INTAKE_OPERATOR", " "), ("LOGNAME", "al")];
        assert_eq!(operator_from(None, env(blank)).as_deref(), Some("al"));
        assert_eq!(operator_from(None, env(&[])), None);
    }
}
