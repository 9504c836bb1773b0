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

// The operator's tenancy commands (`network`, `county`, `agent`, `key`): trusted, like
// provisioning, they act on the network, agent or key the operator names.

/// A network as `network list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct NetworkRow {
    pub id: i64,
    pub name: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub counties: i64,
    pub active_agents: i64,
    /// Keys not revoked whose agent is active: what can publish for the network.
    pub usable_keys: i64,
}

/// An agent as `agent list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct AgentRow {
    pub id: i64,
    pub name: String,
    pub group_id: i64,
    pub group_name: String,
    pub active: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Keys of the agent not revoked.
    pub open_keys: i64,
}

/// An API key as `key list` shows it: never its hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: i64,
    pub agent_id: i64,
    pub agent_name: String,
    pub label: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Not revoked and its agent active: the key authenticates.
    pub usable: bool,
}

/// Creates a network without anything in it; returns its id.
pub async fn insert_network_only(conn: &mut PgConnection, name: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("INSERT INTO networks (name) VALUES ($1) RETURNING id")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
}

/// The id of the group `name` of `network_id`, created when the network has none of that name.
pub async fn ensure_group(
    conn: &mut PgConnection,
    network_id: i64,
    name: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "WITH made AS (
             INSERT INTO groups (network_id, name) VALUES ($1, $2)
             ON CONFLICT (network_id, name) DO NOTHING RETURNING id)
         SELECT id FROM made
         UNION ALL
         SELECT id FROM groups WHERE network_id = $1 AND name = $2
         LIMIT 1",
    )
    .bind(network_id)
    .bind(name)
    .fetch_one(&mut *conn)
    .await
}

/// Every network, by id.
pub async fn list_networks(pool: &PgPool) -> Result<Vec<NetworkRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT n.id, n.name, n.created_at,
                (SELECT count(*) FROM counties c WHERE c.network_id = n.id) AS counties,
                (SELECT count(*) FROM agents a WHERE a.network_id = n.id AND a.active) AS active_agents,
                (SELECT count(*) FROM api_keys k JOIN agents a ON a.id = k.agent_id
                  WHERE k.network_id = n.id AND k.revoked_at IS NULL AND a.active) AS usable_keys
           FROM networks n ORDER BY n.id",
    )
    .fetch_all(pool)
    .await
}

/// Whether a network with this id exists.
pub async fn network_exists(pool: &PgPool, network_id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM networks WHERE id = $1)")
        .bind(network_id)
        .fetch_one(pool)
        .await
}

/// Adds a county unless the network has one of the same name and state (`None` then); the
/// table's unique constraint cannot see that when the state is NULL.
pub async fn insert_county_once(
    pool: &PgPool,
    network_id: i64,
    name: &str,
    state: Option<&str>,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO counties (network_id, name, state)
         SELECT $1, $2, $3
          WHERE NOT EXISTS (SELECT 1 FROM counties
                             WHERE network_id = $1 AND name = $2 AND state IS NOT DISTINCT FROM $3)
         RETURNING id",
    )
    .bind(network_id)
    .bind(name)
    .bind(state)
    .fetch_optional(pool)
    .await
}

/// The counties of a network the operator names, by name.
pub async fn list_counties(pool: &PgPool, network_id: i64) -> Result<Vec<County>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, state FROM counties WHERE network_id = $1 ORDER BY name, id")
        .bind(network_id)
        .fetch_all(pool)
        .await
}

/// Adds an (active) agent unless the network has one of that name already (`None` then).
pub async fn insert_agent_once(
    conn: &mut PgConnection,
    network_id: i64,
    group_id: i64,
    name: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO agents (network_id, group_id, name)
         SELECT $1, $2, $3
          WHERE NOT EXISTS (SELECT 1 FROM agents WHERE network_id = $1 AND name = $3)
         RETURNING id",
    )
    .bind(network_id)
    .bind(group_id)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
}

/// The agents of a network, by id.
pub async fn list_agents(pool: &PgPool, network_id: i64) -> Result<Vec<AgentRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.id, a.name, a.group_id, g.name AS group_name, a.active, a.created_at,
                (SELECT count(*) FROM api_keys k
                  WHERE k.agent_id = a.id AND k.revoked_at IS NULL) AS open_keys
           FROM agents a JOIN groups g ON g.id = a.group_id
          WHERE a.network_id = $1 ORDER BY a.id",
    )
    .bind(network_id)
    .fetch_all(pool)
    .await
}

/// An agent's network and whether it is active, if it exists.
pub async fn agent_state(pool: &PgPool, agent_id: i64) -> Result<Option<(i64, bool)>, sqlx::Error> {
    sqlx::query_as("SELECT network_id, active FROM agents WHERE id = $1")
        .bind(agent_id)
        .fetch_optional(pool)
        .await
}

/// Sets whether an agent is active; returns its network and whether it was active before, if
/// it exists.
pub async fn set_agent_active(
    pool: &PgPool,
    agent_id: i64,
    active: bool,
) -> Result<Option<(i64, bool)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE agents a SET active = $2 FROM agents before
          WHERE a.id = $1 AND before.id = a.id
         RETURNING a.network_id, before.active",
    )
    .bind(agent_id)
    .bind(active)
    .fetch_optional(pool)
    .await
}

/// The API keys of a network, by id.
pub async fn list_api_keys(pool: &PgPool, network_id: i64) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT k.id, k.agent_id, a.name AS agent_name, k.label, k.created_at, k.revoked_at,
                (k.revoked_at IS NULL AND a.active) AS usable
           FROM api_keys k JOIN agents a ON a.id = k.agent_id
          WHERE k.network_id = $1 ORDER BY k.id",
    )
    .bind(network_id)
    .fetch_all(pool)
    .await
}

/// Revokes an API key unless it is revoked already; returns its network and whether it was
/// revoked before, if it exists.
pub async fn revoke_api_key_once(
    pool: &PgPool,
    api_key_id: i64,
) -> Result<Option<(i64, bool)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE api_keys k SET revoked_at = coalesce(before.revoked_at, now())
           FROM api_keys before
          WHERE k.id = $1 AND before.id = k.id
         RETURNING k.network_id, before.revoked_at IS NOT NULL",
    )
    .bind(api_key_id)
    .fetch_optional(pool)
    .await
}

/// How many keys of a network authenticate: not revoked, agent active.
pub async fn usable_keys(pool: &PgPool, network_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM api_keys k JOIN agents a ON a.id = k.agent_id
          WHERE k.network_id = $1 AND k.revoked_at IS NULL AND a.active",
    )
    .bind(network_id)
    .fetch_one(pool)
    .await
}
