//! The spine of the service: a window of intakes processed in one transaction.
//!
//! decode → validate (pure, before the transaction) → in one transaction: authenticate,
//! look up the message keys, check references, lock households, place each case (pure rules),
//! write cases, outcomes (which claims the keys), failed intakes and outbox events with one
//! statement per table → commit (a key taken meanwhile by a concurrent window: roll back and
//! run again, claiming the keys first). A bad message never rolls back its neighbours: every
//! per-message problem is decided in memory and becomes that message's failed outcome. Only a
//! database error aborts the window, and the caller decides from its class what to do (retry,
//! split, hand back).

use std::collections::{HashMap, HashSet, hash_map::Entry};

use chrono::{NaiveDate, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::intake::decode::{BodyLimits, decode_body, payload_hash, too_large};
use crate::intake::duplicates::{self, InWindow, Match, MatchInput, Verdict};
use crate::intake::envelope::Envelope;
use crate::intake::error::{ErrorCode, FieldErrors, IntakeError};
use crate::intake::event::{self, Event, ReplayInfo, Resolution};
use crate::intake::household::{Placement, place};
use crate::intake::matching::Candidate;
use crate::intake::validate::{Validated, validate};
use crate::store::auth::{Caller, TokenHash};
use crate::store::ids::{HeadUpdate, InNetwork, NetworkId};
use crate::store::matching::PairRow;
use crate::store::{
    self, CaseRow, ClaimedKey, FailedRow, NewHousehold, OutboxBody, OutboxRow, OutcomeRow,
};

/// What the pipeline needs besides the intakes.
#[derive(Debug, Clone)]
pub struct WindowContext {
    pub source: String,
    pub created_routing_key: String,
    pub failed_routing_key: String,
    pub resolved_routing_key: String,
    pub matched_routing_key: String,
    pub limits: BodyLimits,
    /// Seals SSNs and failed payloads before they are written.
    pub vault: std::sync::Arc<crate::store::crypto::Vault>,
    /// Where a committed window hands its outbox rows to this process's relay (`None` where
    /// no relay runs, as in a command-line replay: a worker's sweep publishes those rows).
    pub handoff: Option<std::sync::Arc<crate::outbox::relay::Handoff>>,
    /// The operator on whose behalf a command-line replay or edit runs (recorded as
    /// `resolved_by`); `None` in the worker.
    pub operator: Option<String>,
    /// Set by `case-intake failed edit`: the audit of each operator's edit, by the id of the
    /// failed intake it corrects, written in the window's transaction for the intake whose
    /// replay is [`Resolution::Edited`] and retries that failed intake, once its outcome is
    /// known: an edit is never applied without its audit row nor audited without being
    /// applied. Keyed, as a bulk edit runs many edited intakes in one window. Empty elsewhere.
    pub edit_audits: std::collections::HashMap<i64, store::edits::EditAudit>,
}

/// What became of one intake; the consumer logs it, tests assert on it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Created {
        case_id: i64,
        household_id: i64,
        event_id: Uuid,
    },
    Failed {
        code: ErrorCode,
        event_id: Uuid,
    },
    /// The key was seen before with the same body: its original event was queued again.
    Duplicate {
        event_id: Uuid,
    },
    /// The person already has a case and the network's policy is `link`: no case was
    /// created; the key's outcome is that case (`case.matched`).
    Matched {
        case_id: i64,
        household_id: i64,
        event_id: Uuid,
    },
    /// An operator's retry (replay, edit) of a failed intake that was resolved after it was
    /// selected (its sender's corrected body committed first, another replay, a dismissal):
    /// nothing was done to the key, nothing published, no failed intake opened. `event_id` is
    /// the event of the failure it would have retried, no longer the key's outcome.
    AlreadyResolved {
        event_id: Uuid,
    },
}

impl Outcome {
    pub fn event_id(&self) -> Uuid {
        match self {
            Outcome::Created { event_id, .. }
            | Outcome::Failed { event_id, .. }
            | Outcome::Duplicate { event_id }
            | Outcome::Matched { event_id, .. }
            | Outcome::AlreadyResolved { event_id } => *event_id,
        }
    }
}

/// The decision for one message before the database is consulted.
struct Prepared<'a> {
    env: &'a Envelope,
    hash: [u8; 32],
    body: Result<Validated, IntakeError>,
    /// The county and household ids the body names (when they are well-formed ids), checked
    /// against the caller's network even when other fields are invalid, so that a failed
    /// intake reports every field error at once.
    county: Option<i64>,
    household: Option<i64>,
    /// The keys a valid body is matched by (empty for an invalid one).
    matching: MatchInput,
}

