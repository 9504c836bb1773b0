//! What text the service refuses in an identifier it stores, logs and shows on terminals.

/// True for characters that have no place in an identifier that is stored, logged and shown
/// on terminals: C0 and C1 controls (NUL among them, which PostgreSQL text refuses), DEL, and
/// the bidirectional controls that reorder what a reader sees.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}')
        || ('\u{202A}'..='\u{202E}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
