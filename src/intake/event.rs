//! Outcome events as CloudEvents 1.0 in structured mode (`application/cloudevents+json`).
//!
//! An event is built once, inside the transaction that decides the outcome, and stored twice:
//! in the outbox (to be published) and beside the message key (to be re-published verbatim,
//! same id, when the key arrives again).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

pub use crate::domain::event::{Event, Resolution};
use crate::domain::matching::Candidate;

use crate::domain::error::IntakeError;
use crate::intake::trace::{TRACEPARENT, TRACESTATE, TraceContext};

/// The content type of every event body (the relay sets it on every publish).
pub use crate::outbox::relay::CONTENT_TYPE;

/// The CloudEvents `type` of a created case.
pub const CASE_CREATED: &str = "case.created";
/// The CloudEvents `type` of a failed intake.
pub const CASE_FAILED: &str = "case.failed";
/// The CloudEvents `type` of a failed intake that was resolved (a later attempt created its
/// case, or an operator dismissed it).
pub const INTAKE_RESOLVED: &str = "case.intake_resolved";
/// The CloudEvents `type` of an intake linked to an existing case (the network's duplicate
/// policy is `link`): no case was created; the key's outcome is that case.
pub const CASE_MATCHED: &str = "case.matched";
/// Every CloudEvents `type` the service publishes (each also the default routing key and the
/// AMQP `type` of its events): what tests/contract.rs holds docs/asyncapi.yaml to.
pub const EVENT_TYPES: [&str; 4] = [CASE_CREATED, CASE_FAILED, CASE_MATCHED, INTAKE_RESOLVED];

/// Identifies a later attempt of a failed intake on its events (attempt 2 is the first retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayInfo {
    pub attempt: i32,
    /// The failed intake this attempt retries; resolved in the attempt's transaction (`None`
    /// when a resent key's failed intake is gone, deleted by retention).
    pub failed_intake_id: Option<i64>,
    /// The event of the failure this attempt supersedes.
    pub supersedes: Option<Uuid>,
    pub how: Resolution,
}

/// Builds a CloudEvents envelope around `data`.
pub fn cloud_event(
    source: &str,
    event_type: &str,
    routing_key: &str,
    subject: Option<&str>,
    time: DateTime<Utc>,
    data: Value,
) -> Event {
    let id = Uuid::new_v4();
    let mut body = json!({
        "specversion": "1.0",
        "id": id.to_string(),
        "source": source,
        "type": event_type,
        "time": time.to_rfc3339_opts(SecondsFormat::Micros, true),
        "datacontenttype": "application/json",
        "data": data,
    });
    if let Some(subject) = subject {
        body["subject"] = Value::String(subject.to_owned());
    }
    Event {
        id,
        routing_key: routing_key.to_owned(),
        body,
    }
}

/// The `data` of a `case.failed` event.
pub fn failed_data(
    message_key: Option<&str>,
    error: &IntakeError,
    replay: Option<ReplayInfo>,
) -> Value {
    let mut data = json!({
        "message_key": message_key,
        "error": error,
    });
    add_replay(&mut data, replay);
    data
}

/// Adds the intake's W3C trace context as the CloudEvents distributed-tracing extension
/// attributes `traceparent` and `tracestate`. They are part of the stored event, so a
/// re-published event carries the trace of the intake that created it.
pub fn add_trace(event: &mut Event, trace: Option<&TraceContext>) {
    let Some(trace) = trace else { return };
    event.body[TRACEPARENT] = Value::String(trace.traceparent.clone());
    if let Some(state) = &trace.tracestate {
        event.body[TRACESTATE] = Value::String(state.clone());
    }
}

/// Marks an event's data as coming from a later attempt of a failed intake: its number, how
/// it came (`replayed`, `edited`, `resent`) and the failure event it supersedes.
pub fn add_replay(data: &mut Value, replay: Option<ReplayInfo>) {
    if let Some(replay) = replay {
        data["replay"] = json!({
            "replayed": true,
            "attempt": replay.attempt,
            "how": replay.how,
            "supersedes_event_id": replay.supersedes,
        });
    }
}

