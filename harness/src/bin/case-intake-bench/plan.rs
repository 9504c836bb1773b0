//! The measured messages: drawn by the mix from a seed, each a made-up person of its own unless it
//! is meant to repeat one.

use std::sync::Arc;

use case_intake_harness::kinds;
use case_intake_harness::kinds::Flaw;
use case_intake_harness::kinds::Kind;
use case_intake_harness::people::Person;
use case_intake_harness::publisher::Outgoing;
use rand::Rng;
use rand::rngs::StdRng;

use crate::Ctx;
use crate::phases::Phase;

/// One message to publish.
#[derive(Clone)]
pub struct Msg {
    pub key: Arc<str>,
    pub body: Arc<[u8]>,
    /// For a duplicate: the kind of the message it repeats.
    pub kind: Kind,
    /// The made-up person of the body (`people::Person::of`); for an invalid intake, none.
    pub person: Option<u64>,
    /// An identical re-publication of an earlier message.
    pub duplicate: bool,
}

impl Outgoing for Msg {
    fn key(&self) -> &str {
        &self.key
    }
    fn body(&self) -> &[u8] {
        &self.body
    }
}

impl Msg {
    /// The name of the share of the mix this message belongs to.
    pub fn mix_name(&self) -> &'static str {
        if self.duplicate {
            "duplicate"
        } else {
            self.kind.name()
        }
    }
}

/// A valid body (the seed's example) of made-up person `n`, head of a new household or not.
pub fn body_of(n: u64, county: i64, household: Option<i64>, head: bool) -> serde_json::Value {
    let mut body = kinds::intake_body(county, "", head, household);
    Person::of(n).apply(&mut body);
    body
}

pub fn msg(key: String, body: &serde_json::Value, kind: Kind, person: Option<u64>) -> Msg {
    Msg {
        key: key.into(),
        body: serde_json::to_vec(body).unwrap_or_default().into(),
        kind,
        person,
        duplicate: false,
    }
}

/// Where a phase's messages come from: the households to join, and the made-up people.
pub struct Source<'a> {
    pub households: &'a [i64],
    /// Person number of the phase's first measured message (message `i` is `people0 + i`).
    pub people0: u64,
    /// People whose case the phase (or the preload) created: the `person` kind's originals.
    pub on_file: Vec<u64>,
}

/// The measured messages, by default ~60% new households, ~20% joins, ~13% head replacements
/// on the hot households, ~2% invalid, ~5% identical re-publications of an earlier key; with
/// `person=P`, P% new keys for a person already on file.
pub fn plan(ctx: &Ctx<'_>, phase: &Phase, rng: &mut StdRng, source: &mut Source<'_>) -> Vec<Msg> {
    let mut msgs: Vec<Msg> = Vec::with_capacity(ctx.args.count);
    for _ in 0..ctx.args.count {
        let m = plan_one(ctx, phase, rng, source, &msgs);
        if m.kind.valid()
            && m.kind != Kind::SamePerson
            && !m.duplicate
            && let Some(p) = m.person
        {
            source.on_file.push(p);
        }
        msgs.push(m);
    }
    msgs
}

/// Message `earlier.len()` of the measured phase, drawn by the mix.
pub fn plan_one(
    ctx: &Ctx<'_>,
    phase: &Phase,
    rng: &mut StdRng,
    source: &Source<'_>,
    earlier: &[Msg],
) -> Msg {
    let i = earlier.len();
    let households = source.households;
    let counties = &ctx.net.county_ids;
    let hot = &households[..ctx.args.hot.min(households.len())];
    let key = format!("bench-{}-{}-{i}", ctx.id, phase.index);
    let county = counties[rng.random_range(0..counties.len())];
    // A person of their own, distinct from every other of the run and of the preload.
    let person = source.people0 + i as u64;
    let roll: f64 = rng.random::<f64>() * 100.0;
    let mix = ctx.args.mix;
    let new_household = |key: String| {
        msg(
            key,
            &body_of(person, county, None, true),
            Kind::NewHousehold,
            Some(person),
        )
    };
    if roll < mix.duplicate && i > 0 {
        let original = earlier[rng.random_range(0..i)].clone();
        Msg {
            duplicate: true,
            ..original
        }
    } else if roll < mix.duplicate + mix.person {
        match same_person(ctx, rng, &source.on_file) {
            Some(p) => {
                let mut body = kinds::intake_body(county, "", true, None);
                Person::of(p).apply_varied(&mut body, rng.random());
                msg(key, &body, Kind::SamePerson, Some(p))
            }
            None => new_household(key),
        }
    } else if roll < mix.duplicate + mix.person + mix.invalid {
        let mut body = body_of(person, county, None, true);
        let flaw = if i.is_multiple_of(2) {
            Flaw::MissingLastName
        } else {
            Flaw::ShortZipCode
        };
        kinds::spoil(&mut body, flaw);
        msg(key, &body, Kind::Invalid, None)
    } else if roll < mix.duplicate + mix.person + mix.invalid + mix.replace {
        let h = hot[rng.random_range(0..hot.len())];
        let body = body_of(person, county, Some(h), true);
        msg(key, &body, Kind::ReplaceHead, Some(person))
    } else if roll < mix.duplicate + mix.person + mix.invalid + mix.replace + mix.join {
        let h = households[rng.random_range(0..households.len())];
        let body = body_of(person, county, Some(h), false);
        msg(key, &body, Kind::Join, Some(person))
    } else {
        new_household(key)
    }
}

/// A person already on file for the `person` kind: preloaded or created earlier in the
/// phase, half and half when both exist.
pub fn same_person(ctx: &Ctx<'_>, rng: &mut StdRng, on_file: &[u64]) -> Option<u64> {
    let pre = ctx.preloaded;
    let preloaded = pre.count > 0 && (on_file.is_empty() || rng.random_bool(0.5));
    if preloaded {
        Some(pre.first_person + rng.random_range(0..pre.count))
    } else if on_file.is_empty() {
        None
    } else {
        Some(on_file[rng.random_range(0..on_file.len())])
    }
}
