//! What an intake of a run is (a new household, a join, a head replacement, an invalid one,
//! a failure fixed and resent, a race of two bodies, a resend racing an operator's retry) and
//! how its body is built from the seed fixture.

use serde::Serialize;
use serde_json::{Value, json};

use crate::fixtures::seed_body;

/// What an intake is meant to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    NewHousehold,
    Join,
    ReplaceHead,
    Invalid,
    /// Published invalid, then (once its failure is in) with the corrected body, same key.
    Resent,
    /// Two different valid bodies published at once under one key.
    Race,
    /// Like `Resent`, with an operator's replay of the failure selected before the correction
    /// is published and run after the workers committed it (`retry_race`).
    ReplayRace,
    /// Like `ReplayRace`, with an operator's `failed edit` as the retry.
    EditRace,
    /// A new key whose body is a person already on file, written differently (a possible
    /// duplicate for matching; still a new case unless the network's policy says otherwise).
    SamePerson,
}

impl Kind {
    /// Whether the intake must be created (else it must fail validation).
    pub fn valid(self) -> bool {
        self != Kind::Invalid
    }

    /// Whether body `n` of the key's bodies (0 first) is valid: a resent key's first body is
    /// the invalid one, its second the correction; a race's two bodies are both valid.
    pub fn body_valid(self, n: usize) -> bool {
        match self {
            Kind::Invalid => false,
            Kind::Resent | Kind::ReplayRace | Kind::EditRace => n > 0,
            _ => true,
        }
    }

    /// Whether the key is published with more than one body.
    pub fn several_bodies(self) -> bool {
        matches!(
            self,
            Kind::Resent | Kind::Race | Kind::ReplayRace | Kind::EditRace
        )
    }

    /// The name reports use (the serialized one).
    pub fn name(self) -> &'static str {
        match self {
            Kind::NewHousehold => "new_household",
            Kind::Join => "join",
            Kind::ReplaceHead => "replace_head",
            Kind::Invalid => "invalid",
            Kind::Resent => "resent",
            Kind::Race => "race",
            Kind::ReplayRace => "replay_race",
            Kind::EditRace => "edit_race",
            Kind::SamePerson => "person",
        }
    }
}

/// What makes an invalid intake invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    MissingLastName,
    ShortZipCode,
}

/// The seed's body in `county` with its own first name, as head or not, naming `household`
/// when it joins one.
pub fn intake_body(county: i64, first_name: &str, head: bool, household: Option<i64>) -> Value {
    let mut body = seed_body(county);
    body["first_name"] = json!(first_name);
    body["head_of_household"] = json!(head);
    if let Some(h) = household {
        body["household"] = json!(h);
    }
    body
}

/// Makes `body` fail validation.
pub fn spoil(body: &mut Value, flaw: Flaw) {
    match flaw {
        Flaw::MissingLastName => {
            body.as_object_mut().map(|b| b.remove("last_name"));
        }
        Flaw::ShortZipCode => body["street_zip_code"] = "1234".into(),
    }
}
