//! Pure: what one intake comes to, from its slot, its caller, its body and the
//! references found — a case to create for a caller, or a failure with every field error.

use std::collections::{HashMap, HashSet};

use crate::domain::error::{ErrorCode, IntakeError};
use crate::intake::validate::Validated;
use crate::store;
use crate::store::auth::Caller;
use crate::store::ids::InNetwork;

use super::claim::Slot;
use super::prepare::Prepared;
use super::references::check_references;

/// What a fresh intake comes to: a case to create for a caller, or a failure.
pub(super) type Decision<'v> = Result<(Caller, &'v Validated), IntakeError>;

/// Decides one intake, without I/O: `None` when its slot is decided elsewhere (a follower or
/// a key with an earlier outcome).
pub(super) fn decide<'v>(
    p: &'v Prepared<'_>,
    slot: &Slot,
    caller: Option<Caller>,
    counties: &HashSet<InNetwork>,
    heads: &HashMap<i64, store::HouseholdState>,
) -> Option<Decision<'v>> {
    match (slot, caller) {
        (Slot::NoKey, _) => Some(Err(p.env.forced_failure().cloned().unwrap_or_else(|| {
            IntakeError::new(
                ErrorCode::MissingMessageKey,
                "the message_id property must hold a message key of 1 to 255 characters",
            )
        }))),
        (s, _) if !s.is_decided_here() => None,
        _ if p.env.forced_failure().is_some() => p.env.forced_failure().cloned().map(Err),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::envelope::Envelope;
    use crate::intake::window::context::WindowContext;
    use crate::intake::window::testing::{COUNTY, NETWORK, context, envelope, prepared, seed};

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
            &prepared(env, &context()),
            slot,
            caller,
            &ours(),
            &HashMap::new(),
        ))
    }

    /// The seed intake under `key`, its envelope marked to fail with `failure`.
    fn forced(key: Option<&str>, failure: IntakeError) -> Envelope {
        let mut env = envelope(key, seed());
        env.fail_with(failure);
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
        let ctx: WindowContext = context();
        let heads = HashMap::new();
        let caller = Some(Caller::for_tests(NETWORK));
        let env = envelope(Some("k"), seed());
        let p = prepared(&env, &ctx);
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
        let p = prepared(&env, &ctx);
        let e = decide(&p, &Slot::Fresh, caller, &theirs, &heads)
            .unwrap()
            .unwrap_err();
        assert!(e.fields.contains_key("street_county") && e.fields.contains_key("email"));
    }

    #[test]
    fn followers_and_earlier_outcomes_are_not_decided_again() {
        let ctx = context();
        let env = envelope(Some("k"), seed());
        let p = prepared(&env, &ctx);
        let caller = Some(Caller::for_tests(NETWORK));
        let heads = HashMap::new();
        assert!(decide(&p, &Slot::Follower { first: 0 }, caller, &ours(), &heads).is_none());
    }
}
