//! What the pipeline needs of one intake, independent of where it came from (a RabbitMQ
//! delivery, a replay of a failed intake, a test).

use crate::auth::TokenHash;
use crate::error::IntakeError;
use crate::event::ReplayInfo;

/// Longest accepted message key, in characters.
pub const MAX_KEY_CHARS: usize = 255;

/// One intake to process.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The idempotency key; `None` when absent, empty or longer than [`MAX_KEY_CHARS`].
    pub message_key: Option<String>,
    pub correlation_id: Option<String>,
    /// Hash of the `Token` from the authorization header, if one was well-formed.
    pub token: Option<TokenHash>,
    pub body: Vec<u8>,
    /// Set when a failed intake is processed again by `case-intake replay`.
    pub replay: Option<ReplayInfo>,
    /// Set when the intake must fail whatever its body says (retries exhausted, dead-lettered
    /// by the broker). It still goes through dedup: a key that already has an outcome keeps it.
    pub forced_failure: Option<IntakeError>,
}

/// Accepts a message key of 1 to 255 characters.
pub fn check_message_key(key: Option<&str>) -> Option<String> {
    let key = key?;
    let n = key.chars().count();
    (1..=MAX_KEY_CHARS).contains(&n).then(|| key.to_owned())
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
}
