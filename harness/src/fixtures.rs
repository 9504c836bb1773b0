//! The seed's example "create a case" body (CharityTracker's page, with a real e-mail address):
//! the one fixture the unit tests, integration tests, benchmark and fault suite start from. The
//! body lives in `harness/fixtures/seed-body.json`, which the service's unit tests read too.

use serde_json::Value;

/// The example body as stored.
pub const SEED_BODY_JSON: &str = include_str!("../fixtures/seed-body.json");

/// The example body with `street_county` set to `county`; no `household`, not head.
pub fn seed_body(county: i64) -> Value {
    let mut body: Value = serde_json::from_str(SEED_BODY_JSON).expect("the fixture is JSON");
    body["street_county"] = county.into();
    body
}