/// Decodes and validates outside the transaction: CPU work that needs no lock.
fn prepare<'a>(env: &'a Envelope, ctx: &WindowContext, today: NaiveDate) -> Prepared<'a> {
    // An oversized body arrives cut to a prefix: refused by its published size, keyed by the
    // hash of what was published.
    let (decoded, hash) = match env.oversize {
        Some(o) => (Err(too_large(o.bytes, ctx.limits.max_body_bytes)), o.sha256),
        None => {
            let decoded = decode_body(&env.body, &ctx.limits);
            let hash = payload_hash(&env.body, decoded.as_ref().ok());
            (decoded, hash)
        }
    };
    let id_of = |field: &str| {
        let map = decoded.as_ref().ok()?;
        map.get(field)?.as_i64().filter(|id| *id > 0)
    };
    let (county, household) = (id_of("street_county"), id_of("household"));
    let body = decoded.and_then(|map| validate(&map, today).map_err(IntakeError::validation));
    let matching = match &body {
        Ok(v) => MatchInput::of(&v.case, &ctx.vault),
        Err(_) => MatchInput::default(),
    };
    Prepared {
        env,
        hash,
        body,
        county,
        household,
        matching,
    }
}

/// How a claimed key's outcome gets decided.
enum Slot {
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
    fn is_decided_here(&self) -> bool {
        matches!(self, Slot::Fresh | Slot::Resend(_))
    }
}

/// When a window takes its message keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
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

/// Processes `envelopes` in one transaction; returns one outcome per envelope, in order.
pub async fn run(
    pool: &PgPool,
    ctx: &WindowContext,
    envelopes: &[Envelope],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let decided = run_finishing(pool, ctx, envelopes, Finish::Commit).await?;
    Ok(decided.into_iter().map(|d| d.outcome).collect())
}

/// What processing `envelopes` would do, without doing it: the window's transaction runs in
/// full (the same decisions, locks and constraint checks as [`run`]) and is rolled back, so
/// nothing is written and no event queued. Ids in the result were drawn from the sequences
/// and are not used again; a later real run allocates others.
pub async fn preview(
    pool: &PgPool,
    ctx: &WindowContext,
    envelopes: &[Envelope],
) -> Result<Vec<Decided>, sqlx::Error> {
    run_finishing(pool, ctx, envelopes, Finish::Rollback).await
}

/// One intake's outcome with, from [`preview`], the body of the event it would publish.
#[derive(Debug, Clone)]
pub struct Decided {
    pub outcome: Outcome,
    pub event: Option<Value>,
}

/// Whether a window's transaction commits, or is rolled back after deciding ([`preview`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Commit,
    Rollback,
}

async fn run_finishing(
    pool: &PgPool,
    ctx: &WindowContext,
    envelopes: &[Envelope],
    finish: Finish,
) -> Result<Vec<Decided>, sqlx::Error> {
    let now = Utc::now();
    let today = now.date_naive();
    let prepared: Vec<Prepared> = envelopes.iter().map(|e| prepare(e, ctx, today)).collect();
    // Almost every window has keys no other transaction holds: claiming them at the end
    // saves a write per key. A lost race for a key (an intake re-published while its first
    // copy is in another window) re-runs the window claiming its keys first, which cannot
    // lose one.
    if let Some(outcomes) = transaction(pool, ctx, &prepared, now, Claim::AtEnd, finish).await? {
        return Ok(outcomes);
    }
    tracing::debug!(
        window = envelopes.len(),
        "a message key was taken by a concurrent window; re-running the window"
    );
    // A window that claims first cannot lose a key; were it to happen (a bug), the error is
    // of no transient or outage class, so the deliveries go back and the broker's delivery
    // limit dead-letters them rather than the window spinning or holding as an outage.
    transaction(pool, ctx, &prepared, now, Claim::First, finish)
        .await?
        .ok_or_else(|| sqlx::Error::InvalidArgument("a message key claimed first was taken".into()))
}

