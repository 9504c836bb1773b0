//! Outcome events as CloudEvents 1.0 in structured mode (`application/cloudevents+json`).
//!
//! Each kind's data is a typed struct; `build` is the one place an event is made (id, head,
//! data, trace context) and serialized. An event is built once, inside the transaction that
//! decides the outcome, and stored twice: in the outbox (to be published) and beside the
//! message key (to be re-published verbatim, same id, when the key arrives again).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::domain::case::CaseInput;
use crate::domain::error::IntakeError;
pub use crate::domain::event::{Event, Resolution};
use crate::domain::matching::{Candidate, Rule};
use crate::intake::trace::TraceContext;
use crate::intake::validate::Warning;
use crate::store::CaseRow;

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

/// What every event carries besides its data: where it comes from and goes, the message key it
/// is about (its CloudEvents `subject`), when it happened, and the trace context of the intake
/// that caused it (the CloudEvents distributed-tracing attributes `traceparent` and
/// `tracestate`: part of the stored event, so a re-published event carries the trace of the
/// intake that created it).
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub source: &'a str,
    pub routing_key: &'a str,
    pub subject: Option<&'a str>,
    pub time: DateTime<Utc>,
    pub trace: Option<&'a TraceContext>,
}

/// A CloudEvents 1.0 event in structured mode, as it is serialized.
#[derive(Serialize)]
struct CloudEvent<'a, D> {
    specversion: &'static str,
    id: Uuid,
    source: &'a str,
    #[serde(rename = "type")]
    event_type: &'static str,
    time: String,
    datacontenttype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    data: &'a D,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
}

/// The one place an event is built: a fresh id, the head's attributes and `data`, serialized
/// once into the body that is stored and published.
fn build<D: Serialize>(head: Head<'_>, event_type: &'static str, data: &D) -> Event {
    let id = Uuid::new_v4();
    let event = CloudEvent {
        specversion: "1.0",
        id,
        source: head.source,
        event_type,
        time: head.time.to_rfc3339_opts(SecondsFormat::Micros, true),
        datacontenttype: "application/json",
        subject: head.subject,
        data,
        traceparent: head.trace.map(|t| t.traceparent.as_str()),
        tracestate: head.trace.and_then(|t| t.tracestate.as_deref()),
    };
    // The data types hold strings, numbers, booleans, ids and lists of them: serializing one
    // into a JSON value cannot fail.
    let body = serde_json::to_value(&event).expect("an event serializes to JSON");
    Event {
        id,
        routing_key: head.routing_key.to_owned(),
        body,
    }
}

/// A `case.created` event.
pub fn created(head: Head<'_>, data: &CreatedData<'_>) -> Event {
    build(head, CASE_CREATED, data)
}

/// A `case.failed` event.
pub fn failed(head: Head<'_>, data: &FailedData<'_>) -> Event {
    build(head, CASE_FAILED, data)
}

/// A `case.matched` event.
pub fn matched(head: Head<'_>, data: &MatchedData<'_>) -> Event {
    build(head, CASE_MATCHED, data)
}

/// A `case.intake_resolved` event.
pub fn resolved(head: Head<'_>, data: &Resolved<'_>) -> Event {
    build(head, INTAKE_RESOLVED, data)
}

/// How an event's data marks a later attempt of a failed intake: its number, how it came
/// (`replayed`, `edited`, `resent`) and the failure event it supersedes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ReplayData {
    replayed: bool,
    attempt: i32,
    how: Resolution,
    supersedes_event_id: Option<Uuid>,
}

impl From<ReplayInfo> for ReplayData {
    fn from(r: ReplayInfo) -> Self {
        Self {
            replayed: true,
            attempt: r.attempt,
            how: r.how,
            supersedes_event_id: r.supersedes,
        }
    }
}

