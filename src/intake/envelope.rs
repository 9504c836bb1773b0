//! What the pipeline needs of one intake, independent of where it came from (a RabbitMQ
//! delivery, a replay of a failed intake, a test), and the checks of the envelope's own text.

use crate::domain::error::{ErrorCode, IntakeError};
use crate::intake::event::ReplayInfo;
use crate::intake::trace::TraceContext;
use crate::store::auth::TokenHash;
use crate::store::edits::EditAudit;

pub use crate::domain::key::{KeyProblem, MAX_KEY_CHARS, MessageKey};
pub use crate::domain::text::is_unsafe_char;

/// Longest accepted correlation id, in characters (it travels on every event).
pub const MAX_CORRELATION_CHARS: usize = 255;

/// What is kept of a body larger than `intake.max_body_bytes`: its size and hash, while
/// [`Envelope::body`] holds only a bounded prefix, so an oversized message costs bounded
/// memory and storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversize {
    /// The body's length as published.
    pub bytes: usize,
    /// SHA-256 of the whole body as published (the key's payload hash).
    pub sha256: [u8; 32],
}

/// One intake to process.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The idempotency key; `None` when absent, empty, longer than [`MAX_KEY_CHARS`] or
    /// holding control characters (then its attempt is [`Attempt::Failing`]).
    pub message_key: Option<MessageKey>,
    pub correlation_id: Option<String>,
    /// Hash of the `Token` from the authorization header, if one was well-formed.
    pub token: Option<TokenHash>,
    /// The body, or only its first bytes when `oversize` is set.
    pub body: Vec<u8>,
    /// Set when the body was larger than the limit and has been cut to a prefix.
    pub oversize: Option<Oversize>,
    /// Which attempt at its key this is, and what only that attempt brings.
    pub attempt: Attempt,
    /// The W3C trace context of the intake's headers, when valid: carried to its event.
    pub trace: Option<TraceContext>,
    /// Set by the header `x-case-intake-duplicate: create`: the sender creates the case even
    /// though its network's `reject` or `link` policy would not (the pairs are still flagged).
    pub duplicate_override: bool,
}

/// Which attempt at its key an intake is, as the envelope knows it. A sender's resend of a
/// failed key is not among them: only the window, reading the key's stored outcome, can tell
/// one (a resend slot).
#[derive(Debug, Clone, Default)]
pub enum Attempt {
    /// A published intake as delivered, first or again: decided on its body.
    #[default]
    Delivered,
    /// A delivery that must fail whatever its body says: an unusable envelope, retries
    /// exhausted, dead-lettered by the broker. It still goes through dedup: a key that already
    /// has an outcome keeps it.
    Failing(IntakeError),
    /// An operator's retry of a failed intake (`replay`, `failed edit`).
    Retry(Retry),
}

/// An operator's retry: which attempt it is and what it resolves, on whose behalf, and for an
/// edit its audit, written in the window's transaction once the outcome is known (an edit is
/// never applied without its audit row, nor audited without being applied).
#[derive(Debug, Clone)]
pub struct Retry {
    pub info: ReplayInfo,
    /// Recorded as the failure's `resolved_by`.
    pub operator: Option<String>,
    pub edit: Option<EditAudit>,
}

impl Envelope {
    /// The failure this intake must come to, whatever its body says.
    pub fn forced_failure(&self) -> Option<&IntakeError> {
        match &self.attempt {
            Attempt::Failing(error) => Some(error),
            _ => None,
        }
    }

    /// The operator's retry this intake is, if it is one.
    pub fn retry(&self) -> Option<&Retry> {
        match &self.attempt {
            Attempt::Retry(retry) => Some(retry),
            _ => None,
        }
    }

    /// Which attempt of a failed intake an operator's retry is.
    pub fn replay(&self) -> Option<ReplayInfo> {
        self.retry().map(|r| r.info)
    }

    /// Records on an operator's retry whom it runs for and, for an edit, its audit; nothing on
    /// another attempt.
    pub fn retried_by(&mut self, operator: Option<String>, edit: Option<EditAudit>) {
        if let Attempt::Retry(retry) = &mut self.attempt {
            retry.operator = operator;
            retry.edit = edit;
        }
    }

    /// Makes this delivery fail with `error` whatever its body says, in place of any problem
    /// its envelope had (the consumer's verdict on the delivery wins).
    pub fn fail_with(&mut self, error: IntakeError) {
        self.attempt = Attempt::Failing(error);
    }
}

/// The error for an envelope text that holds unsafe characters; names the property, never
/// quotes it.
pub fn unsafe_text(property: &str) -> IntakeError {
    IntakeError::new(
        ErrorCode::InvalidEnvelope,
        format!("the {property} property holds control characters; publish it as plain text"),
    )
}

/// Checks a correlation id: `Ok(None)` when absent, the id when usable, an error when it holds
/// unsafe characters or is longer than [`MAX_CORRELATION_CHARS`].
pub fn check_correlation_id(id: Option<&str>) -> Result<Option<String>, IntakeError> {
    let Some(id) = id else { return Ok(None) };
    if id.chars().any(is_unsafe_char) {
        return Err(unsafe_text("correlation_id"));
    }
    if id.chars().count() > MAX_CORRELATION_CHARS {
        return Err(IntakeError::new(
            ErrorCode::InvalidEnvelope,
            format!(
                "the correlation_id property is longer than {MAX_CORRELATION_CHARS} characters"
            ),
        ));
    }
    Ok(Some(id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids() {
        assert_eq!(check_correlation_id(None), Ok(None));
        assert_eq!(check_correlation_id(Some("c-1")), Ok(Some("c-1".into())));
        for bad in ["a\0b", "\x1b[31m", "x\u{202E}y"] {
            let e = check_correlation_id(Some(bad)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidEnvelope);
            assert!(!e.message.contains(bad));
        }
        let long = "c".repeat(256);
        assert_eq!(
            check_correlation_id(Some(&long)).unwrap_err().code,
            ErrorCode::InvalidEnvelope
        );
    }
}