/// One transaction over the window; `None` if a key was taken by a concurrent window
/// (only with [`Claim::AtEnd`]; the transaction is rolled back).
///
/// The spine: authenticate, claim the keys, check references, then two phases of decide and
/// place (intakes that create a household first, before any household lock; then, with the
/// named households locked, the others), answer the duplicates, write and commit.
async fn transaction(
    pool: &PgPool,
    ctx: &WindowContext,
    prepared: &[Prepared<'_>],
    now: chrono::DateTime<Utc>,
    claim: Claim,
    finish: Finish,
) -> Result<Option<Vec<Decided>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let callers = authenticate(&mut tx, prepared).await?;
    // Before any key or household lock: every window takes the match locks first, so the
    // three kinds of lock are always taken in one order.
    let stored_matches = duplicates::look_up(&mut tx, matchable(prepared, &callers)).await?;
    let (slots, early_heads) = claim_keys(&mut tx, prepared, &callers, claim).await?;
    let mut w = Written::new(prepared.len());
    for (i, slot) in slots.iter().enumerate() {
        if let (Slot::Superseded, Some(retry)) = (slot, prepared[i].env.replay) {
            let event_id = retry.supersedes.unwrap_or_default();
            w.outcomes[i] = Some(Outcome::AlreadyResolved { event_id });
        }
    }
    let refs = References::find(prepared, &slots, &callers);
    let counties = store::existing_counties(&mut tx, &unique(refs.counties)).await?;

    // Two phases. Intakes that create a household touch no existing household: they are
    // decided and their households and cases written first, and the deferred household
    // constraints checked for them, before any household lock is taken. Only then are the
    // households that other intakes name locked (FOR UPDATE, in id order) and those intakes
    // decided. Concurrent windows serialise on shared (hot) households for the second phase
    // only, which is what limits throughput (docs/benchmarks.md).
    let (locked, unlocked): (Vec<usize>, Vec<usize>) =
        (0..prepared.len()).partition(|&i| names_household(&prepared[i]));
    let phase = Phase {
        ctx,
        prepared,
        slots: &slots,
        callers: &callers,
        counties: &counties,
        matches: &stored_matches,
        now,
    };
    phase.decide_and_place(&mut tx, &unlocked, &mut w).await?;
    w.plan
        .write_new_households(&mut tx, now, &ctx.vault)
        .await?;
    w.heads = match early_heads {
        Some(locked) => locked,
        None => store::lock_households(&mut tx, &unique(refs.households)).await?,
    };
    phase.decide_and_place(&mut tx, &locked, &mut w).await?;
    phase.answer_duplicates(&mut w);

    phase.resolve(&mut w);
    let open = store::resolve_failed(&mut tx, &w.plan.resolved, now).await?;
    w.plan.announce_only(&open);
    let outcomes: Vec<Outcome> = w
        .outcomes
        .iter()
        .map(|o| o.clone().expect("every envelope is decided"))
        .collect();
    // Only a preview returns the events (the worker's windows do not need the copies).
    let events: Vec<Option<Value>> = match finish {
        Finish::Commit => vec![None; outcomes.len()],
        Finish::Rollback => (0..outcomes.len())
            .map(|i| {
                let id = outcomes[i].event_id();
                let ev = w.plan.event(id).or_else(|| phase.stored_event(i, id));
                ev.map(|e| e.body)
            })
            .collect(),
    };
    let Some(outbox_ids) = w.plan.write(&mut tx, now, &ctx.vault, claim).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    match finish {
        Finish::Rollback => tx.rollback().await?,
        Finish::Commit => {
            tx.commit().await?;
            if let Some(handoff) = &ctx.handoff {
                handoff.push(&outbox_ids);
            }
        }
    }
    let decided = outcomes.into_iter().zip(events);
    Ok(Some(
        decided
            .map(|(outcome, event)| Decided { outcome, event })
            .collect(),
    ))
}

/// The window's authenticated callers, by token hash.
struct Callers(HashMap<TokenHash, Caller>);

impl Callers {
    /// The caller of an intake, if its token authenticated.
    fn of(&self, p: &Prepared) -> Option<Caller> {
        p.env.token.and_then(|t| self.0.get(&t).copied())
    }

    /// The network whose key namespace an intake's key belongs to
    /// ([`NetworkId::UNAUTHENTICATED`] without a caller).
    fn namespace(&self, p: &Prepared) -> NetworkId {
        self.of(p)
            .map_or(NetworkId::UNAUTHENTICATED, |c| c.network_id())
    }
}