/// The stored case as `case.created` shows it: every CT/OI field, the SSN masked, and the
/// fields the system sets.
#[derive(Debug, Serialize)]
pub struct CaseData<'a> {
    id: i64,
    first_name: &'a str,
    middle_name: Option<&'a str>,
    last_name: &'a str,
    suffix: Option<&'a str>,
    nickname: Option<&'a str>,
    date_of_birth: Option<String>,
    email: Option<&'a str>,
    head_of_household: bool,
    mailing_address: Option<&'a str>,
    mailing_apt_number: Option<&'a str>,
    mailing_city: Option<&'a str>,
    mailing_state: Option<&'a str>,
    mailing_zip_code: Option<&'a str>,
    ss_number: Option<String>,
    street_address: Option<&'a str>,
    street_apt_number: Option<&'a str>,
    street_city: Option<&'a str>,
    street_state: Option<&'a str>,
    street_zip_code: Option<&'a str>,
    street_county: Option<i64>,
    yearly_expenses: Option<Value>,
    yearly_income: Option<Value>,
    deceased: bool,
    private: bool,
    household: i64,
    roi_exp_date: (),
    entry_agent: i64,
    mod_agent: i64,
    group: i64,
    import_id: (),
    created_at: String,
    updated_at: String,
}

impl<'a> CaseData<'a> {
    /// Case `c` as written in `row`.
    pub fn of(row: &CaseRow, c: &'a CaseInput) -> Self {
        let ts = row.created_at.to_rfc3339_opts(SecondsFormat::Micros, true);
        Self {
            id: row.id,
            first_name: &c.first_name,
            middle_name: c.middle_name.as_deref(),
            last_name: &c.last_name,
            suffix: c.suffix.as_deref(),
            nickname: c.nickname.as_deref(),
            date_of_birth: c.date_of_birth.map(|d| d.to_string()),
            email: c.email.as_deref(),
            head_of_household: row.head_of_household,
            mailing_address: c.mailing_address.as_deref(),
            mailing_apt_number: c.mailing_apt_number.as_deref(),
            mailing_city: c.mailing_city.as_deref(),
            mailing_state: c.mailing_state.as_deref(),
            mailing_zip_code: c.mailing_zip_code.as_deref(),
            ss_number: c.ss_number.as_ref().map(|s| s.masked()),
            street_address: c.street_address.as_deref(),
            street_apt_number: c.street_apt_number.as_deref(),
            street_city: c.street_city.as_deref(),
            street_state: c.street_state.as_deref(),
            street_zip_code: c.street_zip_code.as_deref(),
            street_county: c.street_county,
            yearly_expenses: c.yearly_expenses.map(|m| m.to_json()),
            yearly_income: c.yearly_income.map(|m| m.to_json()),
            deceased: c.deceased,
            private: c.private,
            household: row.household_id,
            roi_exp_date: (),
            entry_agent: row.agent_id(),
            mod_agent: row.agent_id(),
            group: row.group_id(),
            import_id: (),
            created_at: ts.clone(),
            updated_at: ts,
        }
    }
}

/// The `data` of a `case.created` event: the case, where it was placed, the sender's key, the
/// validation warnings, and (only where the network matches) the possible duplicates flagged.
#[derive(Debug, Serialize)]
pub struct CreatedData<'a> {
    #[serde(flatten)]
    pub case: CaseData<'a>,
    pub household_id: i64,
    pub household_created: bool,
    pub previous_head_case_id: Option<i64>,
    pub message_key: Option<&'a str>,
    pub warnings: &'a [Warning],
    /// `None` where the network does not match (`off`); `[]` when nothing was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub possible_duplicates: Option<Vec<&'a Candidate>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayData>,
}

/// The `data` of a `case.failed` event: the key and the error (code, message, every field).
#[derive(Debug, Serialize)]
pub struct FailedData<'a> {
    pub message_key: Option<&'a str>,
    pub error: &'a IntakeError,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayData>,
}

/// The `data` of a `case.matched` event: the key, the existing case it was linked to and why,
/// and the other candidates (ids, rule names and scores only).
#[derive(Debug, Serialize)]
pub struct MatchedData<'a> {
    pub message_key: Option<&'a str>,
    pub case_id: i64,
    pub household_id: i64,
    pub rules: &'a [Rule],
    pub score: f64,
    pub possible_duplicates: &'a [Candidate],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayData>,
}

