//! The message key: the idempotency key an intake is decided once under, per network. One
//! `parse` says what a key may be wherever one arrives: a delivery's `message_id` (or its
//! `message-id` header), the `publish` command, a status query.

use std::fmt;
use std::ops::Deref;

use crate::domain::text::is_unsafe_char;

/// Longest accepted message key, in characters.
pub const MAX_KEY_CHARS: usize = 255;

/// A message key of 1 to [`MAX_KEY_CHARS`] characters, none of them unsafe to store, log or
/// show (see [`is_unsafe_char`]). Reads as a `&str`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey(String);

/// Why a text is no message key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    /// Empty, or longer than [`MAX_KEY_CHARS`] characters: the intake has no usable key.
    Length,
    /// Holds control or bidirectional characters: the envelope is refused as such.
    Unsafe,
}

impl MessageKey {
    /// The key `raw` is, if it is one. Unsafe characters are reported before the length, so
    /// that a long key holding a control character is refused for what it holds.
    pub fn parse(raw: &str) -> Result<Self, KeyProblem> {
        if raw.chars().any(is_unsafe_char) {
            return Err(KeyProblem::Unsafe);
        }
        if !(1..=MAX_KEY_CHARS).contains(&raw.chars().count()) {
            return Err(KeyProblem::Length);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for MessageKey {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<MessageKey> for String {
    fn from(key: MessageKey) -> String {
        key.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_1_to_255_chars_are_accepted() {
        assert_eq!(MessageKey::parse("a").unwrap().as_str(), "a");
        let long = "é".repeat(255);
        assert_eq!(&*MessageKey::parse(&long).unwrap(), long.as_str());
        assert_eq!(
            MessageKey::parse(&format!("{long}x")),
            Err(KeyProblem::Length)
        );
        assert_eq!(MessageKey::parse(""), Err(KeyProblem::Length));
    }

    #[test]
    fn unsafe_characters_are_refused_before_the_length() {
        assert_eq!(MessageKey::parse("k\u{1b}]0;t"), Err(KeyProblem::Unsafe));
        let long = format!("{}\u{7}", "a".repeat(300));
        assert_eq!(MessageKey::parse(&long), Err(KeyProblem::Unsafe));
    }
}
