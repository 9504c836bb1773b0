//! The SQL boundary: every query of the service, by area. May call `domain` (the value types
//! it writes and reads: cases, SSNs, events, error codes) and `infra` only.
//!
//! - `ids`: `NetworkId` and the `(id, network)` pairs of references, so they cannot be swapped;
//! - `auth`: tokens, the one authentication query (`callers`) and the [`Caller`] proof it makes;
//! - `crypto`: sealing SSNs and payloads, SSN HMACs;
//! - `outcomes`: message keys and their outcomes; `cases`: households and cases;
//!   `failed`: failed intakes; `edits`: the audit of operators' edits of them; `outbox`: the
//!   events to publish and the relay's take and put back;
//! - `tenancy`: networks, groups, agents, API keys, counties; `rotate`: re-sealing under the
//!   active key; `retention`: deleting what is past its retention; `health`: whether the
//!   database answers and takes writes;
//! - `matching`: the duplicate policy, the match locks and candidate lookup, flagged pairs;
//! - `status`: what became of a message key (the status endpoint, the `status` command);
//! - `duplicates`: the flagged pairs, the duplicate policy and the match keys, for operators.
//!
//! The window's statements are set-based (one per table per window, arrays bound with
//! `unnest`), so that a window of a few hundred intakes costs about ten round trips.
//!
//! What the pipeline and the HTTP surface reach for is a [`Caller`] or the network one proved:
//! no statement they call reads or writes a row of another network. Operator commands
//! (`admin`) are trusted and act on the networks the operator names; their statements say so.
//!
//! The statements of the window, the authentication query and what the HTTP surface reads are
//! re-exported here, the paths the pipeline and the HTTP surface use.

pub mod auth;
pub mod cases;
pub mod crypto;
pub mod duplicates;
pub mod edits;
pub mod failed;
pub mod health;
pub mod ids;
pub mod matching;
pub mod outbox;
pub mod outcomes;
pub mod retention;
pub mod rotate;
pub mod status;
pub mod tenancy;
mod unnest;

pub use auth::{Caller, caller_of, callers};
pub use cases::{
    CaseRow, HouseholdState, NewHousehold, allocate_ids, check_deferred_constraints, insert_cases,
    insert_households, lock_households, unflag_heads, update_heads,
};
pub use failed::{FailedRow, ResolvedRow, insert_failed, resolve_failed};
pub use health::{Health, probe};
pub use ids::{HeadUpdate, InNetwork, NetworkId};
pub use outbox::{OutboxBody, OutboxRow, insert_outbox, outbox_backlog};
pub use outcomes::{
    ClaimedKey, OutcomeRow, StoredOutcome, claim_keys, forget_failed_outcomes, insert_outcomes,
    record_outcomes, replace_outcomes, stored_outcomes,
};
pub use status::outcome_in_network;
pub use tenancy::{County, counties, existing_counties};
