//! The message keys. Each intake's slot (first occurrence, follower, a key with an
//! earlier outcome, a resend, a superseded retry) and the claim of the fresh keys, at the start
//! or at the end of the transaction.

use std::collections::{HashMap, hash_map::Entry};

use sqlx::PgConnection;

use crate::domain::error::ErrorCode;
use crate::store::ids::{InNetwork, NetworkId};
use crate::store::{self, ClaimedKey};

use super::authenticate::Callers;
use super::prepare::Prepared;
use super::sorted::unique;

/// How a claimed key's outcome gets decided.
pub(super) enum Slot {
    /// No valid message key: fails without a dedup row.
    NoKey,
    /// First occurrence of a key claimed by this transaction.
    Fresh,
    /// A later occurrence in this window of a key claimed at index `first`.
    Follower { first: usize },
    /// The key has a committed outcome from an earlier transaction.
    Existing(store::StoredOutcome),
    /// The key's committed outcome is a failure its sender can correct, and this body differs:
    /// decided as the key's next attempt, its outcome replacing the failure (fix and resend).
    Resend(store::StoredOutcome),
    /// An operator's retry of a failed intake found resolved in this transaction: the key is
    /// left alone (not claimed, its outcome not forgotten) and the retry comes to
    /// [`Outcome::AlreadyResolved`].
    Superseded,
}

impl Slot {
    /// True when the intake is decided on its own body (a first occurrence or a resend).
    pub(super) fn is_decided_here(&self) -> bool {
        matches!(self, Slot::Fresh | Slot::Resend(_))
    }
}

/// When a window takes its message keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// Look the keys up at the start and insert their outcome rows, complete, at the end (one
    /// write per key). A key that a concurrent window wrote first makes the insert wait for
    /// that window and then skip the row: this transaction is rolled back and the window runs
    /// again with [`Claim::First`].
    AtEnd,
    /// Insert placeholder rows first (`ON CONFLICT DO NOTHING`, waiting for any concurrent
    /// holder of a key) and fill them in at the end: no window can take a key meanwhile.
    /// The named households are locked before that, so that such a window takes its locks in
    /// the order an `AtEnd` window does (households, then keys) and the two cannot deadlock.
    First,
}

