//! Property tests: no body, however broken, makes decoding or validation panic, and every
//! failure carries one of the stable error codes.

use case_intake::domain::error::{ALL_CODES, ErrorCode, IntakeError};
use case_intake::intake::decode::{BodyLimits, decode_body, payload_hash};
use case_intake::intake::validate::{KNOWN_FIELDS, READ_ONLY_FIELDS, validate};
use chrono::NaiveDate;
use proptest::prelude::*;
use serde_json::{Map, Value};

const LIMITS: BodyLimits = BodyLimits {
    max_body_bytes: 64 * 1024,
    max_depth: 32,
};

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 6, 15).unwrap()
}

/// Runs a body through the whole pure pipeline and returns the failure, if any.
fn intake(bytes: &[u8]) -> Result<(), IntakeError> {
    let map = decode_body(bytes, &LIMITS)?;
    let _ = payload_hash(bytes, Some(&map));
    validate(&map, today()).map_err(IntakeError::validation)?;
    Ok(())
}

fn assert_well_formed(e: &IntakeError) {
    assert!(ALL_CODES.contains(&e.code));
    assert_eq!(ErrorCode::parse(e.code.as_str()), Some(e.code));
    assert!(!e.message.is_empty());
    match e.code {
        ErrorCode::ValidationFailed => {
            assert!(!e.fields.is_empty());
            assert!(e.fields.values().all(|msgs| !msgs.is_empty()));
        }
        ErrorCode::MalformedJson | ErrorCode::PayloadTooLarge => assert!(e.fields.is_empty()),
        other => panic!("decode/validate produced unexpected code {other}"),
    }
}

/// Keys a body is drawn from: every accepted and read-only field, and two unknown ones.
fn field_names() -> Vec<&'static str> {
    let unknown = ["unknown", ""];
    KNOWN_FIELDS
        .iter()
        .chain(&READ_ONLY_FIELDS)
        .chain(&unknown)
        .copied()
        .collect()
}

/// Arbitrary JSON values, biased towards the shapes the validators look at.
fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (0i64..100_000_000, 0u32..4).prop_map(|(n, d)| {
            let text = format!("{n}e-{d}");
            serde_json::from_str(&text).unwrap_or(Value::Null)
        }),
        ".*".prop_map(Value::from),
        "[0-9-]{0,12}".prop_map(Value::from),
        "[ A-Za-z0-9@.+_-]{0,20}".prop_map(Value::from),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{0,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_body() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(prop::sample::select(field_names()), arb_value(), 0..12)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

proptest! {
    // No failure persistence: regressions files would land in the tree unasked.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = intake(&bytes) {
            assert_well_formed(&e);
        }
        let _ = payload_hash(&bytes, None);
    }

    #[test]
    fn json_ish_text_never_panics(text in r#"[\[\]{}":,0-9a-z_ .\\eE+-]{0,200}"#) {
        if let Err(e) = intake(text.as_bytes()) {
            assert_well_formed(&e);
        }
    }

    #[test]
    fn arbitrary_bodies_validate_or_fail_cleanly(body in arb_body()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        // Serialised maps have no duplicate keys and nest at most 5 deep, so they always decode
        // back, with the same keys (floats may differ in the last bit: serde_json's default
        // float parser is not exactly round-trip).
        let decoded = decode_body(&bytes, &LIMITS);
        prop_assert!(decoded.is_ok(), "{:?}", decoded.err());
        prop_assert!(decoded.unwrap().keys().eq(body.keys()));
        if let Err(e) = intake(&bytes) {
            assert_well_formed(&e);
        }
        // A failed validation always says which fields failed.
        if let Err(fields) = validate(&body, today()) {
            prop_assert!(!fields.is_empty());
        }
    }

    #[test]
    fn hash_is_independent_of_formatting(body in arb_body()) {
        let compact = serde_json::to_vec(&body).unwrap();
        let pretty = serde_json::to_vec_pretty(&body).unwrap();
        let a = decode_body(&compact, &LIMITS).unwrap();
        let b = decode_body(&pretty, &LIMITS).unwrap();
        prop_assert_eq!(payload_hash(&compact, Some(&a)), payload_hash(&pretty, Some(&b)));
    }
}

#[test]
fn deeply_nested_input_is_malformed_not_a_crash() {
    let limits = BodyLimits {
        max_body_bytes: 1 << 20,
        max_depth: 32,
    };
    for body in [
        "[".repeat(100_000),
        "{\"a\":".repeat(100_000),
        format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000)),
    ] {
        let e = decode_body(body.as_bytes(), &limits).unwrap_err();
        assert_eq!(e.code, ErrorCode::MalformedJson);
    }
}

#[test]
fn nesting_past_serde_jsons_own_limit_is_malformed_json() {
    // A generous max_depth hands the body to serde_json, whose recursion limit (128) then applies.
    let limits = BodyLimits {
        max_body_bytes: 1 << 20,
        max_depth: 10_000,
    };
    let body = format!("{{\"a\":{}1{}}}", "[".repeat(5_000), "]".repeat(5_000));
    let e = decode_body(body.as_bytes(), &limits).unwrap_err();
    assert_eq!(e.code, ErrorCode::MalformedJson);
}
