//! What the pipeline needs of one intake, independent of where it came from (a RabbitMQ
//! delivery, a replay of a failed intake, a test), and the checks of the envelope's own text.

use crate::domain::error::{ErrorCode, IntakeError};
use crate::intake::event::ReplayInfo;
use crate::intake::trace::TraceContext;
use crate::store::auth::TokenHash;

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
    /// holding control characters (then `forced_failure` says so).
    pub message_key: Option<MessageKey>,
    pub correlation_id: Option<String>,
    /// Hash of the `Token` from the authorization header, if one was well-formed.
    pub token: Option<TokenHash>,
    /// The body, or only its first bytes when `oversize` is set.
    pub body: Vec<u8>,
    /// Set when the body was larger than the limit and has been cut to a prefix.
    pub oversize: Option<Oversize>,
    /// Set when a failed intake is processed again by `case-intake replay`.
    pub replay: Option<ReplayInfo>,
    /// Set when the intake must fail whatever its body says (an unusable envelope, retries
    /// exhausted, dead-lettered by the broker). It still goes through dedup: a key that already
    /// has an outcome keeps it.
    pub forced_failure: Option<IntakeError>,
    /// The W3C trace context of the intake's headers, when valid: carried to its event.
    pub trace: Option<TraceContext>,
    /// Set by the header `x-case-intake-duplicate: create`: the sender creates the case even
    /// though its network's `reject` or `link` policy would not (the pairs are still flagged).
    pub duplicate_override: bool,
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
