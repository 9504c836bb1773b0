//! Ids that must not be mixed up: a network's id (the tenancy boundary every pipeline query is
//! scoped to), and the county or household an intake names, always paired with the network it
//! must belong to.

use serde::Serialize;

/// A network's id. Bound to SQL as a `bigint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, sqlx::Type)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct NetworkId(i64);

impl NetworkId {
    /// The namespace of message keys that arrived without a valid caller (no network has id
    /// 0), so that an unauthenticated key can never answer for a network's key.
    pub const UNAUTHENTICATED: NetworkId = NetworkId(0);

    /// Made by the store from what it read (the authentication query, a locked row).
    pub(in crate::store) fn from_row(id: i64) -> Self {
        Self(id)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for NetworkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A county or household id as an intake names it, with the network it must belong to: a
/// lookup by this pair never finds another network's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InNetwork {
    pub id: i64,
    pub network: NetworkId,
}

/// A household whose head becomes `case`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadUpdate {
    pub household: i64,
    pub case: i64,
}
