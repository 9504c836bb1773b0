//! Possible duplicates within a window: each intake's candidates (the cases the database
//! holds, found with one lock statement and one query per window, and the cases planned
//! earlier in the same window) and what the caller network's policy makes of them.
//!
//! The rules and the score are `matching`'s; the statements `store::matching`'s. Nothing here
//! reads or reveals a case of another network, or another group's private case.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::PgConnection;

use crate::intake::matching::{self, Candidate, MatchKeys, Rule, RuleWeights, Scorer};
use crate::intake::validate::CaseInput;
use crate::store::auth::Caller;
use crate::store::ids::NetworkId;
use crate::store::matching::{DuplicatePolicy, Found, Probe};

/// What an intake is matched by: its blocking keys and its SSN's HMAC (computed before the
/// transaction, with the body's validation).
#[derive(Debug, Clone, Copy, Default)]
pub struct MatchInput {
    pub keys: MatchKeys,
    pub ssn_hmac: Option<[u8; 32]>,
}

impl MatchInput {
    pub fn of(case: &CaseInput, vault: &crate::store::crypto::Vault) -> Self {
        Self {
            keys: MatchKeys::of(case),
            ssn_hmac: matching::matchable_ssn(case).map(|d| vault.ssn_hmac(d)),
        }
    }

    /// Each key with its rule, as one comparable value (digests widened to 32 bytes).
    fn keys(&self) -> impl Iterator<Item = (Rule, [u8; 32])> + '_ {
        let widen = |k: i64| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&k.to_be_bytes());
            b
        };
        [
            self.ssn_hmac.map(|h| (Rule::Ssn, h)),
            self.keys.name.map(|k| (Rule::NameDob, widen(k))),
            self.keys
                .address
                .map(|k| (Rule::LastNameDobAddress, widen(k))),
        ]
        .into_iter()
        .flatten()
    }
}

/// The candidates the database holds for each probed intake, by the intake's index.
pub type Stored = HashMap<usize, Vec<Found>>;

/// Looks up the stored candidates of `intakes` (index, caller, input) whose network matches:
/// first the advisory locks of every key (sorted, so windows cannot deadlock on them), then,
/// in a statement of its own so that its snapshot sees what a window holding one of those
/// locks committed, the candidates of all intakes at once.
pub async fn look_up<'a>(
    tx: &mut PgConnection,
    intakes: impl Iterator<Item = (usize, Caller, &'a MatchInput)>,
) -> Result<Stored, sqlx::Error> {
    let mut probes = Vec::new();
    let mut index_of = Vec::new();
    let mut locks = Vec::new();
    for (i, caller, input) in intakes {
        if caller.duplicate_policy() == DuplicatePolicy::Off {
            continue;
        }
        let network = caller.network_id();
        let before = locks.len();
        locks.extend(
            input
                .keys()
                .map(|(rule, key)| matching::lock_key(network.get(), rule, &key)),
        );
        if locks.len() == before {
            continue;
        }
        probes.push(Probe {
            network_id: network,
            group_id: caller.group_id(),
            ssn_hmac: input.ssn_hmac,
            name: input.keys.name,
            address: input.keys.address,
        });
        index_of.push(i);
    }
    locks.sort_unstable();
    locks.dedup();
    crate::store::matching::lock_keys(tx, &locks).await?;
    let mut stored = Stored::new();
    for f in crate::store::matching::candidates(tx, &probes).await? {
        stored.entry(index_of[f.probe]).or_default().push(f);
    }
    Ok(stored)
}

/// A case planned earlier in the window, as a later intake may match it.
#[derive(Debug, Clone, Copy)]
struct Planned {
    case_id: i64,
    household_id: i64,
    group_id: i64,
    private: bool,
}

/// The cases planned so far in the window, by key: two intakes of one person in one window
/// match each other as they would in two.
#[derive(Debug, Default)]
pub struct InWindow {
    by_key: HashMap<(NetworkId, Rule, [u8; 32]), Vec<Planned>>,
}

