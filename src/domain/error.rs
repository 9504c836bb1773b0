//! Stable error codes and the failure value that goes into `case.failed` events.
//!
//! Codes are part of the public contract: upstream systems branch on them, so a code is never
//! renamed or reused for another meaning. Messages are for humans and may be reworded.
//!
//! An error is stored (`failed_intakes.error`, `intake_outcomes.event`) and published as it is
//! built, so its constructors are where caller text is made safe: every message and field name
//! goes through [`redact::display_text`] (SSNs masked, control characters escaped).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::domain::matching::Candidate;
use crate::infra::redact;

/// The header with which a sender creates a case its network's `reject` policy refused as a
/// possible duplicate (value `create`; docs/duplicates.md).
pub const OVERRIDE_HEADER: &str = "x-case-intake-duplicate";

/// The stable codes of a failed intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not a JSON object (bad syntax, bad UTF-8, another JSON type, too deep).
    MalformedJson,
    /// The body is larger than `intake.max_body_bytes`.
    PayloadTooLarge,
    /// The AMQP `message_id` property is absent, empty or longer than 255 characters.
    MissingMessageKey,
    /// No `Token` authorization, or a token that is unknown, revoked, or whose agent is inactive.
    Unauthorized,
    /// One or more fields are invalid; `fields` says which and why.
    ValidationFailed,
    /// The message key was already used in this network with a different body.
    IdempotencyKeyReused,
    /// Transient database errors persisted through every retry.
    RetriesExhausted,
    /// The broker dead-lettered the message (delivery limit reached, e.g. a poison message).
    DeadLettered,
    /// An AMQP property or header the service cannot use: a `message_id` or `correlation_id`
    /// with control characters, a header nested deeper than the limit, too many headers.
    InvalidEnvelope,
    /// The network's policy is `reject` and the person may already have a case in the network:
    /// `candidates` names the cases; the sender may resend under the same key with the
    /// override header to create the case anyway (docs/duplicates.md).
    PossibleDuplicate,
}

impl ErrorCode {
    /// The code as it appears on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::PayloadTooLarge => "payload_too_large",
            Self::MissingMessageKey => "missing_message_key",
            Self::Unauthorized => "unauthorized",
            Self::ValidationFailed => "validation_failed",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::RetriesExhausted => "retries_exhausted",
            Self::DeadLettered => "dead_lettered",
            Self::InvalidEnvelope => "invalid_envelope",
            Self::PossibleDuplicate => "possible_duplicate",
        }
    }

    /// True for failures caused by the message itself, which its sender can correct: a key
    /// whose recorded outcome is one of these may be re-published with a different body, which
    /// is then processed as the key's next attempt ("fix and resend", docs/operations.md).
    /// `retries_exhausted` and `dead_lettered` say nothing about the body (an operator
    /// replays them), `idempotency_key_reused` is never a key's recorded outcome, and
    /// `missing_message_key` has no key. A `possible_duplicate` is resent with the override
    /// header (or a corrected body).
    pub fn resendable(self) -> bool {
        matches!(
            self,
            Self::MalformedJson
                | Self::PayloadTooLarge
                | Self::Unauthorized
                | Self::ValidationFailed
                | Self::InvalidEnvelope
                | Self::PossibleDuplicate
        )
    }

    /// Parses a stored code back (used by the replay and listing commands).
    pub fn parse(code: &str) -> Option<Self> {
        ALL_CODES.iter().copied().find(|c| c.as_str() == code)
    }
}

/// Every code, for documentation tests and CLI filters.
pub const ALL_CODES: [ErrorCode; 10] = [
    ErrorCode::MalformedJson,
    ErrorCode::PayloadTooLarge,
    ErrorCode::MissingMessageKey,
    ErrorCode::Unauthorized,
    ErrorCode::ValidationFailed,
    ErrorCode::IdempotencyKeyReused,
    ErrorCode::RetriesExhausted,
    ErrorCode::DeadLettered,
    ErrorCode::InvalidEnvelope,
    ErrorCode::PossibleDuplicate,
];

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-field error messages, keyed by field name; sorted so events are deterministic.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// At most this many failing fields are named in an error (the first, in name order); the
/// rest are counted in `fields_omitted`. With [`MAX_FIELD_NAME_BYTES`] this bounds what is
/// stored and indexed (`failed_intakes.error_fields`, whose btree index refuses rows over
/// 2,704 bytes) and what is published, whatever the body holds: even with every byte escaped
/// there, 16 names of 64 bytes come to under 2.1 KB.
pub const MAX_LISTED_FIELDS: usize = 16;

/// A field name, once redacted, longer than this many bytes of UTF-8 is cut at a character
/// boundary and ends in `…` (the marker counted within the bound).
pub const MAX_FIELD_NAME_BYTES: usize = 64;

/// The marker ending a cut field name.
pub const CUT_MARKER: char = '…';

/// Why an intake failed: the `error` object of a `case.failed` event. Build it with
/// [`IntakeError::new`] or [`IntakeError::validation`], which redact what they are given.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntakeError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: FieldErrors,
    /// How many more failing fields there were than `fields` names (see
    /// [`MAX_LISTED_FIELDS`]).
    #[serde(skip_serializing_if = "is_zero")]
    pub fields_omitted: usize,
    /// For `possible_duplicate`: the existing cases of the caller's network the person may be
    /// (ids, rule names and scores only: no other client's data).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
}