/// What a `case.intake_resolved` event says: which failure of which key ended, how, and the
/// case it came to (none for a dismissal). Ids and names only: no personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<'a> {
    pub message_key: Option<&'a str>,
    pub how: Resolution,
    /// The `case.failed` event of the failure that ended.
    pub failed_event_id: Uuid,
    pub attempt: i32,
    /// The outcome event of the attempt that resolved it.
    pub outcome_event_id: Option<Uuid>,
    pub case_id: Option<i64>,
    pub household_id: Option<i64>,
}

/// The case and household of a `case.created` or `case.matched` event (`None` for any other
/// event).
pub fn case_of(ev: &Event) -> Option<(i64, i64)> {
    let data = &ev.body["data"];
    // A created case's id is the CT/OI field `id` of its data; a matched one names the case.
    let id = match ev.body["type"].as_str()? {
        CASE_CREATED => &data["id"],
        CASE_MATCHED => &data["case_id"],
        _ => return None,
    };
    Some((id.as_i64()?, data["household_id"].as_i64()?))
}

/// The `data` of a `case.matched` event: the key, the existing case it was linked to and why,
/// and the other candidates (ids, rule names and scores only).
pub fn matched_data(
    message_key: Option<&str>,
    case_id: i64,
    household_id: i64,
    matched: &Candidate,
    others: &[Candidate],
) -> Value {
    json!({
        "message_key": message_key,
        "case_id": case_id,
        "household_id": household_id,
        "rules": matched.rules,
        "score": matched.score,
        "possible_duplicates": others,
    })
}

/// The `data` of a `case.intake_resolved` event.
pub fn resolved_data(r: &Resolved<'_>) -> Value {
    json!({
        "message_key": r.message_key,
        "resolution": r.how,
        "failed_event_id": r.failed_event_id,
        "attempt": r.attempt,
        "event_id": r.outcome_event_id,
        "case_id": r.case_id,
        "household_id": r.household_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::error::ErrorCode;

    #[test]
    fn cloud_event_has_the_cloudevents_attributes() {
        let time = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let e = cloud_event(
            "urn:x",
            CASE_CREATED,
            "case.created",
            Some("k1"),
            time,
            json!({"a": 1}),
        );
        assert_eq!(e.body["specversion"], "1.0");
        assert_eq!(e.body["id"], e.id.to_string());
        assert_eq!(e.body["type"], "case.created");
        assert_eq!(e.body["subject"], "k1");
        assert_eq!(e.body["time"], "2026-01-02T03:04:05.000000Z");
        assert_eq!(e.body["data"]["a"], 1);
    }

    #[test]
    fn failed_data_carries_code_and_replay() {
        let err = IntakeError::new(ErrorCode::Unauthorized, "no");
        let d = failed_data(
            Some("k"),
            &err,
            Some(ReplayInfo {
                attempt: 2,
                failed_intake_id: Some(1),
                supersedes: None,
                how: Resolution::Edited,
            }),
        );
        assert_eq!(d["error"]["code"], "unauthorized");
        assert_eq!(d["replay"]["attempt"], 2);
        assert_eq!(d["replay"]["how"], "edited");
        assert!(d["error"].get("fields").is_none());
    }

    /// The errors a hostile body produces reach the event's data with no SSN and no control
    /// character: from validation (an SSN or NUL as a key) and from decoding (a duplicated
    /// SSN-shaped key, which the decoder quotes).
    #[test]
    fn failed_data_of_hostile_bodies_holds_no_ssn_and_no_controls() {
        use crate::intake::decode::{BodyLimits, decode_body};
        let limits = BodyLimits {
            max_body_bytes: 4096,
            max_depth: 8,
        };
        let today = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let bodies: [&[u8]; 3] = [
            br#"{"first_name": "A", "last_name": "B", "123-45-6789": 1, "a\u0000\u001b": 2}"#,
            br#"{"first_name": "A", "last_name": "B", "ssn": {"x\u0000": "987654321"}}"#,
            br#"{"123-45-6789": 1, "123-45-6789": 2}"#,
        ];
        for body in bodies {
            let error = match decode_body(body, &limits) {
                Ok(map) => crate::intake::validate::validate(&map, today)
                    .map(|_| ())
                    .map_err(IntakeError::validation)
                    .expect_err("hostile body fails"),
                Err(e) => e,
            };
            let data = failed_data(Some("k"), &error, None).to_string();
            for leak in ["123-45", "12345", "98765", "\\u0000", "\\u001b"] {
                assert!(!data.contains(leak), "{leak} in {data}");
            }
        }
    }
}