/// The `data` of a `case.intake_resolved` event: which failure of which key ended, how, and
/// the case it came to (none for a dismissal). Ids and names only: no personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved<'a> {
    pub message_key: Option<&'a str>,
    #[serde(rename = "resolution")]
    pub how: Resolution,
    /// The `case.failed` event of the failure that ended.
    pub failed_event_id: Uuid,
    pub attempt: i32,
    /// The outcome event of the attempt that resolved it.
    #[serde(rename = "event_id")]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::error::ErrorCode;
    use crate::intake::trace::{TRACEPARENT, TRACESTATE};

    fn head<'a>(subject: Option<&'a str>, trace: Option<&'a TraceContext>) -> Head<'a> {
        Head {
            source: "urn:x",
            routing_key: "rk",
            subject,
            time: DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
                .unwrap()
                .with_timezone(&Utc),
            trace,
        }
    }

    fn failure(code: ErrorCode, replay: Option<ReplayInfo>) -> Event {
        let err = IntakeError::new(code, "no");
        let data = FailedData {
            message_key: Some("k1"),
            error: &err,
            replay: replay.map(ReplayData::from),
        };
        failed(head(Some("k1"), None), &data)
    }

    #[test]
    fn an_event_has_the_cloudevents_attributes() {
        let e = failure(ErrorCode::Unauthorized, None);
        assert_eq!(e.body["specversion"], "1.0");
        assert_eq!(e.body["id"], e.id.to_string());
        assert_eq!(e.body["type"], "case.failed");
        assert_eq!(e.body["source"], "urn:x");
        assert_eq!(e.body["subject"], "k1");
        assert_eq!(e.body["datacontenttype"], "application/json");
        assert_eq!(e.body["time"], "2026-01-02T03:04:05.000000Z");
        assert_eq!(e.routing_key, "rk");
        // Without a subject or a trace context, the attributes are absent, not null.
        let bare = resolved(
            head(None, None),
            &Resolved {
                message_key: None,
                how: Resolution::Dismissed,
                failed_event_id: Uuid::nil(),
                attempt: 1,
                outcome_event_id: None,
                case_id: None,
                household_id: None,
            },
        );
        for absent in ["subject", TRACEPARENT, TRACESTATE] {
            assert!(bare.body.get(absent).is_none(), "{absent}");
        }
        assert_eq!(bare.body["data"]["resolution"], "dismissed");
        assert_eq!(bare.body["data"]["event_id"], Value::Null);
    }

    #[test]
    fn an_event_carries_the_trace_context_of_its_intake() {
        let trace = TraceContext::parse(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            Some("a=1"),
        )
        .expect("a valid traceparent");
        let err = IntakeError::new(ErrorCode::Unauthorized, "no");
        let data = FailedData {
            message_key: None,
            error: &err,
            replay: None,
        };
        let e = failed(head(None, Some(&trace)), &data);
        assert_eq!(e.body[TRACEPARENT], trace.traceparent.as_str());
        assert_eq!(e.body[TRACESTATE], "a=1");
    }

    #[test]
    fn failed_data_carries_code_and_replay() {
        let replay = ReplayInfo {
            attempt: 2,
            failed_intake_id: Some(1),
            supersedes: None,
            how: Resolution::Edited,
        };
        let e = failure(ErrorCode::Unauthorized, Some(replay));
        let d = &e.body["data"];
        assert_eq!(d["error"]["code"], "unauthorized");
        assert_eq!(d["replay"]["replayed"], true);
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
            let data = FailedData {
                message_key: Some("k"),
                error: &error,
                replay: None,
            };
            let data = failed(head(Some("k"), None), &data).body.to_string();
            for leak in ["123-45", "12345", "98765", "\\u0000", "\\u001b"] {
                assert!(!data.contains(leak), "{leak} in {data}");
            }
        }
    }
}
