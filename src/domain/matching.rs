//! The value types of possible-duplicate matching that cases, events and the store share: the
//! rules by name, a person's blocking keys, and a candidate found. How they are computed is
//! `intake::matching`.

use serde::Serialize;

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

/// One existing case an intake may duplicate: its id, the rules that matched and the score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub case_id: i64,
    pub rules: Vec<Rule>,
    pub score: f64,
}
