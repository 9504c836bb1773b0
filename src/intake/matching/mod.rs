//! Possible-duplicate matching: the keys a person is indexed and probed by, and how the rules
//! that matched a candidate are scored. Pure: the window looks candidates up by these keys in
//! one statement (`store::matching`) and decides by the caller network's policy.
//!
//! Rules are deterministic and each is reported by name ([`Rule`]). A rule is an equality of
//! one *blocking key*, computed from normalized values (`normalize`, `nicknames`) and never
//! from a placeholder (`placeholders`). How matched rules become a score is the [`Scorer`]
//! trait's business (`score`), so that a probabilistic model can replace the weights without
//! touching the lookup (docs/duplicates.md).

pub mod nicknames;
pub mod normalize;
pub mod placeholders;
pub mod score;

use chrono::NaiveDate;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::intake::validate::CaseInput;

pub use score::{RuleWeights, Scorer};

/// A deterministic matching rule, as events and the `duplicates` commands name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The same SSN (compared through its HMAC; placeholders never match).
    Ssn,
    /// The same first and last name (normalized, nicknames and swapped names considered) and
    /// the same date of birth.
    NameDob,
    /// The same last name and date of birth at the same normalized street address.
    LastNameDobAddress,
}

impl Rule {
    /// Every rule, in the order they are reported.
    pub const ALL: [Rule; 3] = [Rule::Ssn, Rule::NameDob, Rule::LastNameDobAddress];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Ssn => "ssn",
            Rule::NameDob => "name_dob",
            Rule::LastNameDobAddress => "last_name_dob_address",
        }
    }
}

/// The blocking keys of one person: `cases.match_name` and `cases.match_address` (and the
/// SSN's HMAC, which the vault computes). `None` where a rule cannot apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MatchKeys {
    pub name: Option<i64>,
    pub address: Option<i64>,
}

impl MatchKeys {
    /// The keys of a case as validated: the name rule needs both names and a date of birth
    /// that is not a placeholder; the address rule the last name, that date and a street
    /// address that normalizes to something.
    pub fn of(case: &CaseInput) -> Self {
        Self::from_parts(
            &case.first_name,
            &case.last_name,
            case.date_of_birth,
            case.street_address.as_deref(),
        )
    }

    /// The keys of a person from the stored columns (also used to index cases written before
    /// matching existed).
    pub fn from_parts(
        first_name: &str,
        last_name: &str,
        date_of_birth: Option<NaiveDate>,
        street_address: Option<&str>,
    ) -> Self {
        let Some(dob) = date_of_birth.filter(|d| !placeholders::is_placeholder_dob(*d)) else {
            return Self::default();
        };
        let first = nicknames::canonical(&normalize::name(first_name));
        let last = nicknames::canonical(&normalize::name(last_name));
        let name = (!first.is_empty() && !last.is_empty()).then(|| {
            // Swapped first and last names give the same key: the pair is sorted.
            let (a, b) = if first <= last {
                (&first, &last)
            } else {
                (&last, &first)
            };
            digest("name_dob", &[&dob_text(dob), a, b])
        });
        let street = street_address
            .map(normalize::street_address)
            .unwrap_or_default();
        let surname = normalize::name(last_name);
        let address = (!street.is_empty() && !surname.is_empty()).then(|| {
            digest(
                "last_name_dob_address",
                &[&dob_text(dob), &surname, &street],
            )
        });
        Self { name, address }
    }
}

/// The SSN digits a case may be matched by: `None` for a placeholder.
pub fn matchable_ssn(case: &CaseInput) -> Option<&str> {
    let ssn = case.ss_number.as_ref()?;
    (!placeholders::is_placeholder_ssn(ssn.digits())).then(|| ssn.digits())
}

fn dob_text(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// A stable 64-bit digest of a rule's normalized parts (SHA-256, first 8 bytes): the same on
/// every machine and release, since stored keys are compared with new ones.
pub fn digest(rule: &str, parts: &[&str]) -> i64 {
    let mut h = Sha256::new();
    h.update(b"case-intake/match/");
    h.update(rule.as_bytes());
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let bytes: [u8; 32] = h.finalize().into();
    i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// The advisory-lock key of one blocking key in one network: concurrent windows that could
/// match the same person take the same lock (`store::matching::lock_keys`) before looking.
pub fn lock_key(network: i64, rule: Rule, key: &[u8]) -> i64 {
    let mut h = Sha256::new();
    h.update(b"case-intake/match-lock/");
    h.update(network.to_be_bytes());
    h.update(rule.as_str().as_bytes());
    h.update(key);
    let bytes: [u8; 32] = h.finalize().into();
    i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// One existing case an intake may duplicate: its id, the rules that matched and the score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub case_id: i64,
    pub rules: Vec<Rule>,
    pub score: f64,
}
