//! Token authentication: the `Token <api_token>` header, token hashing and generation, the
//! one authentication query ([`callers`]) and the [`Caller`] proof it makes, which every store
//! function scoped to a network requires.

use std::collections::HashMap;

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use crate::store::ids::NetworkId;
use crate::store::matching::DuplicatePolicy;

/// An authenticated caller: the agent behind an API key, its group and its network. Its
/// fields are private and its constructor visible to `store` only, which builds one from a key
/// that is not revoked and an agent that is active: holding a `Caller` proves authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    network_id: NetworkId,
    group_id: i64,
    agent_id: i64,
    api_key_id: i64,
    /// The network's possible-duplicate policy, read with the key (no extra query per window).
    duplicate_policy: DuplicatePolicy,
}

impl Caller {
    /// Only the authentication query ([`callers`]) makes callers.
    pub(in crate::store) fn authenticated(
        api_key_id: i64,
        agent_id: i64,
        group_id: i64,
        network_id: i64,
        duplicate_policy: DuplicatePolicy,
    ) -> Self {
        Self {
            network_id: NetworkId::from_row(network_id),
            group_id,
            agent_id,
            api_key_id,
            duplicate_policy,
        }
    }

    /// A caller for the pipeline's unit tests, which decide intakes without a database.
    #[cfg(test)]
    pub(crate) fn for_tests(network_id: i64) -> Self {
        Self::authenticated(1, 1, 1, network_id, DuplicatePolicy::Flag)
    }

    /// The network every query of this caller is scoped to.
    pub fn network_id(&self) -> NetworkId {
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

    pub fn duplicate_policy(&self) -> DuplicatePolicy {
        self.duplicate_policy
    }
}

/// Resolves token hashes to callers: key not revoked, agent active.
pub async fn callers(
    tx: &mut PgConnection,
    tokens: &[TokenHash],
) -> Result<HashMap<TokenHash, Caller>, sqlx::Error> {
    if tokens.is_empty() {
        return Ok(HashMap::new());
    }
    let hashes: Vec<Vec<u8>> = tokens.iter().map(|t| t.to_vec()).collect();
    let rows: Vec<(Vec<u8>, i64, i64, i64, i64, String)> = sqlx::query_as(
        "SELECT k.token_hash, k.id, a.id, a.group_id, a.network_id, n.duplicate_policy
           FROM api_keys k
           JOIN agents a ON a.id = k.agent_id AND a.network_id = k.network_id
           JOIN networks n ON n.id = a.network_id
          WHERE k.token_hash = ANY($1) AND k.revoked_at IS NULL AND a.active",
    )
    .bind(&hashes)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for (hash, api_key_id, agent_id, group_id, network_id, policy) in rows {
        let Ok(hash) = TokenHash::try_from(hash.as_slice()) else {
            continue;
        };
        // The column's CHECK allows only known policies; anything else reads as the default.
        let policy = DuplicatePolicy::parse(&policy).unwrap_or_default();
        let caller = Caller::authenticated(api_key_id, agent_id, group_id, network_id, policy);
        out.insert(hash, caller);
    }
    Ok(out)
}

/// The caller behind one token, through the pipeline's authentication query (`callers`):
/// `None` for an unknown or revoked key or an inactive agent.
pub async fn caller_of(pool: &PgPool, token: TokenHash) -> Result<Option<Caller>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    Ok(callers(&mut conn, &[token]).await?.remove(&token))
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
