//! What became of a message key, one form for the status endpoint (`GET /api/v1/intakes/{key}`,
//! scoped to the caller's network) and the operator's `status` command (any network): the
//! [`IntakeStatus`] of the key's current outcome. The assembly is pure; the statements are in
//! `store::status`.
//!
//! A key is recorded only together with its outcome, in the window's transaction, so a key
//! not received yet, still queued or in flight, or another network's, all read as "no
//! outcome": nothing here can tell them apart.

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::error::ErrorCode;
use crate::domain::key::MessageKey;
use crate::infra::redact;
use crate::store::auth::Caller;
use crate::store::ids::NetworkId;
use crate::store::status::{self as query, KeyOutcome};

/// The status of a key's current outcome; serialized with its kind as `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum IntakeStatus {
    /// A case was created.
    Created(Created),
    /// No case was created: the network's `link` policy made an existing case the key's
    /// outcome (`case.matched`); `case_id` is that case.
    Matched(Created),
    /// The intake failed on its merits (or its envelope): see `retry_by`.
    Failed(Failure),
    /// The intake failed `retries_exhausted` or `dead_lettered` and that failure is still
    /// open: it was not decided on its merits and awaits an operator's replay; the sender need
    /// do nothing.
    Pending(Failure),
    /// An operator closed the key's current failure (a dismissal): no operator retries it; a
    /// corrected body from its sender is still the key's next attempt.
    Resolved(Resolved),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Created {
    pub message_key: String,
    pub case_id: i64,
    pub household_id: Option<i64>,
    /// The outcome event (`case.created`).
    pub event_id: Uuid,
    /// 1, or N when retry N created the case.
    pub attempt: i32,
    pub decided_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub message_key: String,
    /// The outcome event (`case.failed`).
    pub event_id: Uuid,
    pub attempt: i32,
    pub failed_at: DateTime<Utc>,
    pub error: StatusError,
    pub retry_by: RetryBy,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolved {
    pub message_key: String,
    /// The outcome event of the failure that was closed.
    pub event_id: Uuid,
    pub attempt: i32,
    /// How (`dismissed`); never who or why.
    pub resolution: String,
    pub resolved_at: DateTime<Utc>,
    pub error: StatusError,
}

/// Who can retry a failure: its sender (a resendable code: fix the body and re-publish under
/// the same key) or an operator (replay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryBy {
    Sender,
    Operator,
}

impl RetryBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sender => "sender",
            Self::Operator => "operator",
        }
    }
}

/// The error of a failure as stored (redacted when built, redacted again for display: rows
/// older than that rule), `fields` empty when it names none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusError {
    pub code: String,
    pub message: String,
    pub fields: Value,
}

impl StatusError {
    fn of(stored: &Value) -> Self {
        let mut error = stored.clone();
        redact::redact_json(&mut error);
        let text = |name: &str| error[name].as_str().unwrap_or_default().to_owned();
        let fields = match &error["fields"] {
            Value::Object(map) => Value::Object(map.clone()),
            _ => Value::Object(Map::new()),
        };
        Self {
            code: text("code"),
            message: text("message"),
            fields,
        }
    }
}

/// True for a key that can have an outcome: 1 to 255 characters, none of them a control
/// character (the envelope refuses others). Other keys are answered "no outcome" unread.
pub fn possible_key(key: &str) -> bool {
    MessageKey::parse(key).is_ok()
}

/// The attempt an outcome event records (`data.replay.attempt`), 1 for a first attempt.
fn attempt_of(event: &Value) -> i32 {
    event["data"]["replay"]["attempt"]
        .as_i64()
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or(1)
}

/// Who retries a failure with error `code`.
fn retry_by(code: &str) -> RetryBy {
    match ErrorCode::parse(code) {
        Some(c) if c.resendable() => RetryBy::Sender,
        _ => RetryBy::Operator,
    }
}

/// True for the codes that say nothing about the intake itself: it awaits a replay.
fn awaits_replay(code: &str) -> bool {
    [ErrorCode::RetriesExhausted, ErrorCode::DeadLettered]
        .iter()
        .any(|c| c.as_str() == code)
}

