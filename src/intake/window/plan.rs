//! Every write of a window, gathered in memory and flushed with one statement per
//! table, the outcome rows last (which claims the keys of a window that claims at the end).

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::error::{ErrorCode, IntakeError};
use crate::intake::duplicates::Verdict;
use crate::intake::envelope::Envelope;
use crate::intake::event::{Event, ReplayInfo};
use crate::store::auth::Caller;
use crate::store::ids::{HeadUpdate, NetworkId};
use crate::store::matching::PairRow;
use crate::store::{self, CaseRow, FailedRow, NewHousehold, OutboxBody, OutboxRow, OutcomeRow};

use super::claim::Claim;
use super::prepare::Prepared;

/// What a key's outcome row records: the case created, the existing case linked, or the
/// failure's code.
#[derive(Debug, Clone, Copy)]
pub(super) enum Outcomed {
    Case(i64),
    Matched(i64),
    Failure(ErrorCode),
}

/// Every write of a window, gathered in memory and flushed with one statement per table.
#[derive(Default)]
pub(super) struct Plan {
    pub(super) households: Vec<NewHousehold>,
    pub(super) cases: Vec<CaseRow>,
    /// Existing cases that lost their head flag.
    pub(super) unflag: Vec<i64>,
    /// Existing households whose head changed: household → new head.
    pub(super) head_updates: HashMap<i64, i64>,
    pub(super) outcomes: Vec<OutcomeRow>,
    pub(super) failed: Vec<FailedRow>,
    /// Failed intakes resolved by this window's attempts.
    pub(super) resolved: Vec<store::ResolvedRow>,
    /// The audit of an operator's edit among them.
    pub(super) edits: Vec<store::edits::EditRow>,
    /// The `case.intake_resolved` events planned, by the failed intake each announces.
    pub(super) announces: Vec<(i64, Uuid)>,
    /// Possible-duplicate pairs flagged by this window's cases.
    pub(super) pairs: Vec<PairRow>,
    /// Events with the index of their intake: written in delivery order.
    pub(super) outbox: Vec<(usize, OutboxRow)>,
    pub(super) events: HashMap<Uuid, Event>,
    /// Events recorded as the outcome of a key in this window: event id → (namespace, key).
    /// Their outbox rows refer to the outcome row instead of repeating the body.
    pub(super) recorded: HashMap<Uuid, (NetworkId, String)>,
}

impl Plan {
    /// Makes `case_id` the head of `household`, demoting `previous` (which may be a case
    /// created earlier in this same window, or an existing one).
    pub(super) fn set_head(&mut self, household: i64, case_id: i64, previous: Option<i64>) {
        if let Some(prev) = previous {
            match self.cases.iter_mut().find(|c| c.id == prev) {
                Some(c) => c.head_of_household = false,
                None => self.unflag.push(prev),
            }
        }
        if !self.households.iter().any(|h| h.id == household) {
            self.head_updates.insert(household, case_id);
        }
    }

    /// Records the pairs a created case is flagged with (none unless the verdict flags).
    pub(super) fn flag(
        &mut self,
        caller: Caller,
        case_id: i64,
        key: Option<&str>,
        verdict: &Verdict<'_>,
        event_id: Uuid,
    ) {
        let Verdict::Create {
            flagged,
            overridden,
        } = verdict
        else {
            return;
        };
        self.pairs.extend(flagged.iter().map(|m| PairRow {
            network_id: caller.network_id(),
            case_id,
            candidate_case_id: m.candidate.case_id,
            rules: m.candidate.rules.clone(),
            score: m.candidate.score,
            overridden: *overridden,
            message_key: key.map(str::to_owned),
            event_id,
        }));
    }

    /// Records `ev` as the outcome of `key` (replacing the failure `replaces`, for a resend).
    pub(super) fn record(
        &mut self,
        network_id: NetworkId,
        key: Option<&str>,
        payload_hash: &[u8; 32],
        outcome: Outcomed,
        replaces: Option<Uuid>,
        ev: &Event,
    ) {
        let Some(key) = key else { return };
        let (case_id, code) = match outcome {
            Outcomed::Case(id) | Outcomed::Matched(id) => (Some(id), None),
            Outcomed::Failure(code) => (None, Some(code.as_str().to_owned())),
        };
        self.outcomes.push(OutcomeRow {
            network_id,
            message_key: key.to_owned(),
            payload_hash: payload_hash.to_vec(),
            case_id,
            matched: matches!(outcome, Outcomed::Matched(_)),
            error_code: code,
            event_id: ev.id,
            event: ev.body.to_string(),
            routing_key: ev.routing_key.clone(),
            replaces,
        });
        self.events.insert(ev.id, ev.clone());
        self.recorded.insert(ev.id, (network_id, key.to_owned()));
    }

