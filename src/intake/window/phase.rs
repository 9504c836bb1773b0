//! Deciding and placing a set of intakes: each decided and either placed or failed, the keys
//! seen before answered with their original event, the superseded retries answered, and the
//! outcomes (with a preview's events) gathered.

use sqlx::PgConnection;

use crate::domain::error::{ErrorCode, IntakeError};
use crate::intake::duplicates::{self, Verdict};
use crate::intake::event::Event;
use crate::store;

use super::claim::Slot;
use super::decide::{Decision, decide};
use super::events::failed_event;
use super::outcome::{Decided, Outcome};
use super::place::NewCase;
use super::plan::Outcomed;
use super::state::{Phase, Written};

impl Phase<'_, '_> {
    /// The retries found superseded when their keys were claimed come to
    /// [`Outcome::AlreadyResolved`]: nothing else is done for them.
    pub(super) fn answer_superseded(&self, w: &mut Written) {
        for (i, slot) in self.slots.iter().enumerate() {
            if let (Slot::Superseded, Some(retry)) = (slot, self.prepared[i].env.replay()) {
                let event_id = retry.supersedes.unwrap_or_default();
                w.outcomes[i] = Some(Outcome::AlreadyResolved { event_id });
            }
        }
    }

    /// Every intake's outcome, in order, with (when `with_events`, for a preview) the body of
    /// the event it publishes.
    pub(super) fn decided(&self, w: &Written, with_events: bool) -> Vec<Decided> {
        w.outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let outcome = o.clone().expect("every envelope is decided");
                let event = with_events.then(|| {
                    let id = outcome.event_id();
                    let ev = w.plan.event(id).or_else(|| self.stored_event(i, id));
                    ev.map(|e| e.body)
                });
                Decided {
                    outcome,
                    event: event.flatten(),
                }
            })
            .collect()
    }

    /// Decides and places the intakes at `indices`: decide each, allocate the ids the creates
    /// need in one query, place each case and plan its rows and event, or plan the failure.
    pub(super) async fn decide_and_place(
        &self,
        tx: &mut PgConnection,
        indices: &[usize],
        w: &mut Written,
    ) -> Result<(), sqlx::Error> {
        let mut decisions: Vec<(usize, Decision)> = Vec::with_capacity(indices.len());
        for &i in indices {
            let p = &self.prepared[i];
            let caller = self.callers.of(p);
            if let Some(d) = decide(p, &self.slots[i], caller, self.counties, &w.heads) {
                decisions.push((i, d));
            }
        }
        let creates = decisions.iter().filter(|(_, d)| d.is_ok()).count();
        let new_households = decisions
            .iter()
            .filter(|(_, d)| matches!(d, Ok((_, v)) if v.case.household.is_none()))
            .count();
        let (mut case_ids, mut household_ids) =
            store::allocate_ids(tx, creates, new_households).await?;
        case_ids.reverse();
        household_ids.reverse();
        for (i, decision) in decisions {
            let outcome = match decision {
                Ok((caller, v)) => {
                    let p = &self.prepared[i];
                    let stored = self.matches.get(&i).map_or(&[][..], Vec::as_slice);
                    let found = duplicates::candidates(
                        stored,
                        &w.in_window,
                        caller,
                        &p.matching,
                        v.case.household,
                    );
                    let policy = caller.duplicate_policy();
                    // Ids drawn for a create that is rejected or linked are left unused.
                    match duplicates::verdict(policy, p.env.duplicate_override, &found) {
                        Verdict::Reject => {
                            let candidates = found.iter().map(|m| m.candidate.clone()).collect();
                            self.fail(i, &IntakeError::possible_duplicate(candidates), w)
                        }
                        Verdict::Link(best) => self.link(i, caller, best, &found, w),
                        verdict => {
                            let case_id = case_ids.pop().expect("one id allocated per create");
                            let new = NewCase { caller, v, case_id };
                            self.place(i, new, &verdict, &mut household_ids, w)
                        }
                    }
                }
                Err(error) => self.fail(i, &error, w),
            };
            w.outcomes[i] = Some(outcome);
        }
        Ok(())
    }

    /// Plans the failure of intake `i`: its outcome row (when it has a key), its failed
    /// intake and its `case.failed` event.
    pub(super) fn fail(&self, i: usize, error: &IntakeError, w: &mut Written) -> Outcome {
        let p = &self.prepared[i];
        let key = p.env.message_key.as_deref();
        let retry = self.retry_of(i);
        let ev = failed_event(self.ctx, error, p.env, retry, self.now);
        if key.is_some() {
            let network = self.callers.namespace(p);
            let failure = Outcomed::Failure(error.code);
            w.plan
                .record(network, key, &p.hash, failure, self.replaces(i), &ev);
        }
        w.plan.fail(p, self.callers.of(p), error, retry, &ev);
        w.plan.queue_event(i, &ev, p.env);
        Outcome::Failed {
            code: error.code,
            event_id: ev.id,
        }
    }

    /// Keys seen before (in an earlier transaction or earlier in this window) answer
    /// their original event again, or fail `idempotency_key_reused` with another body.
    pub(super) fn answer_duplicates(&self, w: &mut Written) {
        for (i, p) in self.prepared.iter().enumerate() {
            let Some((same_body, original)) = self.original_of(i, w) else {
                continue;
            };
            w.outcomes[i] = Some(if same_body {
                w.plan.queue_event(i, &original, p.env);
                Outcome::Duplicate {
                    event_id: original.id,
                }
            } else {
                let error = IntakeError::new(
                    ErrorCode::IdempotencyKeyReused,
                    "this message key was already used with a different body; nothing was changed",
                );
                let retry = p.env.replay();
                let ev = failed_event(self.ctx, &error, p.env, retry, self.now);
                w.plan.fail(p, self.callers.of(p), &error, retry, &ev);
                w.plan.queue_event(i, &ev, p.env);
                Outcome::Failed {
                    code: error.code,
                    event_id: ev.id,
                }
            });
        }
    }

    /// For an intake whose key was decided before it: whether its body is the same, and the
    /// original event.
    pub(super) fn original_of(&self, i: usize, w: &Written) -> Option<(bool, Event)> {
        let p = &self.prepared[i];
        match &self.slots[i] {
            Slot::Existing(s) => Some((s.payload_hash.as_slice() == p.hash, s.event.clone())),
            Slot::Follower { first } => match &self.slots[*first] {
                Slot::Existing(s) => Some((s.payload_hash.as_slice() == p.hash, s.event.clone())),
                _ => {
                    let same = self.prepared[*first].hash == p.hash;
                    let id = w.outcomes[*first].as_ref().map(Outcome::event_id);
                    id.and_then(|id| w.plan.event(id)).map(|ev| (same, ev))
                }
            },
            _ => None,
        }
    }
}