/// The status of a key's outcome (pure).
pub fn status_of(o: &KeyOutcome) -> IntakeStatus {
    let message_key = redact::escape_controls(&o.message_key).into_owned();
    if let Some(case_id) = o.case_id {
        let created = Created {
            message_key,
            case_id,
            household_id: o.household_id,
            event_id: o.event_id,
            attempt: attempt_of(&o.event),
            decided_at: o.decided_at,
        };
        return match o.event["type"].as_str() {
            Some(crate::intake::event::CASE_MATCHED) => IntakeStatus::Matched(created),
            _ => IntakeStatus::Created(created),
        };
    }
    let failure = o.failure.as_ref();
    // The failed intake is the record; the event's copy serves once retention removed it.
    let stored_error = failure.map_or(&o.event["data"]["error"], |f| &f.error);
    let error = StatusError::of(stored_error);
    let attempt = failure.map_or_else(|| attempt_of(&o.event), |f| f.attempts);
    let closed = failure.and_then(|f| f.resolution.as_deref().zip(f.resolved_at));
    if let Some((resolution, resolved_at)) = closed {
        return IntakeStatus::Resolved(Resolved {
            message_key,
            event_id: o.event_id,
            attempt,
            resolution: redact::escape_controls(resolution).into_owned(),
            resolved_at,
            error,
        });
    }
    let code = o.error_code.as_deref().unwrap_or(&error.code).to_owned();
    let failure = Failure {
        message_key,
        event_id: o.event_id,
        attempt,
        failed_at: failure.map_or(o.decided_at, |f| f.failed_at),
        retry_by: retry_by(&code),
        error,
    };
    if awaits_replay(&code) {
        IntakeStatus::Pending(failure)
    } else {
        IntakeStatus::Failed(failure)
    }
}

/// The status of `key` in the caller's network; `None` when it has no outcome there (not
/// received, still queued, another network's, or a key that cannot exist).
pub async fn for_caller(
    pool: &PgPool,
    caller: &Caller,
    key: &str,
) -> Result<Option<IntakeStatus>, sqlx::Error> {
    if !possible_key(key) {
        return Ok(None);
    }
    let outcome = crate::store::outcome_in_network(pool, caller, key).await?;
    Ok(outcome.as_ref().map(status_of))
}

/// A key's status in one network, as the operator's command shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkStatus {
    /// The network; the unauthenticated namespace (0) is written `"-"`.
    #[serde(serialize_with = "network_label")]
    pub network: NetworkId,
    #[serde(flatten)]
    pub status: IntakeStatus,
}

/// A network as shown: its id, or `-` for the unauthenticated namespace.
pub fn label(network: NetworkId) -> String {
    if network == NetworkId::UNAUTHENTICATED {
        "-".to_owned()
    } else {
        network.to_string()
    }
}

fn network_label<S: Serializer>(network: &NetworkId, s: S) -> Result<S::Ok, S::Error> {
    if *network == NetworkId::UNAUTHENTICATED {
        s.serialize_str("-")
    } else {
        s.serialize_i64(network.get())
    }
}

