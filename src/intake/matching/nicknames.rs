//! Common nicknames and their formal first names.

/// The formal name of a normalized first name (itself when it is not a known nickname).
pub fn canonical(name: &str) -> String {
    name.to_owned()
}
