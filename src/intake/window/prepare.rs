//! Before the transaction: each envelope decoded, hashed and validated, and the ids
//! and match keys its body names read off. CPU work that needs no lock.

use chrono::NaiveDate;

use crate::domain::error::IntakeError;
use crate::intake::decode::{decode_body, payload_hash, too_large};
use crate::intake::duplicates::MatchInput;
use crate::intake::envelope::Envelope;
use crate::intake::validate::{Validated, validate};

use super::context::WindowContext;

/// The decision for one message before the database is consulted.
pub(super) struct Prepared<'a> {
    pub(super) env: &'a Envelope,
    pub(super) hash: [u8; 32],
    pub(super) body: Result<Validated, IntakeError>,
    /// The county and household ids the body names (when they are well-formed ids), checked
    /// against the caller's network even when other fields are invalid, so that a failed
    /// intake reports every field error at once.
    pub(super) county: Option<i64>,
    pub(super) household: Option<i64>,
    /// The keys a valid body is matched by (empty for an invalid one).
    pub(super) matching: MatchInput,
}

/// Decodes and validates outside the transaction: CPU work that needs no lock.
pub(super) fn prepare<'a>(
    env: &'a Envelope,
    ctx: &WindowContext,
    today: NaiveDate,
) -> Prepared<'a> {
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

/// True when an intake names a household (joins one): it is decided in the second phase.
pub(super) fn names_household(p: &Prepared) -> bool {
    p.household.is_some() || matches!(&p.body, Ok(v) if v.case.household.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::error::ErrorCode;
    use crate::intake::envelope::Oversize;
    use crate::intake::window::testing::{COUNTY, context, envelope, prepared, seed};

    #[test]
    fn a_valid_body_is_validated_and_keyed_for_matching() {
        let ctx = context();
        let env = envelope(Some("k"), seed());
        let p = prepared(&env, &ctx);
        assert!(p.body.is_ok());
        assert_eq!(p.county, Some(COUNTY));
        assert_eq!(p.household, None);
        assert!(p.matching.ssn_hmac.is_some() && p.matching.keys.name.is_some());
        assert!(!names_household(&p));
    }

    #[test]
    fn the_ids_an_invalid_body_names_are_still_read_off() {
        let ctx = context();
        let mut body = seed();
        body["email"] = "not an e-mail".into();
        body["household"] = 12.into();
        let env = envelope(Some("k"), body);
        let p = prepared(&env, &ctx);
        let error = p.body.as_ref().expect_err("invalid");
        assert_eq!(error.code, ErrorCode::ValidationFailed);
        assert_eq!((p.county, p.household), (Some(COUNTY), Some(12)));
        // Nothing to match an invalid body by; it still names a household.
        assert!(p.matching.ssn_hmac.is_none() && p.matching.keys.name.is_none());
        assert!(names_household(&p));
    }

    #[test]
    fn an_oversized_body_fails_by_its_published_size_and_hash() {
        let ctx = context();
        let mut env = envelope(Some("k"), seed());
        let published = Oversize {
            bytes: ctx.limits.max_body_bytes + 1,
            sha256: [7; 32],
        };
        env.oversize = Some(published);
        let p = prepared(&env, &ctx);
        let error = p.body.as_ref().expect_err("too large");
        assert_eq!(error.code, ErrorCode::PayloadTooLarge);
        assert_eq!(p.hash, [7; 32]);
        assert_eq!((p.county, p.household), (None, None));
    }

    #[test]
    fn the_same_body_has_the_same_hash_and_another_body_another() {
        let ctx = context();
        let a = envelope(Some("k"), seed());
        let mut other = seed();
        other["first_name"] = "Jane".into();
        let b = envelope(Some("k"), other);
        assert_eq!(prepared(&a, &ctx).hash, prepared(&a.clone(), &ctx).hash);
        assert_ne!(prepared(&a, &ctx).hash, prepared(&b, &ctx).hash);
    }
}