impl IntakeError {
    /// An error without field errors. A message may quote caller text (a duplicated key), so
    /// it is redacted.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: redact::display_text(&message.into()),
            fields: FieldErrors::new(),
            fields_omitted: 0,
            candidates: Vec::new(),
        }
    }

    /// A `validation_failed` error. Field names are caller text (an unknown key is named), so
    /// they are redacted, and names that redact alike (two SSN-shaped keys with the same last
    /// four digits) share one entry rather than producing a duplicate JSON key. Only the
    /// first [`MAX_LISTED_FIELDS`] names are kept, each cut to [`MAX_FIELD_NAME_BYTES`]; the
    /// message counts them all.
    pub fn validation(fields: FieldErrors) -> Self {
        Self::validation_beyond(fields, 0)
    }

    /// A `validation_failed` error naming `fields` and counting `omitted` more failing fields
    /// that an earlier bounded error already left out (a body's errors merged with the
    /// reference checks': without the count, merging would forget them).
    pub fn validation_beyond(fields: FieldErrors, omitted: usize) -> Self {
        let mut redacted = FieldErrors::new();
        for (field, messages) in fields {
            redacted
                .entry(redact::display_text(&field))
                .or_default()
                .extend(messages.iter().map(|m| redact::display_text(m)));
        }
        let n = redacted.len() + omitted;
        let fields_omitted = omitted + redacted.len().saturating_sub(MAX_LISTED_FIELDS);
        let mut fields = FieldErrors::new();
        for (field, messages) in redacted.into_iter().take(MAX_LISTED_FIELDS) {
            // Names that cut alike share one entry, as names that redact alike do.
            fields.entry(cut_name(field)).or_default().extend(messages);
        }
        Self {
            code: ErrorCode::ValidationFailed,
            message: format!(
                "{n} field{} failed validation",
                if n == 1 { "" } else { "s" }
            ),
            fields,
            fields_omitted,
            candidates: Vec::new(),
        }
    }

    /// A `possible_duplicate` error naming its candidates (best first).
    pub fn possible_duplicate(candidates: Vec<Candidate>) -> Self {
        let n = candidates.len();
        Self {
            code: ErrorCode::PossibleDuplicate,
            message: format!(
                "this person may already have a case in your network ({n} candidate{}); \
                 nothing was created. To create the case anyway, publish the message again \
                 under the same message_id with the header {OVERRIDE_HEADER}: create",
                if n == 1 { "" } else { "s" }
            ),
            fields: FieldErrors::new(),
            fields_omitted: 0,
            candidates,
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// `name` cut to at most [`MAX_FIELD_NAME_BYTES`] bytes, ending in [`CUT_MARKER`] when cut.
fn cut_name(name: String) -> String {
    if name.len() <= MAX_FIELD_NAME_BYTES {
        return name;
    }
    let room = MAX_FIELD_NAME_BYTES - CUT_MARKER.len_utf8();
    let end = name
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .take_while(|&end| end <= room)
        .last()
        .unwrap_or(0);
    let mut cut = name[..end].to_owned();
    cut.push(CUT_MARKER);
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_field_names_are_redacted() {
        let e = IntakeError::new(
            ErrorCode::MalformedJson,
            "body has the key \"123-45-6789\u{0}\" more than once",
        );
        assert_eq!(
            e.message,
            r#"body has the key "*****6789\u{0}" more than once"#
        );
        let e = IntakeError::validation(FieldErrors::from([
            (
                "111-22-3333".to_owned(),
                vec!["is not a recognized field".to_owned()],
            ),
            (
                "444 55 3333".to_owned(),
                vec!["is not a recognized field".to_owned()],
            ),
            ("\u{1b}]0;x\u{7}".to_owned(), vec!["bad \u{9b}".to_owned()]),
        ]));
        assert_eq!(e.message, "2 fields failed validation");
        assert_eq!(
            e.fields,
            FieldErrors::from([
                (
                    "*****3333".to_owned(),
                    vec!["is not a recognized field".to_owned(); 2]
                ),
                (
                    r"\u{1b}]0;x\u{7}".to_owned(),
                    vec![r"bad \u{9b}".to_owned()]
                ),
            ])
        );
        // What is stored and published holds no SSN and no NUL (jsonb refuses `\u0000`).
        let json = serde_json::to_string(&e).unwrap();
        assert!(
            !json.contains("111-22") && !json.contains("444 55") && !json.contains("\\u0000"),
            "{json}"
        );
    }

    #[test]
    fn ordinary_errors_are_unchanged() {
        let e = IntakeError::validation(FieldErrors::from([(
            "street_county".to_owned(),
            vec!["is not a county of your network".to_owned()],
        )]));
        assert_eq!(e.message, "1 field failed validation");
        assert_eq!(
            e.fields["street_county"],
            vec!["is not a county of your network"]
        );
        let e = IntakeError::new(ErrorCode::Unauthorized, "a valid API token is required");
        assert_eq!(e.message, "a valid API token is required");
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn long_lists_are_bounded_and_counted() {
        let names: FieldErrors = (0..=MAX_LISTED_FIELDS)
            .map(|i| {
                (
                    format!("{}{}", (b'a' + i as u8) as char, "d".repeat(300)),
                    vec!["x".to_owned()],
                )
            })
            .collect();
        let e = IntakeError::validation(names);
        assert_eq!(e.fields.len(), MAX_LISTED_FIELDS);
        assert_eq!(e.fields_omitted, 1);
        assert_eq!(
            e.message,
            format!("{} fields failed validation", MAX_LISTED_FIELDS + 1)
        );
        assert!(
            e.fields
                .keys()
                .all(|k| k.len() == MAX_FIELD_NAME_BYTES && k.ends_with('…'))
        );
        let wide = IntakeError::validation(FieldErrors::from([(
            "😀".repeat(100),
            vec!["x".to_owned()],
        )]));
        let name = wide.fields.keys().next().unwrap();
        assert_eq!(name, &format!("{}…", "😀".repeat(15)));
    }
}
