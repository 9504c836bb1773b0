//! A decided intake placed — its case in its household (a new one, joined, or its new
//! head), its flagged pairs and its `case.created` event; or, under the `link` policy, the
//! existing case it is (`case.matched`).

use crate::intake::duplicates::{Match, Verdict};
use crate::intake::event::{self, CaseData, CreatedData, Event, MatchedData};
use crate::intake::household::{Placement, place};
use crate::intake::matching::Candidate;
use crate::intake::validate::Validated;
use crate::store::auth::Caller;
use crate::store::{self, CaseRow, NewHousehold};

use super::events::head;
use super::outcome::Outcome;
use super::plan::Outcomed;
use super::state::{Phase, Written};

/// A case a fresh intake is to create: its caller, its valid body and its allocated id.
pub(super) struct NewCase<'v> {
    pub(super) caller: Caller,
    pub(super) v: &'v Validated,
    pub(super) case_id: i64,
}

impl Phase<'_, '_> {
    /// Links intake `i` to the existing case `best` (policy `link`): no case is created; the
    /// key's outcome is that case, announced by a `case.matched` event.
    pub(super) fn link(
        &self,
        i: usize,
        caller: Caller,
        best: &Match,
        found: &[Match],
        w: &mut Written,
    ) -> Outcome {
        let p = &self.prepared[i];
        let key = p.env.message_key.as_deref();
        let others: Vec<Candidate> = found
            .iter()
            .filter(|m| m.candidate.case_id != best.candidate.case_id)
            .map(|m| m.candidate.clone())
            .collect();
        let (case_id, household_id) = (best.candidate.case_id, best.household_id);
        let data = MatchedData {
            message_key: key,
            case_id,
            household_id,
            rules: &best.candidate.rules,
            score: best.candidate.score,
            possible_duplicates: &others,
            replay: self.retry_of(i).map(Into::into),
        };
        let head = head(self.ctx, &self.ctx.matched_routing_key, p.env, self.now);
        let ev = event::matched(head, &data);
        w.plan.record(
            caller.network_id(),
            key,
            &p.hash,
            Outcomed::Matched(case_id),
            self.replaces(i),
            &ev,
        );
        w.plan.queue_event(i, &ev, p.env);
        Outcome::Matched {
            case_id,
            household_id,
            event_id: ev.id,
        }
    }

    /// Places the case of intake `i` in its household and plans its rows, its flagged pairs
    /// and its event.
    pub(super) fn place(
        &self,
        i: usize,
        new: NewCase<'_>,
        verdict: &Verdict<'_>,
        household_ids: &mut Vec<i64>,
        w: &mut Written,
    ) -> Outcome {
        let NewCase { caller, v, case_id } = new;
        let p = &self.prepared[i];
        let current = v
            .case
            .household
            .and_then(|h| w.heads.get(&h))
            .and_then(|s| s.head);
        let placement = place(v.case.household, v.case.head_of_household, current);
        let household_id = match placement {
            Placement::NewHousehold => {
                let id = household_ids
                    .pop()
                    .expect("one id allocated per new household");
                w.plan.households.push(NewHousehold {
                    id,
                    network_id: caller.network_id(),
                    head_case_id: case_id,
                });
                id
            }
            Placement::Join { household }
            | Placement::JoinAsOnlyCase { household }
            | Placement::ReplaceHead { household, .. } => household,
        };
        if placement.is_head() {
            let state = w
                .heads
                .entry(household_id)
                .or_insert(store::HouseholdState {
                    network_id: caller.network_id(),
                    head: None,
                });
            w.plan.set_head(household_id, case_id, state.head);
            state.head = Some(case_id);
        }
        let mut row = CaseRow::new(
            case_id,
            household_id,
            placement.is_head(),
            &caller,
            &v.case,
            self.now,
        );
        row.match_keys = p.matching.keys;
        let key = p.env.message_key.as_deref();
        let ev = self.created_event(&row, v, &placement, key, i, verdict);
        w.plan.flag(caller, case_id, key, verdict, ev.id);
        w.in_window
            .add(caller, &p.matching, case_id, household_id, v.case.private);
        w.plan.cases.push(row);
        w.plan.record(
            caller.network_id(),
            key,
            &p.hash,
            Outcomed::Case(case_id),
            self.replaces(i),
            &ev,
        );
        w.plan.queue_event(i, &ev, p.env);
        Outcome::Created {
            case_id,
            household_id,
            event_id: ev.id,
        }
    }