/// Step 1: every distinct token of the window, authenticated in one query.
async fn authenticate(
    tx: &mut PgConnection,
    prepared: &[Prepared<'_>],
) -> Result<Callers, sqlx::Error> {
    let tokens: Vec<[u8; 32]> = unique(prepared.iter().filter_map(|p| p.env.token));
    Ok(Callers(store::callers(tx, &tokens).await?))
}

/// The intakes that may be matched: a valid body from an authenticated caller, not forced to
/// fail (whether their slot is decided here is known only later; extra lookups are harmless).
fn matchable<'a>(
    prepared: &'a [Prepared<'_>],
    callers: &'a Callers,
) -> impl Iterator<Item = (usize, Caller, &'a MatchInput)> + 'a {
    prepared.iter().enumerate().filter_map(|(i, p)| {
        let caller = callers.of(p)?;
        (p.body.is_ok() && p.env.forced_failure.is_none()).then_some((i, caller, &p.matching))
    })
}

/// Step 2: the slot of each intake (first occurrence of its key, a follower, a key with an
/// earlier outcome, no key), and, for a window that claims first, the households it locked
/// before claiming.
async fn claim_keys(
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
                .filter(|p| p.env.forced_failure.is_none())
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
        .filter_map(|p| p.env.replay?.failed_intake_id)
        .collect();
    let open = store::failed::lock_open_failed(tx, &retried).await?;
    let superseded: Vec<bool> = prepared
        .iter()
        .map(|p| {
            let retried = p.env.replay.and_then(|r| r.failed_intake_id);
            retried.is_some_and(|id| !open.contains(&id))
        })
        .collect();
    let (mut slots, claims) = slots_in_window(prepared, callers, &superseded);
    // A replay re-decides a key whose recorded outcome is a failure; a created case stays.
    let replayed: Vec<(NetworkId, String)> = prepared
        .iter()
        .zip(&superseded)
        .filter(|(p, gone)| p.env.replay.is_some() && !**gone)
        .filter_map(|(p, _)| Some((callers.namespace(p), p.env.message_key.clone()?)))
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
fn resend_in_followers(prepared: &[Prepared<'_>], slots: &mut [Slot]) {
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
fn resends(p: &Prepared, stored: &store::StoredOutcome) -> bool {
    let code = stored.error_code.as_deref().and_then(ErrorCode::parse);
    p.env.replay.is_none()
        && match code {
            Some(ErrorCode::PossibleDuplicate) if p.env.duplicate_override => true,
            Some(code) => code.resendable() && stored.payload_hash.as_slice() != p.hash,
            None => false,
        }
}

/// The first occurrence of each key within the window (per network) and the keys to claim;
/// the retries marked `superseded` neither claim nor follow their key.
fn slots_in_window(
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

/// Step 3: the counties and households the fresh intakes name, scoped to their callers'
/// networks.
struct References {
    counties: Vec<InNetwork>,
    households: Vec<InNetwork>,
}

impl References {
    fn find(prepared: &[Prepared<'_>], slots: &[Slot], callers: &Callers) -> Self {
        let mut refs = Self {
            counties: Vec::new(),
            households: Vec::new(),
        };
        for (i, p) in prepared.iter().enumerate() {
            if let (true, Some(c), None) = (
                slots[i].is_decided_here(),
                callers.of(p),
                &p.env.forced_failure,
            ) {
                if let Some(county) = p.county {
                    refs.counties.push(InNetwork {
                        id: county,
                        network: c.network_id(),
                    });
                }
                if let Some(h) = p.household {
                    refs.households.push(InNetwork {
                        id: h,
                        network: c.network_id(),
                    });
                }
            }
        }
        refs
    }
}

/// True when an intake names a household (joins one): it is decided in the second phase.
fn names_household(p: &Prepared) -> bool {
    p.household.is_some() || matches!(&p.body, Ok(v) if v.case.household.is_some())
}

/// What a window has decided and planned so far.
struct Written {
    /// Locked households by id (second phase), with the head each has now.
    heads: HashMap<i64, store::HouseholdState>,
    plan: Plan,
    outcomes: Vec<Option<Outcome>>,
    /// The cases planned so far, as later intakes of the window may match them.
    in_window: InWindow,
}

impl Written {
    fn new(n: usize) -> Self {
        Self {
            heads: HashMap::new(),
            plan: Plan::default(),
            outcomes: vec![None; n],
            in_window: InWindow::default(),
        }
    }
}

/// What a fresh intake comes to: a case to create for a caller, or a failure.
type Decision<'v> = Result<(Caller, &'v Validated), IntakeError>;

/// Decides one intake, without I/O: `None` when its slot is decided elsewhere (a follower or
/// a key with an earlier outcome).
fn decide<'v>(
    p: &'v Prepared<'_>,
    slot: &Slot,
    caller: Option<Caller>,
    counties: &HashSet<InNetwork>,
    heads: &HashMap<i64, store::HouseholdState>,
) -> Option<Decision<'v>> {
    match (slot, caller) {
        (Slot::NoKey, _) => Some(Err(p.env.forced_failure.clone().unwrap_or_else(|| {
            IntakeError::new(
                ErrorCode::MissingMessageKey,
                "the message_id property must hold a message key of 1 to 255 characters",
            )
        }))),
        (s, _) if !s.is_decided_here() => None,
        _ if p.env.forced_failure.is_some() => p.env.forced_failure.clone().map(Err),
        (_, None) => Some(Err(IntakeError::new(
            ErrorCode::Unauthorized,
            "a valid API token is required in the authorization header as `Token <api_token>`",
        ))),
        (_, Some(caller)) => {
            let mut refs = check_references(p, caller, counties, heads);
            Some(match &p.body {
                Err(e) if e.code == ErrorCode::ValidationFailed => {
                    for (field, messages) in &e.fields {
                        refs.insert(field.clone(), messages.clone());
                    }
                    Err(IntakeError::validation_beyond(refs, e.fields_omitted))
                }
                Err(e) => Err(e.clone()),
                Ok(v) if refs.is_empty() => Ok((caller, v)),
                Ok(_) => Err(IntakeError::validation(refs)),
            })
        }
    }
}

/// The window-wide inputs of the decide and place steps.
struct Phase<'a, 'p> {
    ctx: &'a WindowContext,
    prepared: &'a [Prepared<'p>],
    slots: &'a [Slot],
    callers: &'a Callers,
    counties: &'a HashSet<InNetwork>,
    /// The stored candidates of each intake that was matched.
    matches: &'a duplicates::Stored,
    now: chrono::DateTime<Utc>,
}

impl Phase<'_, '_> {
    /// Which attempt intake `i` is when it retries a failure: an operator's replay or edit
    /// (set on its envelope), or its sender's corrected body (a resend slot).
    fn retry_of(&self, i: usize) -> Option<ReplayInfo> {
        let p = &self.prepared[i];
        match &self.slots[i] {
            Slot::Resend(s) => Some(ReplayInfo {
                attempt: s.failed.map_or(2, |(_, attempts)| attempts + 1),
                failed_intake_id: s.failed.map(|(id, _)| id),
                supersedes: Some(s.event.id),
                how: Resolution::Resent,
            }),
            _ => p.env.replay,
        }
    }

    /// Step 7: the failed intakes that this window's attempts retried are resolved, and those
    /// whose attempt came to a case announce it (`case.intake_resolved`). An attempt that
    /// failed again supersedes the failure without an announcement: its own `case.failed`
    /// event (attempt N+1) tells.
    fn resolve(&self, w: &mut Written) {
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
                    operator: self.ctx.operator.clone(),
                    reason: None,
                });
                self.audit(i, retry, id, &outcome, w);
            }
            let case = match outcome {
                Outcome::Created {
                    case_id,
                    household_id,
                    ..
                }
                | Outcome::Matched {
                    case_id,
                    household_id,
                    ..
                } => Some((case_id, household_id)),
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
    fn audit(
        &self,
        i: usize,
        retry: ReplayInfo,
        failed_intake_id: i64,
        outcome: &Outcome,
        w: &mut Written,
    ) {
        let (Resolution::Edited, Some(audit), Some(key)) = (
            retry.how,
            self.ctx.edit_audits.get(&failed_intake_id),
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

    /// The failure event a resent intake's outcome replaces.
    fn replaces(&self, i: usize) -> Option<Uuid> {
        match &self.slots[i] {
            Slot::Resend(s) => Some(s.event.id),
            _ => None,
        }
    }

    /// The stored outcome event that intake `i` (a key seen before) answered with.
    fn stored_event(&self, i: usize, id: Uuid) -> Option<Event> {
        let slot = match &self.slots[i] {
            Slot::Follower { first } => &self.slots[*first],
            s => s,
        };
        match slot {
            Slot::Existing(s) | Slot::Resend(s) if s.event.id == id => Some(s.event.clone()),
            _ => None,
        }
    }

    /// Steps 4 and 5 for the intakes at `indices`: decide each, allocate the ids the creates
    /// need in one query, place each case and plan its rows and event, or plan the failure.
    async fn decide_and_place(
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

    /// Links intake `i` to the existing case `best` (policy `link`): no case is created; the
    /// key's outcome is that case, announced by a `case.matched` event.
    fn link(
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
        let mut data = event::matched_data(key, case_id, household_id, &best.candidate, &others);
        event::add_replay(&mut data, self.retry_of(i));
        let mut ev = event::cloud_event(
            &self.ctx.source,
            event::CASE_MATCHED,
            &self.ctx.matched_routing_key,
            key,
            self.now,
            data,
        );
        event::add_trace(&mut ev, p.env.trace.as_ref());
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
    fn place(
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
    fn created_event(
        &self,
        row: &CaseRow,
        v: &Validated,
        placement: &Placement,
        key: Option<&str>,
        i: usize,
        verdict: &Verdict<'_>,
    ) -> Event {
        let env = self.prepared[i].env;
        let mut data = store::case_json(row, &v.case);
        let data_obj = data.as_object_mut().expect("case_json returns an object");
        data_obj.insert("household_id".into(), row.household_id.into());
        data_obj.insert(
            "household_created".into(),
            matches!(placement, Placement::NewHousehold).into(),
        );
        data_obj.insert("head_of_household".into(), placement.is_head().into());
        data_obj.insert(
            "previous_head_case_id".into(),
            placement.previous_head().into(),
        );
        data_obj.insert("message_key".into(), key.into());
        data_obj.insert(
            "warnings".into(),
            serde_json::to_value(&v.warnings).unwrap_or(Value::Null),
        );
        // Only a network that matches says anything about duplicates (`[]`: none found).
        if let Verdict::Create { flagged, .. } = verdict {
            let candidates: Vec<&Candidate> = flagged.iter().map(|m| &m.candidate).collect();
            data_obj_insert(&mut data, "possible_duplicates", &candidates);
        }
        event::add_replay(&mut data, self.retry_of(i));
        let mut ev = event::cloud_event(
            &self.ctx.source,
            event::CASE_CREATED,
            &self.ctx.created_routing_key,
            key,
            self.now,
            data,
        );
        event::add_trace(&mut ev, env.trace.as_ref());
        ev
    }

    /// Plans the failure of intake `i`: its outcome row (when it has a key), its failed
    /// intake and its `case.failed` event.
    fn fail(&self, i: usize, error: &IntakeError, w: &mut Written) -> Outcome {
        let p = &self.prepared[i];
        let key = p.env.message_key.as_deref();
        let retry = self.retry_of(i);
        let ev = failed_event(self.ctx, key, error, p.env, retry, self.now);
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

    /// Step 6: keys seen before (in an earlier transaction or earlier in this window) answer
    /// their original event again, or fail `idempotency_key_reused` with another body.
    fn answer_duplicates(&self, w: &mut Written) {
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
                let key = p.env.message_key.as_deref();
                let retry = p.env.replay;
                let ev = failed_event(self.ctx, key, &error, p.env, retry, self.now);
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
    fn original_of(&self, i: usize, w: &Written) -> Option<(bool, Event)> {
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

fn failed_event(
    ctx: &WindowContext,
    key: Option<&str>,
    error: &IntakeError,
    env: &Envelope,
    retry: Option<ReplayInfo>,
    now: chrono::DateTime<Utc>,
) -> Event {
    let mut ev = event::cloud_event(
        &ctx.source,
        event::CASE_FAILED,
        &ctx.failed_routing_key,
        key,
        now,
        event::failed_data(key, error, retry),
    );
    event::add_trace(&mut ev, env.trace.as_ref());
    ev
}

/// The `case.intake_resolved` event of a failure resolved by intake `env`'s attempt.
fn resolved_event(
    ctx: &WindowContext,
    resolved: &event::Resolved<'_>,
    env: &Envelope,
    now: chrono::DateTime<Utc>,
) -> Event {
    let mut ev = event::cloud_event(
        &ctx.source,
        event::INTAKE_RESOLVED,
        &ctx.resolved_routing_key,
        resolved.message_key,
        now,
        event::resolved_data(resolved),
    );
    event::add_trace(&mut ev, env.trace.as_ref());
    ev
}

/// The county and household must exist in the caller's network. A reference into another
/// network gets the same message as a missing one, so nothing about that network leaks.
fn check_references(
    p: &Prepared,
    caller: Caller,
    counties: &HashSet<InNetwork>,
    households: &HashMap<i64, store::HouseholdState>,
) -> FieldErrors {
    let mut fields = FieldErrors::new();
    if let Some(county) = p.county
        && !counties.contains(&InNetwork {
            id: county,
            network: caller.network_id(),
        })
    {
        fields.insert(
            "street_county".into(),
            vec!["is not a county of your network".into()],
        );
    }
    if let Some(h) = p.household
        && households
            .get(&h)
            .is_none_or(|s| s.network_id != caller.network_id())
    {
        fields.insert(
            "household".into(),
            vec!["is not a household of your network".into()],
        );
    }
    fields
}

fn unique<T: std::hash::Hash + Eq + Ord + Copy>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = items
        .into_iter()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    // Sorted, so that concurrent windows lock rows in the same order and cannot deadlock.
    v.sort_unstable();
    v
}

/// What a key's outcome row records: the case created, the existing case linked, or the
/// failure's code.
#[derive(Debug, Clone, Copy)]
enum Outcomed {
    Case(i64),
    Matched(i64),
    Failure(ErrorCode),
}

/// A case a fresh intake is to create: its caller, its valid body and its allocated id.
struct NewCase<'v> {
    caller: Caller,
    v: &'v Validated,
    case_id: i64,
}

/// Sets `field` of an event's `data` object.
fn data_obj_insert(data: &mut Value, field: &str, value: impl serde::Serialize) {
    if let Some(obj) = data.as_object_mut() {
        obj.insert(
            field.into(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }
}

/// Every write of a window, gathered in memory and flushed with one statement per table.
#[derive(Default)]
struct Plan {
    households: Vec<NewHousehold>,
    cases: Vec<CaseRow>,
    /// Existing cases that lost their head flag.
    unflag: Vec<i64>,
    /// Existing households whose head changed: household → new head.
    head_updates: HashMap<i64, i64>,
    outcomes: Vec<OutcomeRow>,
    failed: Vec<FailedRow>,
    /// Failed intakes resolved by this window's attempts.
    resolved: Vec<store::ResolvedRow>,
    /// The audit of an operator's edit among them.
    edits: Vec<store::edits::EditRow>,
    /// The `case.intake_resolved` events planned, by the failed intake each announces.
    announces: Vec<(i64, Uuid)>,
    /// Possible-duplicate pairs flagged by this window's cases.
    pairs: Vec<PairRow>,
    /// Events with the index of their intake: written in delivery order.
    outbox: Vec<(usize, OutboxRow)>,
    events: HashMap<Uuid, Event>,
    /// Events recorded as the outcome of a key in this window: event id → (namespace, key).
    /// Their outbox rows refer to the outcome row instead of repeating the body.
    recorded: HashMap<Uuid, (NetworkId, String)>,
}

impl Plan {
    /// Makes `case_id` the head of `household`, demoting `previous` (which may be a case
    /// created earlier in this same window, or an existing one).
    fn set_head(&mut self, household: i64, case_id: i64, previous: Option<i64>) {
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
    fn flag(
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
    fn record(
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

    fn fail(
        &mut self,
        p: &Prepared,
        caller: Option<Caller>,
        error: &IntakeError,
        retry: Option<ReplayInfo>,
        ev: &Event,
    ) {
        self.failed.push(FailedRow {
            network_id: caller.map(|c| c.network_id()),
            message_key: p.env.message_key.clone(),
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
    fn queue_event(&mut self, index: usize, ev: &Event, env: &Envelope) {
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
    fn announce_only(&mut self, open: &[i64]) {
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

    fn event(&self, id: Uuid) -> Option<Event> {
        self.events.get(&id).cloned()
    }

    /// Writes the households and cases planned so far (phase one: new households only) and
    /// checks their deferred constraints now, so that neither happens under household locks.
    async fn write_new_households(
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
    async fn write(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::error::ErrorCode;

    const NETWORK: i64 = 7;
    const COUNTY: i64 = 3;

    fn envelope(key: Option<&str>, body: Value) -> Envelope {
        Envelope {
            message_key: key.map(str::to_owned),
            correlation_id: None,
            token: None,
            body: serde_json::to_vec(&body).unwrap(),
            oversize: None,
            replay: None,
            forced_failure: None,
            trace: None,
            duplicate_override: false,
        }
    }

    fn seed() -> Value {
        let mut v: Value =
            serde_json::from_str(include_str!("../../harness/fixtures/seed-body.json")).unwrap();
        v["street_county"] = COUNTY.into();
        v
    }

    fn prepared(env: &Envelope) -> Prepared<'_> {
        let limits = BodyLimits {
            max_body_bytes: 65536,
            max_depth: 32,
        };
        let today = NaiveDate::from_ymd_opt(2026, 6, 1).unwrap();
        let decoded = decode_body(&env.body, &limits);
        let county = decoded
            .as_ref()
            .ok()
            .and_then(|m| m.get("street_county")?.as_i64());
        Prepared {
            env,
            hash: payload_hash(&env.body, decoded.as_ref().ok()),
            body: decoded.and_then(|m| validate(&m, today).map_err(IntakeError::validation)),
            county,
            household: None,
            matching: MatchInput::default(),
        }
    }

    fn code(d: Option<Decision>) -> ErrorCode {
        d.expect("decided").expect_err("a failure").code
    }

    fn ours() -> HashSet<InNetwork> {
        HashSet::from([InNetwork {
            id: COUNTY,
            network: Caller::for_tests(NETWORK).network_id(),
        }])
    }

    /// The error code `decide` gives `env` in `slot` from `caller`.
    fn failure_of(env: &Envelope, slot: &Slot, caller: Option<Caller>) -> ErrorCode {
        code(decide(
            &prepared(env),
            slot,
            caller,
            &ours(),
            &HashMap::new(),
        ))
    }

    /// The seed intake under `key`, its envelope marked to fail with `failure`.
    fn forced(key: Option<&str>, failure: IntakeError) -> Envelope {
        let mut env = envelope(key, seed());
        env.forced_failure = Some(failure);
        env
    }

    #[test]
    fn an_intake_without_a_key_fails_with_its_envelope_problem() {
        let caller = Some(Caller::for_tests(NETWORK));
        let no_key = envelope(None, seed());
        let unsafe_key = forced(None, crate::intake::envelope::unsafe_text("message_id"));
        assert_eq!(
            failure_of(&no_key, &Slot::NoKey, caller),
            ErrorCode::MissingMessageKey
        );
        assert_eq!(
            failure_of(&unsafe_key, &Slot::NoKey, caller),
            ErrorCode::InvalidEnvelope
        );
    }

    #[test]
    fn forced_failures_and_missing_callers_fail_before_the_body_is_read() {
        let dead = forced(Some("k"), IntakeError::new(ErrorCode::DeadLettered, "dead"));
        let caller = Some(Caller::for_tests(NETWORK));
        assert_eq!(
            failure_of(&dead, &Slot::Fresh, caller),
            ErrorCode::DeadLettered
        );
        let anonymous = envelope(Some("k"), seed());
        assert_eq!(
            failure_of(&anonymous, &Slot::Fresh, None),
            ErrorCode::Unauthorized
        );
    }

    #[test]
    fn references_outside_the_network_join_the_field_errors() {
        let heads = HashMap::new();
        let caller = Some(Caller::for_tests(NETWORK));
        let env = envelope(Some("k"), seed());
        let p = prepared(&env);
        assert!(matches!(
            decide(&p, &Slot::Fresh, caller, &ours(), &heads),
            Some(Ok((c, _))) if c.network_id().get() == NETWORK
        ));
        // The same county id in another network is no county of this caller's.
        let theirs = HashSet::from([InNetwork {
            id: COUNTY,
            network: Caller::for_tests(NETWORK + 1).network_id(),
        }]);
        let e = decide(&p, &Slot::Fresh, caller, &theirs, &heads)
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationFailed);
        assert!(e.fields.contains_key("street_county"));
        // Body errors and reference errors are reported together.
        let mut body = seed();
        body["email"] = "not an e-mail".into();
        let env = envelope(Some("k"), body);
        let p = prepared(&env);
        let e = decide(&p, &Slot::Fresh, caller, &theirs, &heads)
            .unwrap()
            .unwrap_err();
        assert!(e.fields.contains_key("street_county") && e.fields.contains_key("email"));
    }

    /// A committed `validation_failed` outcome of body `failed`, as a window reads it.
    fn stored_failure(failed: &Envelope) -> store::StoredOutcome {
        store::StoredOutcome {
            payload_hash: prepared(failed).hash.to_vec(),
            event: event::cloud_event(
                "urn:t",
                event::CASE_FAILED,
                "f",
                Some("k"),
                Utc::now(),
                Value::Null,
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
        let window = [&failed, &fixed, &failed, &fixed].map(prepared);
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

    #[test]
    fn followers_and_earlier_outcomes_are_not_decided_again() {
        let env = envelope(Some("k"), seed());
        let p = prepared(&env);
        let caller = Some(Caller::for_tests(NETWORK));
        let heads = HashMap::new();
        assert!(decide(&p, &Slot::Follower { first: 0 }, caller, &ours(), &heads).is_none());
    }
}
