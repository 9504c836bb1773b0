//! The window's callers, every distinct token authenticated in one query, and the
//! intakes that may be matched against existing cases.

use std::collections::HashMap;

use sqlx::PgConnection;

use crate::intake::duplicates::MatchInput;
use crate::store;
use crate::store::auth::{Caller, TokenHash};
use crate::store::ids::NetworkId;

use super::prepare::Prepared;
use super::sorted::unique;

/// The window's authenticated callers, by token hash.
pub(super) struct Callers(pub(super) HashMap<TokenHash, Caller>);

impl Callers {
    /// The caller of an intake, if its token authenticated.
    pub(super) fn of(&self, p: &Prepared) -> Option<Caller> {
        p.env.token.and_then(|t| self.0.get(&t).copied())
    }

    /// The network whose key namespace an intake's key belongs to
    /// ([`NetworkId::UNAUTHENTICATED`] without a caller).
    pub(super) fn namespace(&self, p: &Prepared) -> NetworkId {
        self.of(p)
            .map_or(NetworkId::UNAUTHENTICATED, |c| c.network_id())
    }
}

/// Every distinct token of the window, authenticated in one query.
pub(super) async fn authenticate(
    tx: &mut PgConnection,
    prepared: &[Prepared<'_>],
) -> Result<Callers, sqlx::Error> {
    let tokens: Vec<[u8; 32]> = unique(prepared.iter().filter_map(|p| p.env.token));
    Ok(Callers(store::callers(tx, &tokens).await?))
}

/// The intakes that may be matched: a valid body from an authenticated caller, not forced to
/// fail (whether their slot is decided here is known only later; extra lookups are harmless).
pub(super) fn matchable<'a>(
    prepared: &'a [Prepared<'_>],
    callers: &'a Callers,
) -> impl Iterator<Item = (usize, Caller, &'a MatchInput)> + 'a {
    prepared.iter().enumerate().filter_map(|(i, p)| {
        let caller = callers.of(p)?;
        (p.body.is_ok() && p.env.forced_failure().is_none()).then_some((i, caller, &p.matching))
    })
}
