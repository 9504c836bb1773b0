//! Token authentication: the `Token <api_token>` header, token hashing and generation, and the
//! [`Caller`] proof that every store function requires.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// An authenticated caller: the agent behind an API key, its group and its network. Its
/// fields are private and its constructor visible to `store` only, which builds one from a key
/// that is not revoked and an agent that is active: holding a `Caller` proves authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    network_id: i64,
    group_id: i64,
    agent_id: i64,
    api_key_id: i64,
}

impl Caller {
    /// Only the authentication query (`store::callers`) makes callers.
    pub(in crate::store) fn authenticated(
        api_key_id: i64,
        agent_id: i64,
        group_id: i64,
        network_id: i64,
    ) -> Self {
        Self {
            network_id,
            group_id,
            agent_id,
            api_key_id,
        }
    }

    /// A caller for the pipeline's unit tests, which decide intakes without a database.
    #[cfg(test)]
    pub(crate) fn for_tests(network_id: i64) -> Self {
        Self::authenticated(1, 1, 1, network_id)
    }

    /// The network every query of this caller is scoped to.
    pub fn network_id(&self) -> i64 {
        self.network_id
    }

    pub fn group_id(&self) -> i64 {
        self.group_id
    }

    pub fn agent_id(&self) -> i64 {
        self.agent_id
    }

    pub fn api_key_id(&self) -> i64 {
        self.api_key_id
    }
}

/// SHA-256 of a token: the only form in which tokens are stored or compared. Equality of
/// hashes leaks nothing useful about the token through timing.
pub type TokenHash = [u8; 32];

pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A new API token: 32 bytes from the OS-seeded CSPRNG (256 bits), hex-encoded.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Extracts the token from an `authorization` value: `Token <api_token>`, the scheme matched
/// case-insensitively (the seed writes it that way; HTTP schemes are case-insensitive).
pub fn parse_token_header(value: &str) -> Option<&str> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("token") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty() && !token.contains(char::is_whitespace)).then_some(token)
}

/// Header names accepted for the token, compared case-insensitively: the usual `authorization`
/// and the seed's `Authorize`.
pub const TOKEN_HEADERS: [&str; 2] = ["authorization", "authorize"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_token_scheme_case_insensitively() {
        assert_eq!(parse_token_header("Token abc"), Some("abc"));
        assert_eq!(parse_token_header("  token   abc  "), Some("abc"));
        assert_eq!(parse_token_header("TOKEN abc"), Some("abc"));
    }

    #[test]
    fn rejects_other_schemes_and_empty_tokens() {
        assert_eq!(parse_token_header("Bearer abc"), None);
        assert_eq!(parse_token_header("Token"), None);
        assert_eq!(parse_token_header("Token   "), None);
        assert_eq!(parse_token_header("abc"), None);
        assert_eq!(parse_token_header("Token a b"), None);
    }

    #[test]
    fn generated_tokens_are_distinct_and_long() {
        let a = generate_token();
        let b = generate_token();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
