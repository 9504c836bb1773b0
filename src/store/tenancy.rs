//! Tenants: networks, groups, agents, API keys and counties. The operator's provisioning
//! statements (trusted: they act on whatever network the operator names), the counties a
//! caller's network lists, and the window's check that the counties intakes name exist in
//! their callers' networks.

use std::collections::HashSet;

use sqlx::{PgConnection, PgPool};

use crate::store::auth::{Caller, TokenHash};
use crate::store::ids::{InNetwork, NetworkId};
use crate::store::unnest::bind_references;

/// The ids of a network created with its first group and agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewNetwork {
    pub network_id: i64,
    pub group_id: i64,
    pub agent_id: i64,
}

/// Creates a network named `network` with a group `group` and an (active) agent `agent` in it.
pub async fn insert_network(
    tx: &mut PgConnection,
    network: &str,
    group: &str,
    agent: &str,
) -> Result<NewNetwork, sqlx::Error> {
    let network_id: i64 =
        sqlx::query_scalar("INSERT INTO networks (name) VALUES ($1) RETURNING id")
            .bind(network)
            .fetch_one(&mut *tx)
            .await?;
    let group_id: i64 =
        sqlx::query_scalar("INSERT INTO groups (network_id, name) VALUES ($1, $2) RETURNING id")
            .bind(network_id)
            .bind(group)
            .fetch_one(&mut *tx)
            .await?;
    let agent_id: i64 = sqlx::query_scalar(
        "INSERT INTO agents (network_id, group_id, name) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(network_id)
    .bind(group_id)
    .bind(agent)
    .fetch_one(&mut *tx)
    .await?;
    Ok(NewNetwork {
        network_id,
        group_id,
        agent_id,
    })
}

/// Stores an API key of an agent of `network_id` by its token's hash (the token itself is
/// never stored); returns the key's id.
pub async fn insert_api_key(
    conn: &mut PgConnection,
    network_id: i64,
    agent_id: i64,
    token_hash: &TokenHash,
    label: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO api_keys (agent_id, network_id, token_hash, label) VALUES ($1, $2, $3, $4)
         RETURNING id",
    )
    .bind(agent_id)
    .bind(network_id)
    .bind(token_hash.to_vec())
    .bind(label)
    .fetch_one(&mut *conn)
    .await
}

/// Revokes an API key; returns whether it existed and was not revoked already.
pub async fn revoke_api_key(pool: &PgPool, api_key_id: i64) -> Result<bool, sqlx::Error> {
    let r =
        sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(api_key_id)
            .execute(pool)
            .await?;
    Ok(r.rows_affected() == 1)
}

/// Adds a county to `network_id`; returns its id.
pub async fn insert_county(
    conn: &mut PgConnection,
    network_id: i64,
    name: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("INSERT INTO counties (network_id, name) VALUES ($1, $2) RETURNING id")
        .bind(network_id)
        .bind(name)
        .fetch_one(&mut *conn)
        .await
}

/// A county as the HTTP surface lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct County {
    pub id: i64,
    pub name: String,
    pub state: Option<String>,
}

/// The counties of the caller's network, by name.
pub async fn counties(pool: &PgPool, caller: &Caller) -> Result<Vec<County>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, state FROM counties WHERE network_id = $1 ORDER BY name, id")
        .bind(caller.network_id())
        .fetch_all(pool)
        .await
}

/// Which of the counties named in their networks exist there.
pub async fn existing_counties(
    tx: &mut PgConnection,
    refs: &[InNetwork],
) -> Result<HashSet<InNetwork>, sqlx::Error> {
    if refs.is_empty() {
        return Ok(HashSet::new());
    }
    let rows: Vec<(i64, NetworkId)> = bind_references(
        sqlx::query_as(
        "SELECT c.id, c.network_id FROM counties c
               JOIN unnest($1::bigint[], $2::bigint[]) AS u(id, n) ON c.id = u.id AND c.network_id = u.n",
    ),
        refs,
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, network)| InNetwork { id, network })
        .collect())
}