    pub(super) fn fail(
        &mut self,
        p: &Prepared,
        caller: Option<Caller>,
        error: &IntakeError,
        retry: Option<ReplayInfo>,
        ev: &Event,
    ) {
        self.failed.push(FailedRow {
            network_id: caller.map(|c| c.network_id()),
            message_key: p.env.message_key.clone().map(String::from),
            correlation_id: p.env.correlation_id.clone(),
            token_hash: p.env.token.map(|t| t.to_vec()),
            payload: p.env.body.clone(),
            payload_bytes: p.env.oversize.map_or(p.env.body.len(), |o| o.bytes) as i64,
            payload_sha256: p
                .env
                .oversize
                .map_or_else(|| Sha256::digest(&p.env.body).into(), |o| o.sha256)
                .to_vec(),
            truncated: p.env.oversize.is_some(),
            error_code: error.code.as_str().to_owned(),
            error: serde_json::to_string(error).unwrap_or_default(),
            error_fields: store::failed::error_fields(error),
            attempts: retry.map_or(1, |r| r.attempt),
            event_id: ev.id,
        });
    }

    /// Queues `ev` for publishing as the outcome of the `index`-th intake of the window.
    pub(super) fn queue_event(&mut self, index: usize, ev: &Event, env: &Envelope) {
        self.outbox.push((
            index,
            OutboxRow {
                event_id: ev.id,
                routing_key: ev.routing_key.clone(),
                body: match self.recorded.get(&ev.id) {
                    Some((network_id, key)) => OutboxBody::Outcome {
                        network_id: *network_id,
                        message_key: key.clone(),
                    },
                    None => OutboxBody::Inline(ev.body.to_string()),
                },
                correlation_id: env.correlation_id.clone(),
            },
        ));
    }

    /// Keeps the `case.intake_resolved` events of the failed intakes this window resolved
    /// (`open`: those still open when it wrote), and drops the others. A failure has one
    /// resolution: a resend of a key whose failure an operator dismissed (before, or while
    /// this window ran) still becomes the key's next attempt, but that failure was already
    /// announced as resolved.
    pub(super) fn announce_only(&mut self, open: &[i64]) {
        let closed: HashSet<Uuid> = self
            .announces
            .iter()
            .filter(|(id, _)| !open.contains(id))
            .map(|(_, ev)| *ev)
            .collect();
        if !closed.is_empty() {
            self.outbox
                .retain(|(_, row)| !closed.contains(&row.event_id));
            self.events.retain(|id, _| !closed.contains(id));
        }
    }

    pub(super) fn event(&self, id: Uuid) -> Option<Event> {
        self.events.get(&id).cloned()
    }

    /// Writes the households and cases planned so far (phase one: new households only) and
    /// checks their deferred constraints now, so that neither happens under household locks.
    pub(super) async fn write_new_households(
        &mut self,
        tx: &mut sqlx::PgConnection,
        now: chrono::DateTime<Utc>,
        vault: &crate::store::crypto::Vault,
    ) -> Result<(), sqlx::Error> {
        if self.households.is_empty() && self.cases.is_empty() {
            return Ok(());
        }
        store::insert_households(tx, &self.households, now).await?;
        store::insert_cases(tx, &self.cases, vault).await?;
        store::check_deferred_constraints(tx).await?;
        self.households.clear();
        self.cases.clear();
        Ok(())
    }

    /// Writes everything left; returns the ids of the outbox rows, or `None` if a key's
    /// outcome row could not be inserted because a concurrent window wrote it first.
    pub(super) async fn write(
        self,
        tx: &mut sqlx::PgConnection,
        now: chrono::DateTime<Utc>,
        vault: &crate::store::crypto::Vault,
        claim: Claim,
    ) -> Result<Option<Vec<i64>>, sqlx::Error> {
        // Demote old heads before inserting new ones: the one-head index is not deferrable.
        store::unflag_heads(tx, &self.unflag, now).await?;
        store::insert_households(tx, &self.households, now).await?;
        store::insert_cases(tx, &self.cases, vault).await?;
        let updates: Vec<HeadUpdate> = self
            .head_updates
            .iter()
            .map(|(&household, &case)| HeadUpdate { household, case })
            .collect();
        store::update_heads(tx, &updates, now).await?;
        store::matching::insert_pairs(tx, &self.pairs).await?;
        let (replacing, new): (Vec<&OutcomeRow>, Vec<&OutcomeRow>) =
            self.outcomes.iter().partition(|o| o.replaces.is_some());
        let new: Vec<OutcomeRow> = new.into_iter().cloned().collect();
        match claim {
            Claim::First => store::record_outcomes(tx, &new).await?,
            Claim::AtEnd => {
                if store::insert_outcomes(tx, &new).await? < new.len() {
                    return Ok(None);
                }
            }
        }
        // A failure superseded by a concurrent window meanwhile: this window runs again.
        if !store::replace_outcomes(tx, &replacing).await? {
            return Ok(None);
        }
        store::insert_failed(tx, &self.failed, now, vault).await?;
        store::edits::insert_edits(tx, &self.edits, now).await?;
        let mut outbox = self.outbox;
        outbox.sort_by_key(|(i, _)| *i);
        let rows: Vec<OutboxRow> = outbox.into_iter().map(|(_, r)| r).collect();
        store::insert_outbox(tx, &rows, now).await.map(Some)
    }
}
