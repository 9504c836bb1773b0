//! The failed intakes this window's attempts retried, resolved, with the operator's
//! edit audit and the `case.intake_resolved` announcement of those that came to a case.

use crate::intake::event::{self, ReplayInfo, Resolution};
use crate::store;

use super::events::resolved_event;
use super::outcome::Outcome;
use super::state::{Phase, Written};

impl Phase<'_, '_> {
    /// The failed intakes that this window's attempts retried are resolved, and those
    /// whose attempt came to a case announce it (`case.intake_resolved`). An attempt that
    /// failed again supersedes the failure without an announcement: its own `case.failed`
    /// event (attempt N+1) tells.
    pub(super) fn resolve(&self, w: &mut Written) {
        for i in 0..self.prepared.len() {
            let (Some(retry), Some(outcome)) = (self.retry_of(i), w.outcomes[i].clone()) else {
                continue;
            };
            if let Outcome::AlreadyResolved { .. } = outcome {
                continue;
            }
            let p = &self.prepared[i];
            if let Some(id) = retry.failed_intake_id {
                w.plan.resolved.push(store::ResolvedRow {
                    failed_intake_id: id,
                    how: retry.how,
                    event_id: Some(outcome.event_id()),
                    operator: p.env.retry().and_then(|r| r.operator.clone()),
                    reason: None,
                });
                self.audit(i, retry, id, &outcome, w);
            }
            let case = match outcome {
                Outcome::Created { .. } | Outcome::Matched { .. } => outcome.case(),
                // A replayed key that has since got its case: resolved by that case.
                Outcome::Duplicate { event_id } => w
                    .plan
                    .event(event_id)
                    .or_else(|| self.stored_event(i, event_id))
                    .and_then(|ev| event::case_of(&ev)),
                Outcome::Failed { .. } | Outcome::AlreadyResolved { .. } => None,
            };
            let (Some((case_id, household_id)), Some(supersedes)) = (case, retry.supersedes) else {
                continue;
            };
            let resolved = event::Resolved {
                message_key: p.env.message_key.as_deref(),
                how: retry.how,
                failed_event_id: supersedes,
                attempt: retry.attempt,
                outcome_event_id: Some(outcome.event_id()),
                case_id: Some(case_id),
                household_id: Some(household_id),
            };
            let ev = resolved_event(self.ctx, &resolved, p.env, self.now);
            w.plan.queue_event(i, &ev, p.env);
            if let Some(id) = retry.failed_intake_id {
                w.plan.announces.push((id, ev.id));
            }
        }
    }

    /// Plans the audit row of an operator's edit (intake `i`, retrying failed intake
    /// `failed_intake_id`) now that its outcome is known.
    pub(super) fn audit(
        &self,
        i: usize,
        retry: ReplayInfo,
        failed_intake_id: i64,
        outcome: &Outcome,
        w: &mut Written,
    ) {
        let (Resolution::Edited, Some(audit), Some(key)) = (
            retry.how,
            self.prepared[i].env.retry().and_then(|r| r.edit.as_ref()),
            self.prepared[i].env.message_key.as_deref(),
        ) else {
            return;
        };
        w.plan.edits.push(store::edits::EditRow {
            failed_intake_id,
            message_key: key.to_owned(),
            audit: audit.clone(),
            outcome: match outcome {
                Outcome::Created { .. } => "created",
                Outcome::Failed { .. } => "failed",
                Outcome::Duplicate { .. } => "duplicate",
                Outcome::Matched { .. } => "matched",
                Outcome::AlreadyResolved { .. } => return,
            },
            event_id: outcome.event_id(),
        });
    }
}
