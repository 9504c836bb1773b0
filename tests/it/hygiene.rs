//! Body hygiene over the real broker and a private database: SSNs in any place of a body never
//! reach an error, an event, `failed_intakes` or `failed show`; a NUL in a key is a field error
//! decided on the first delivery; control characters are escaped wherever a failed intake is
//! shown.

use case_intake::admin::failed;
use case_intake::domain::error::ErrorCode;
use case_intake_harness::support::TestEnv;
use case_intake_harness::testkit::{
    broker_and_worker, failed as failed_code, failed_with_key, list_failed, process_as, publish_as,
    to_bytes,
};
use serde_json::{Value, json};

/// SSNs of the test body, each in a different place; no two share their first five digits.
const SSN_UNDER_SSN: &str = "771-52-3849";
const SSN_NESTED: &str = "662 48 1937";
const SSN_AS_KEY: &str = "583-61-2946";
const SSN_BARE_NUMBER: u64 = 494_735_821;

/// The first five digits of every SSN of the body, in each way they could be written: none of
/// them may appear anywhere (the last four are kept by design).
fn ssn_prefixes() -> Vec<String> {
    let mut out = Vec::new();
    for ssn in [
        SSN_UNDER_SSN.to_owned(),
        SSN_NESTED.to_owned(),
        SSN_AS_KEY.to_owned(),
        SSN_BARE_NUMBER.to_string(),
    ] {
        let d: String = ssn.chars().filter(char::is_ascii_digit).collect();
        let (area, rest) = d.split_at(3);
        let group = &rest[..2];
        out.extend([
            format!("{area}{group}"),
            format!("{area}-{group}"),
            format!("{area} {group}"),
        ]);
    }
    out
}

fn assert_no_ssn(what: &str, text: &str) {
    for prefix in ssn_prefixes() {
        assert!(!text.contains(&prefix), "{what} holds {prefix:?}: {text}");
    }
}

/// A control, bidi or invisible character as it would reach a terminal.
fn assert_no_raw_controls(what: &str, text: &str) {
    let bad = text
        .chars()
        .find(|&c| (c.is_control() && c != '\n') || case_intake::infra::redact::is_invisible(c));
    assert!(bad.is_none(), "{what} holds {bad:?}: {text}");
}

#[tokio::test]
async fn ssns_anywhere_in_a_body_are_masked_in_the_event_the_stored_error_and_failed_show() {
    let env = TestEnv::new().await;
    let (mut broker, worker) = broker_and_worker(&env).await;

    let mut body = json!({
        "first_name": "Ann",
        "last_name": "Lee",
        "ssn": SSN_UNDER_SSN,
        "case_notes": {"history": [{"text": format!("old id {SSN_NESTED}")}]},
        "legacy_id": SSN_BARE_NUMBER,
    });
    body[SSN_AS_KEY] = json!(1);
    body["\u{1b}[31mX\u{7}"] = json!("\u{9b}2J\u{202e}");
    let (key, correlation) = (Some("hygiene-ssn"), Some("corr-hygiene"));
    publish_as(&broker, &env.a.token, key, correlation, &to_bytes(&body)).await;

    // The published event.
    let (routing_key, _, event) = broker.next_event_for("hygiene-ssn").await;
    assert_eq!(routing_key, "case.failed");
    let error = &event["data"]["error"];
    assert_eq!(error["code"], "validation_failed");
    let fields = error["fields"].as_object().unwrap();
    for name in [
        "ssn",
        "case_notes",
        "legacy_id",
        "*****2946",
        r"\u{1b}[31mX\u{7}",
    ] {
        assert_eq!(fields[name], json!(["is not a recognized field"]), "{name}");
    }
    let published = event.to_string();
    assert_no_ssn("the case.failed event", &published);
    worker.stop().await;

    // The stored row, read as text exactly as PostgreSQL holds it.
    let (stored_error, stored_event): (String, String) = sqlx::query_as(
        "SELECT f.error::text, o.event::text
           FROM failed_intakes f JOIN intake_outcomes o USING (network_id, message_key)
          WHERE f.message_key = 'hygiene-ssn'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_no_ssn("failed_intakes.error", &stored_error);
    assert_no_ssn("intake_outcomes.event", &stored_event);

    // `failed show` prints exactly this JSON; `failed list --json` the listed rows.
    let vault = case_intake::store::crypto::Vault::from_settings(&env.settings.crypto).unwrap();
    let shown = failed::show(&env.pool, &vault, "hygiene-ssn", None)
        .await
        .unwrap();
    assert_eq!(shown.len(), 1);
    let payload = &shown[0].payload;
    assert_eq!(payload["ssn"], "*****3849");
    assert_eq!(
        payload["case_notes"]["history"][0]["text"],
        "old id *****1937"
    );
    assert_eq!(payload["legacy_id"], "*****5821");
    assert_eq!(payload["*****2946"], 1);
    assert_eq!(payload[r"\u{1b}[31mX\u{7}"], r"\u{9b}2J\u{202e}");
    let show_output = serde_json::to_string_pretty(&shown).unwrap();
    assert_no_ssn("failed show", &show_output);
    assert_no_raw_controls("failed show", &show_output);
    // serde_json would write ESC as \u001b, still an SSN-free but unreadable form: the
    // redaction escaped it first.
    assert!(!show_output.contains(r"\u001b"), "{show_output}");

    let listed = list_failed(&env, &failed_with_key("hygiene-ssn")).await;
    let list_output = serde_json::to_string_pretty(&listed.rows).unwrap();
    assert_no_ssn("failed list", &list_output);
    assert_no_raw_controls("failed list", &list_output);
    assert_eq!(
        listed.rows[0].correlation_id.as_deref(),
        Some("corr-hygiene")
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_nul_in_an_unknown_field_name_fails_validation_on_the_first_delivery() {
    let env = TestEnv::new().await;
    let body = json!({
        "first_name": "Ann",
        "last_name": "Lee",
        "x\u{0}y": 1,
        "deep": {"a": [{"b\u{0}": "\u{0}"}]},
    });

    // One window, one attempt: decided as a validation failure (before, the error's NUL made
    // the outcome row unstorable and the window failed, delivery after delivery).
    let out = process_as(&env, "nul-direct", &env.a, &body).await;
    assert_eq!(failed_code(&out), ErrorCode::ValidationFailed);

    // Over the broker: the first delivery gets the failed event, and only one failure is kept.
    let (mut broker, worker) = broker_and_worker(&env).await;
    publish_as(
        &broker,
        &env.a.token,
        Some("nul-key"),
        None,
        &to_bytes(&body),
    )
    .await;
    let (routing_key, _, event) = broker.next_event_for("nul-key").await;
    worker.stop().await;
    assert_eq!(routing_key, "case.failed");
    let nul = "must not contain NUL characters (U+0000), in keys or values at any depth";
    assert_eq!(
        event["data"]["error"],
        json!({
            "code": "validation_failed",
            "message": "2 fields failed validation",
            "fields": {
                r"x\u{0}y": ["is not a recognized field", nul],
                "deep": ["is not a recognized field", nul],
            }
        })
    );
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT error_code, attempts FROM failed_intakes WHERE message_key = 'nul-key'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(rows, [("validation_failed".to_owned(), 1)]);
    let stored: Value =
        sqlx::query_scalar("SELECT error FROM failed_intakes WHERE message_key = 'nul-key'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(stored, event["data"]["error"]);
    env.cleanup().await;
}