impl InWindow {
    /// Adds a case the window plans to create.
    pub fn add(
        &mut self,
        caller: Caller,
        input: &MatchInput,
        case_id: i64,
        household_id: i64,
        private: bool,
    ) {
        let planned = Planned {
            case_id,
            household_id,
            group_id: caller.group_id(),
            private,
        };
        for (rule, key) in input.keys() {
            self.by_key
                .entry((caller.network_id(), rule, key))
                .or_default()
                .push(planned);
        }
    }
}

/// A candidate with the household it is in (a `link` outcome names it).
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub candidate: Candidate,
    pub household_id: i64,
}

/// The candidates of one intake, best first: the stored ones and those planned earlier in the
/// window, visible to `caller` (its network; another group's private case never), scored.
///
/// Households: an intake that joins household `h` is not matched with a member of `h` by the
/// address rule alone. Members of a household share a last name and street address, and twins
/// or other multiples share a date of birth too; by the same name (or SSN) it is the same
/// person added twice, and matches.
pub fn candidates(
    stored: &[Found],
    in_window: &InWindow,
    caller: Caller,
    input: &MatchInput,
    joins: Option<i64>,
) -> Vec<Match> {
    let mut by_case: BTreeMap<i64, (i64, BTreeSet<Rule>)> = BTreeMap::new();
    for f in stored {
        let entry = by_case
            .entry(f.case_id)
            .or_insert((f.household_id, BTreeSet::new()));
        entry.1.extend(f.rules.iter().copied());
    }
    for (rule, key) in input.keys() {
        let Some(planned) = in_window.by_key.get(&(caller.network_id(), rule, key)) else {
            continue;
        };
        for p in planned
            .iter()
            .filter(|p| !p.private || p.group_id == caller.group_id())
        {
            by_case
                .entry(p.case_id)
                .or_insert((p.household_id, BTreeSet::new()))
                .1
                .insert(rule);
        }
    }
    if let Some(h) = joins {
        by_case.retain(|_, (household, rules)| {
            !(*household == h && rules.iter().all(|r| *r == Rule::LastNameDobAddress))
        });
    }
    let mut matches: Vec<Match> = by_case
        .into_iter()
        .map(|(case_id, (household_id, rules))| {
            let rules: Vec<Rule> = rules.into_iter().collect();
            Match {
                candidate: Candidate {
                    case_id,
                    score: RuleWeights.score(&rules),
                    rules,
                },
                household_id,
            }
        })
        .collect();
    // Best score first; among equals the oldest case (the lowest id), the one a `link` keeps.
    matches.sort_by(|a, b| {
        b.candidate
            .score
            .total_cmp(&a.candidate.score)
            .then(a.candidate.case_id.cmp(&b.candidate.case_id))
    });
    matches.truncate(crate::store::matching::MAX_CANDIDATES as usize);
    matches
}

/// What the network's policy makes of an intake's candidates.
#[derive(Debug, PartialEq)]
pub enum Verdict<'m> {
    /// Matching is off: create, and the event says nothing about duplicates.
    Unchecked,
    /// Create the case; flag these pairs (none: no candidate). `overridden` when the sender
    /// created it past a `reject` or `link` policy.
    Create {
        flagged: &'m [Match],
        overridden: bool,
    },
    /// Fail `possible_duplicate`.
    Reject,
    /// No new case: the outcome is the best candidate.
    Link(&'m Match),
}

pub fn verdict(policy: DuplicatePolicy, overrides: bool, matches: &[Match]) -> Verdict<'_> {
    match (policy, matches.first()) {
        (DuplicatePolicy::Off, _) => Verdict::Unchecked,
        (DuplicatePolicy::Flag, _) | (_, None) => Verdict::Create {
            flagged: matches,
            overridden: false,
        },
        (_, Some(_)) if overrides => Verdict::Create {
            flagged: matches,
            overridden: true,
        },
        (DuplicatePolicy::Reject, Some(_)) => Verdict::Reject,
        (DuplicatePolicy::Link, Some(best)) => Verdict::Link(best),
    }
}
