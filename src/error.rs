//! Stable error codes and the failure value that goes into `case.failed` events.
//!
//! Codes are part of the public contract: upstream systems branch on them, so a code is never
//! renamed or reused for another meaning. Messages are for humans and may be reworded.

use std::collections::BTreeMap;

use serde::Serialize;

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
        }
    }

    /// Parses a stored code back (used by the replay and listing commands).
    pub fn parse(code: &str) -> Option<Self> {
        ALL_CODES.iter().copied().find(|c| c.as_str() == code)
    }
}

/// Every code, for documentation tests and CLI filters.
pub const ALL_CODES: [ErrorCode; 9] = [
    ErrorCode::MalformedJson,
    ErrorCode::PayloadTooLarge,
    ErrorCode::MissingMessageKey,
    ErrorCode::Unauthorized,
    ErrorCode::ValidationFailed,
    ErrorCode::IdempotencyKeyReused,
    ErrorCode::RetriesExhausted,
    ErrorCode::DeadLettered,
    ErrorCode::InvalidEnvelope,
];

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-field error messages, keyed by field name; sorted so events are deterministic.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// Why an intake failed: the `error` object of a `case.failed` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntakeError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: FieldErrors,
}

impl IntakeError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            fields: FieldErrors::new(),
        }
    }

    pub fn validation(fields: FieldErrors) -> Self {
        let n = fields.len();
        Self {
            code: ErrorCode::ValidationFailed,
            message: format!(
                "{n} field{} failed validation",
                if n == 1 { "" } else { "s" }
            ),
            fields,
        }
    }
}