    /// The `case.created` event of a planned case.
    pub(super) fn created_event(
        &self,
        row: &CaseRow,
        v: &Validated,
        placement: &Placement,
        key: Option<&str>,
        i: usize,
        verdict: &Verdict<'_>,
    ) -> Event {
        let env = self.prepared[i].env;
        // The row was made with the placement's head flag: the case's `head_of_household`.
        let data = CreatedData {
            case: CaseData::of(row, &v.case),
            household_id: row.household_id,
            household_created: matches!(placement, Placement::NewHousehold),
            previous_head_case_id: placement.previous_head(),
            message_key: key,
            warnings: &v.warnings,
            // Only a network that matches says anything about duplicates (`[]`: none found).
            possible_duplicates: match verdict {
                Verdict::Create { flagged, .. } => {
                    Some(flagged.iter().map(|m| &m.candidate).collect())
                }
                _ => None,
            },
            replay: self.retry_of(i).map(Into::into),
        };
        event::created(
            head(self.ctx, &self.ctx.created_routing_key, env, self.now),
            &data,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use chrono::Utc;

    use super::*;
    use crate::intake::duplicates::Stored;
    use crate::intake::window::authenticate::Callers;
    use crate::intake::window::claim::Slot;
    use crate::intake::window::testing::{NETWORK, context, envelope, prepared, seed};
    use crate::store::HouseholdState;

    const CASE: i64 = 100;
    const NEW_HOUSEHOLD: i64 = 500;
    const HOUSEHOLD: i64 = 9;

    /// Places the seed intake (naming `household` when given, asking to head it when `head`)
    /// where the locked households are `heads`; the outcome, what was planned, and the data of
    /// its `case.created` event.
    fn placed(
        household: Option<i64>,
        head: bool,
        heads: HashMap<i64, HouseholdState>,
    ) -> (Outcome, Written, serde_json::Value) {
        let ctx = context();
        let mut body = seed();
        if let Some(h) = household {
            body["household"] = h.into();
        }
        body["head_of_household"] = head.into();
        let env = envelope(Some("k"), body);
        let p = [prepared(&env, &ctx)];
        let v = p[0].body.as_ref().expect("a valid body");
        let phase = Phase {
            ctx: &ctx,
            prepared: &p,
            slots: &[Slot::Fresh],
            callers: &Callers(HashMap::new()),
            counties: &HashSet::new(),
            matches: &Stored::new(),
            now: Utc::now(),
        };
        let mut w = Written::new(1);
        w.heads = heads;
        let caller = Caller::for_tests(NETWORK);
        let new = NewCase {
            caller,
            v,
            case_id: CASE,
        };
        let mut household_ids = vec![NEW_HOUSEHOLD];
        let outcome = phase.place(0, new, &Verdict::Unchecked, &mut household_ids, &mut w);
        let data = w.plan.event(outcome.event_id()).expect("its event").body["data"].clone();
        (outcome, w, data)
    }

    fn headed_by(head: Option<i64>) -> HashMap<i64, HouseholdState> {
        let network_id = Caller::for_tests(NETWORK).network_id();
        HashMap::from([(HOUSEHOLD, HouseholdState { network_id, head })])
    }

    #[test]
    fn a_case_without_a_household_heads_a_new_one() {
        let (outcome, w, data) = placed(None, false, HashMap::new());
        assert!(matches!(
            outcome,
            Outcome::Created {
                case_id: CASE,
                household_id: NEW_HOUSEHOLD,
                ..
            }
        ));
        assert_eq!(w.plan.households.len(), 1);
        assert_eq!(w.plan.households[0].head_case_id, CASE);
        assert!(w.plan.cases[0].head_of_household);
        assert!(w.plan.unflag.is_empty() && w.plan.head_updates.is_empty());
        assert_eq!(data["household_created"], true);
        assert_eq!(data["head_of_household"], true);
    }

    #[test]
    fn a_case_joining_a_headed_household_leaves_its_head() {
        let (outcome, w, data) = placed(Some(HOUSEHOLD), false, headed_by(Some(42)));
        assert!(matches!(
            outcome,
            Outcome::Created {
                household_id: HOUSEHOLD,
                ..
            }
        ));
        assert!(w.plan.households.is_empty());
        assert!(!w.plan.cases[0].head_of_household);
        assert!(w.plan.unflag.is_empty() && w.plan.head_updates.is_empty());
        assert_eq!(w.heads[&HOUSEHOLD].head, Some(42));
        assert_eq!(data["household_created"], false);
        assert_eq!(data["previous_head_case_id"], serde_json::Value::Null);
    }

    #[test]
    fn a_case_asking_to_head_a_headed_household_replaces_its_head() {
        let (_, w, data) = placed(Some(HOUSEHOLD), true, headed_by(Some(42)));
        assert!(w.plan.cases[0].head_of_household);
        assert_eq!(w.plan.unflag, [42]);
        assert_eq!(w.plan.head_updates, HashMap::from([(HOUSEHOLD, CASE)]));
        // A later intake of the window sees the new head.
        assert_eq!(w.heads[&HOUSEHOLD].head, Some(CASE));
        assert_eq!(data["previous_head_case_id"], 42);
    }

    #[test]
    fn the_first_case_of_an_empty_household_heads_it_whatever_it_asked() {
        let (_, w, data) = placed(Some(HOUSEHOLD), false, headed_by(None));
        assert!(w.plan.cases[0].head_of_household);
        assert!(w.plan.unflag.is_empty());
        assert_eq!(w.plan.head_updates, HashMap::from([(HOUSEHOLD, CASE)]));
        assert_eq!(data["head_of_household"], true);
    }
}
