//! Administration of tenants: networks, groups, agents, API keys and counties. Used by the
//! `case-intake network`/`key`/`county` commands, by the benchmark and by tests.

use serde::Serialize;
use sqlx::PgPool;

use crate::store::auth::{generate_token, hash_token};

/// What `provision` created; the token is shown once and never stored.
#[derive(Debug, Clone, Serialize)]
pub struct Provisioned {
    pub network_id: i64,
    pub group_id: i64,
    pub agent_id: i64,
    pub api_key_id: i64,
    pub token: String,
    pub county_ids: Vec<i64>,
}

/// Creates a network with one group, one agent, an API key and the given counties.
pub async fn provision(
    pool: &PgPool,
    network: &str,
    group: &str,
    agent: &str,
    counties: &[String],
) -> Result<Provisioned, sqlx::Error> {
    let mut tx = pool.begin().await?;
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
    let (api_key_id, token) = create_key(&mut tx, network_id, agent_id, "provisioned").await?;
    let mut county_ids = Vec::with_capacity(counties.len());
    for name in counties {
        county_ids.push(add_county(&mut tx, network_id, name).await?);
    }
    tx.commit().await?;
    Ok(Provisioned {
        network_id,
        group_id,
        agent_id,
        api_key_id,
        token,
        county_ids,
    })
}

/// Creates an API key for an agent of `network_id`; returns its id and the token (shown once).
pub async fn create_key(
    conn: &mut sqlx::PgConnection,
    network_id: i64,
    agent_id: i64,
    label: &str,
) -> Result<(i64, String), sqlx::Error> {
    let token = generate_token();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO api_keys (agent_id, network_id, token_hash, label) VALUES ($1, $2, $3, $4)
         RETURNING id",
    )
    .bind(agent_id)
    .bind(network_id)
    .bind(hash_token(&token).to_vec())
    .bind(label)
    .fetch_one(&mut *conn)
    .await?;
    Ok((id, token))
}

/// Revokes an API key; it stops working for the next window. Returns whether it existed.
pub async fn revoke_key(pool: &PgPool, api_key_id: i64) -> Result<bool, sqlx::Error> {
    let r =
        sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(api_key_id)
            .execute(pool)
            .await?;
    Ok(r.rows_affected() == 1)
}

/// Adds a county to a network; returns its id.
pub async fn add_county(
    conn: &mut sqlx::PgConnection,
    network_id: i64,
    name: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("INSERT INTO counties (network_id, name) VALUES ($1, $2) RETURNING id")
        .bind(network_id)
        .bind(name)
        .fetch_one(&mut *conn)
        .await
}
