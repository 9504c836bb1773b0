//! What the pipeline needs of one intake, independent of where it came from (a RabbitMQ
//! delivery, a replay of a failed intake, a test), and the checks of the envelope's own text.

use crate::intake::error::{ErrorCode, IntakeError};
use crate::intake::event::ReplayInfo;
use crate::intake::trace::TraceContext;
use crate::store::auth::TokenHash;

/// Longest accepted message key, in characters.
pub const MAX_KEY_CHARS: usize = 255;

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
    pub message_key: Option<String>,
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

/// Accepts a message key of 1 to 255 characters.
pub fn check_message_key(key: Option<&str>) -> Option<String> {
    let key = key?;
    let n = key.chars().count();
    (1..=MAX_KEY_CHARS).contains(&n).then(|| key.to_owned())
}

/// True for characters that have no place in an identifier that is stored, logged and shown
/// on terminals: C0 and C1 controls (NUL among them, which PostgreSQL text refuses), DEL, and
/// the bidirectional controls that reorder what a reader sees.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}')
        || ('\u{202A}'..='\u{202E}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
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
    fn keys_of_1_to_255_chars_are_accepted() {
        assert_eq!(check_message_key(Some("a")).as_deref(), Some("a"));
        let long = "é".repeat(255);
        assert_eq!(check_message_key(Some(&long)), Some(long.clone()));
        assert_eq!(check_message_key(Some(&format!("{long}x"))), None);
        assert_eq!(check_message_key(Some("")), None);
        assert_eq!(check_message_key(None), None);
    }

    #[test]
    fn unsafe_characters() {
        for c in [
            '\0', '\x07', '\x1b', '\x7f', '\u{85}', '\u{9b}', '\u{202E}', '\u{2066}',
        ] {
            assert!(is_unsafe_char(c), "{c:?}");
        }
        for c in ['a', 'é', ' ', '-', '\u{200B}', '漢'] {
            assert!(!is_unsafe_char(c), "{c:?}");
        }
    }

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
