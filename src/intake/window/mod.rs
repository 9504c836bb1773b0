//! The spine of the service: a window of intakes processed in one transaction, as the steps
//! below, one module each.
//!
//! 1. `prepare`: decode, hash and validate each body, before the transaction (pure CPU work).
//! 2. `authenticate`: every distinct token in one query; then the possible-duplicate match
//!    locks and the candidate lookup (`intake::duplicates`), before any other lock.
//! 3. `claim`: each intake's slot for its message key (fresh, follower, a key with an earlier
//!    outcome, a resend, a superseded retry); a window that claims first takes its keys now.
//! 4. `references`: the counties and households the fresh intakes name, in their network.
//! 5. `decide` (pure): a case to create for a caller, or a failure with every field error.
//! 6. `place` (no I/O): the case in its household, or linked to an existing case; `phase`
//!    runs steps 5 and 6 over a set of intakes, and answers keys seen before.
//! 7. `resolve`: the failed intakes the window's retries resolved, and their announcements.
//! 8. `plan`: every write gathered in memory, flushed with one statement per table; the
//!    outcome rows last, which claims the keys of a window that claims at the end.
//!
//! Then commit (a key taken meanwhile by a concurrent window: roll back and run again,
//! claiming the keys first). A bad message never rolls back its neighbours: every per-message
//! problem is decided in memory and becomes that message's failed outcome. Only a database
//! error aborts the window, and the caller decides from its class what to do (retry, split,
//! hand back). `events` builds the events the steps queue; `outcome` is what the caller gets.

mod authenticate;
mod claim;
mod context;
mod decide;
mod events;
mod outcome;
mod phase;
mod place;
mod plan;
mod prepare;
mod references;
mod resolve;
mod sorted;
mod state;
#[cfg(test)]
mod testing;

pub use context::WindowContext;
pub use outcome::{Decided, Outcome};

use chrono::Utc;
use sqlx::PgPool;

use crate::intake::duplicates;
use crate::intake::envelope::Envelope;
use crate::store;

use self::authenticate::{authenticate, matchable};
use self::claim::{Claim, claim_keys};
use self::prepare::{Prepared, names_household, prepare};
use self::references::References;
use self::sorted::unique;
use self::state::{Phase, Written};

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
    let refs = References::find(prepared, &slots, &callers);
    let counties = store::existing_counties(&mut tx, &unique(refs.counties)).await?;
    let phase = Phase {
        ctx,
        prepared,
        slots: &slots,
        callers: &callers,
        counties: &counties,
        matches: &stored_matches,
        now,
    };
    let mut w = Written::new(prepared.len());
    phase.answer_superseded(&mut w);

    // Two phases. Intakes that create a household touch no existing household: they are
    // decided and their households and cases written first, and the deferred household
    // constraints checked for them, before any household lock is taken. Only then are the
    // households that other intakes name locked (FOR UPDATE, in id order) and those intakes
    // decided. Concurrent windows serialise on shared (hot) households for the second phase
    // only, which is what limits throughput (docs/benchmarks.md).
    let (locked, unlocked): (Vec<usize>, Vec<usize>) =
        (0..prepared.len()).partition(|&i| names_household(&prepared[i]));
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
    // Only a preview returns the events (the worker's windows do not need the copies).
    let decided = phase.decided(&w, finish == Finish::Rollback);
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
    Ok(Some(decided))
}