/// Operator (trusted): the status of `key` in `network`, or in every network where it has an
/// outcome (the unauthenticated namespace included), in network order.
pub async fn for_operator(
    pool: &PgPool,
    key: &str,
    network: Option<i64>,
) -> Result<Vec<NetworkStatus>, sqlx::Error> {
    let outcomes = query::outcomes_of_key(pool, key, network).await?;
    Ok(outcomes
        .iter()
        .map(|o| NetworkStatus {
            network: o.network_id,
            status: status_of(o),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::status::FailureRecord;
    use serde_json::json;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn failed(code: &str, failure: Option<FailureRecord>) -> KeyOutcome {
        KeyOutcome {
            network_id: NetworkId::UNAUTHENTICATED,
            message_key: "k-1".to_owned(),
            case_id: None,
            household_id: None,
            error_code: Some(code.to_owned()),
            event_id: Uuid::nil(),
            event: json!({"data": {"error": {"code": code, "message": "from the event"},
                                   "replay": {"attempt": 4}}}),
            decided_at: at("2026-01-02T03:04:05Z"),
            failure,
        }
    }

    fn record(error: Value, resolution: Option<&str>) -> FailureRecord {
        FailureRecord {
            attempts: 2,
            error,
            failed_at: at("2026-01-01T00:00:00Z"),
            resolution: resolution.map(str::to_owned),
            resolved_at: resolution.map(|_| at("2026-01-03T00:00:00Z")),
        }
    }

    #[test]
    fn a_created_case_reports_its_attempt_and_household() {
        let mut o = failed("unused", None);
        o.case_id = Some(7);
        o.household_id = Some(3);
        o.error_code = None;
        o.event = json!({"data": {"replay": {"attempt": 2}}});
        let v = serde_json::to_value(status_of(&o)).unwrap();
        assert_eq!(
            v,
            json!({"status": "created", "message_key": "k-1", "case_id": 7, "household_id": 3,
                   "event_id": Uuid::nil(), "attempt": 2, "decided_at": "2026-01-02T03:04:05Z"})
        );
        o.event = json!({"data": {}});
        assert_eq!(serde_json::to_value(status_of(&o)).unwrap()["attempt"], 1);
    }

    #[test]
    fn resendable_failures_are_the_senders_others_the_operators() {
        let error = json!({"code": "validation_failed", "message": "1 field failed validation",
                           "fields": {"email": ["must be an e-mail address"]}});
        let o = failed("validation_failed", Some(record(error, None)));
        let v = serde_json::to_value(status_of(&o)).unwrap();
        assert_eq!(v["status"], "failed");
        assert_eq!(v["retry_by"], "sender");
        assert_eq!(v["attempt"], 2, "the failed intake's attempt");
        assert_eq!(v["failed_at"], "2026-01-01T00:00:00Z");
        assert_eq!(
            v["error"]["fields"]["email"][0],
            "must be an e-mail address"
        );

        let o = failed("idempotency_key_reused", None);
        let v = serde_json::to_value(status_of(&o)).unwrap();
        assert_eq!(
            (&v["status"], &v["retry_by"]),
            (&json!("failed"), &json!("operator"))
        );
        // Without its failed intake, the event says what failed and which attempt.
        assert_eq!(v["error"]["message"], "from the event");
        assert_eq!(v["error"]["fields"], json!({}));
        assert_eq!(v["attempt"], 4);
        assert_eq!(v["failed_at"], "2026-01-02T03:04:05Z");
    }

    #[test]
    fn open_transient_failures_are_pending_and_closed_ones_resolved() {
        for code in ["retries_exhausted", "dead_lettered"] {
            let error = json!({"code": code, "message": "m"});
            let o = failed(code, Some(record(error, None)));
            let v = serde_json::to_value(status_of(&o)).unwrap();
            assert_eq!(
                (&v["status"], &v["retry_by"]),
                (&json!("pending"), &json!("operator"))
            );
        }
        let error = json!({"code": "retries_exhausted", "message": "m"});
        let o = failed("retries_exhausted", Some(record(error, Some("dismissed"))));
        let v = serde_json::to_value(status_of(&o)).unwrap();
        assert_eq!(v["status"], "resolved");
        assert_eq!(v["resolution"], "dismissed");
        assert_eq!(v["resolved_at"], "2026-01-03T00:00:00Z");
        assert_eq!(v["error"]["code"], "retries_exhausted");
        assert!(v.get("retry_by").is_none());
    }

    #[test]
    fn shown_text_is_redacted_and_escaped() {
        let error = json!({"code": "validation_failed", "message": "bad \u{1b}[2J",
                           "fields": {"123-45-6789": ["is not a recognized field"]}});
        let mut o = failed("validation_failed", Some(record(error, None)));
        o.message_key = "k\u{7}".to_owned();
        let v = serde_json::to_value(status_of(&o)).unwrap();
        assert_eq!(v["message_key"], "k\\u{7}");
        assert_eq!(v["error"]["message"], "bad \\u{1b}[2J");
        assert!(v["error"]["fields"].get("*****6789").is_some(), "{v}");
    }

    #[test]
    fn impossible_keys_are_never_looked_up() {
        assert!(possible_key("intake-0001"));
        assert!(possible_key(&"k".repeat(255)));
        assert!(!possible_key(""));
        assert!(!possible_key(&"k".repeat(256)));
        assert!(!possible_key("a\u{0}b"));
        assert!(!possible_key("a\u{202e}b"));
    }

    #[test]
    fn the_unauthenticated_namespace_is_shown_as_a_dash() {
        assert_eq!(label(NetworkId::UNAUTHENTICATED), "-");
        let shown = NetworkStatus {
            network: NetworkId::UNAUTHENTICATED,
            status: status_of(&failed("unauthorized", None)),
        };
        let v = serde_json::to_value(shown).unwrap();
        assert_eq!(
            (&v["network"], &v["status"]),
            (&json!("-"), &json!("failed"))
        );
        assert_eq!(v["retry_by"], "sender");
    }
}