/// The slot of each intake (first occurrence of its key, a follower, a key with an
/// earlier outcome, no key), and, for a window that claims first, the households it locked
/// before claiming.
pub(super) async fn claim_keys(
    tx: &mut PgConnection,
    prepared: &[Prepared<'_>],
    callers: &Callers,
    claim: Claim,
) -> Result<(Vec<Slot>, Option<HashMap<i64, store::HouseholdState>>), sqlx::Error> {
    // A window that claims first locks every household its intakes name before it claims.
    let early_heads = match claim {
        Claim::AtEnd => None,
        Claim::First => {
            let refs = prepared
                .iter()
                .filter(|p| p.env.forced_failure().is_none())
                .filter_map(|p| {
                    Some(InNetwork {
                        id: p.household?,
                        network: callers.of(p)?.network_id(),
                    })
                });
            Some(store::lock_households(tx, &unique(refs)).await?)
        }
    };
    // An operator's retry acts only on a failure still open, locked until this transaction
    // ends: one whose sender's resend (or another retry) committed after it was selected is
    // left alone. After the households, as a resend takes the row after its households too.
    let retried: Vec<i64> = prepared
        .iter()
        .filter_map(|p| p.env.replay()?.failed_intake_id)
        .collect();
    let open = store::failed::lock_open_failed(tx, &retried).await?;
    let superseded: Vec<bool> = prepared
        .iter()
        .map(|p| {
            let retried = p.env.replay().and_then(|r| r.failed_intake_id);
            retried.is_some_and(|id| !open.contains(&id))
        })
        .collect();
    let (mut slots, claims) = slots_in_window(prepared, callers, &superseded);
    // A replay re-decides a key whose recorded outcome is a failure; a created case stays.
    let replayed: Vec<(NetworkId, String)> = prepared
        .iter()
        .zip(&superseded)
        .filter(|(p, gone)| p.env.replay().is_some() && !**gone)
        .filter_map(|(p, _)| Some((callers.namespace(p), p.env.message_key.clone()?.into())))
        .collect();
    store::forget_failed_outcomes(tx, &replayed).await?;
    let lost = match claim {
        Claim::First => store::claim_keys(tx, &claims).await?,
        Claim::AtEnd => claims
            .iter()
            .map(|c| (c.network_id, c.message_key.clone()))
            .collect(),
    };
    if !lost.is_empty() {
        // A window that claims first locks the rows it reads, so a failure it supersedes is
        // still the key's outcome when it writes; one that claims at the end finds out then.
        let stored = store::stored_outcomes(tx, &lost, claim == Claim::First).await?;
        for (i, p) in prepared.iter().enumerate() {
            if let (Slot::Fresh, Some(key)) = (&slots[i], p.env.message_key.as_deref())
                && let Some(s) = stored.get(&(callers.namespace(p), key.to_owned()))
            {
                slots[i] = if resends(p, s) {
                    Slot::Resend(s.clone())
                } else {
                    Slot::Existing(s.clone())
                };
            }
        }
        resend_in_followers(prepared, &mut slots);
    }
    Ok((slots, early_heads))
}

/// A key's committed failure may share the window with a duplicate of the failed body and,
/// after it, the corrected body (a redelivery or a re-publish landing with the resend). The
/// corrected body is then the key's next attempt as it would be in a window of its own: the
/// first follower that resends becomes a [`Slot::Resend`], and the followers after it follow
/// it (answered by its outcome, or refused as `idempotency_key_reused`).
pub(super) fn resend_in_followers(prepared: &[Prepared<'_>], slots: &mut [Slot]) {
    let mut leader: HashMap<usize, usize> = HashMap::new();
    for i in 0..slots.len() {
        let Slot::Follower { first } = slots[i] else {
            continue;
        };
        if let Some(&resend) = leader.get(&first) {
            slots[i] = Slot::Follower { first: resend };
        } else if let Slot::Existing(s) = &slots[first]
            && resends(&prepared[i], s)
        {
            slots[i] = Slot::Resend(s.clone());
            leader.insert(first, i);
        }
    }
}

/// True when an intake supersedes its key's committed outcome: a failure its sender can
/// correct (see [`ErrorCode::resendable`]), and another body. The same body answers the
/// recorded outcome again; a created case keeps its key bound to its body.
///
/// A `possible_duplicate` is also superseded by the same body sent with the override header:
/// the header, not the body, is what changed.
pub(super) fn resends(p: &Prepared, stored: &store::StoredOutcome) -> bool {
    let code = stored.error_code.as_deref().and_then(ErrorCode::parse);
    p.env.replay().is_none()
        && match code {
            Some(ErrorCode::PossibleDuplicate) if p.env.duplicate_override => true,
            Some(code) => code.resendable() && stored.payload_hash.as_slice() != p.hash,
            None => false,
        }
}

/// The first occurrence of each key within the window (per network) and the keys to claim;
/// the retries marked `superseded` neither claim nor follow their key.
pub(super) fn slots_in_window(
    prepared: &[Prepared<'_>],
    callers: &Callers,
    superseded: &[bool],
) -> (Vec<Slot>, Vec<ClaimedKey>) {
    let mut first_of: HashMap<(NetworkId, &str), usize> = HashMap::new();
    let mut slots: Vec<Slot> = Vec::with_capacity(prepared.len());
    let mut claims: Vec<ClaimedKey> = Vec::new();
    for (i, p) in prepared.iter().enumerate() {
        if superseded[i] {
            slots.push(Slot::Superseded);
            continue;
        }
        let Some(key) = p.env.message_key.as_deref() else {
            slots.push(Slot::NoKey);
            continue;
        };
        match first_of.entry((callers.namespace(p), key)) {
            Entry::Occupied(first) => slots.push(Slot::Follower {
                first: *first.get(),
            }),
            Entry::Vacant(v) => {
                v.insert(i);
                claims.push(ClaimedKey {
                    network_id: callers.namespace(p),
                    message_key: key.to_owned(),
                    payload_hash: p.hash.to_vec(),
                });
                slots.push(Slot::Fresh);
            }
        }
    }
    (slots, claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    use crate::intake::envelope::Envelope;
    use crate::intake::window::testing::{context, envelope, prepared, seed};

    /// A committed `validation_failed` outcome of body `failed`, as a window reads it.
    fn stored_failure(failed: &Envelope) -> store::StoredOutcome {
        store::StoredOutcome {
            payload_hash: prepared(failed, &context()).hash.to_vec(),
            event: crate::intake::window::events::failed_event(
                &context(),
                &crate::domain::error::IntakeError::new(ErrorCode::ValidationFailed, "bad"),
                failed,
                None,
                Utc::now(),
            ),
            error_code: Some(ErrorCode::ValidationFailed.as_str().to_owned()),
            failed: Some((1, 1)),
        }
    }

    #[test]
    fn a_corrected_body_behind_a_duplicate_of_the_failure_resends() {
        let mut bad = seed();
        bad.as_object_mut().unwrap().remove("last_name");
        let failed = envelope(Some("k"), bad);
        let fixed = envelope(Some("k"), seed());
        // The failed body again, the corrected one, both again.
        let ctx = context();
        let window = [&failed, &fixed, &failed, &fixed].map(|e| prepared(e, &ctx));
        let stored = stored_failure(&failed);
        let mut slots = vec![
            Slot::Existing(stored.clone()),
            Slot::Follower { first: 0 },
            Slot::Follower { first: 0 },
            Slot::Follower { first: 0 },
        ];
        resend_in_followers(&window, &mut slots);
        assert!(matches!(slots[0], Slot::Existing(_)));
        assert!(matches!(slots[1], Slot::Resend(_)));
        assert!(matches!(slots[2], Slot::Follower { first: 1 }));
        assert!(matches!(slots[3], Slot::Follower { first: 1 }));
        // Behind a created case, another body stays a follower (refused as reused).
        let mut created = stored;
        created.error_code = None;
        let mut slots = vec![Slot::Existing(created), Slot::Follower { first: 0 }];
        resend_in_followers(&window[..2], &mut slots);
        assert!(matches!(slots[1], Slot::Follower { first: 0 }));
    }
}
