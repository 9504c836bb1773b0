//! One-step provisioning: a new network with a group, an agent, an API key and counties, in
//! one transaction (`case-intake provision`, the benchmark, the fault suite and tests). The
//! one-at-a-time commands on existing networks are in `admin::tenancy`; the statements in
//! `store::tenancy`.

use serde::Serialize;
use sqlx::PgPool;

use crate::admin::tenancy::{AdminError, refusal};
use crate::store::auth::{generate_token, hash_token};
use crate::store::tenancy;

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

/// Creates a network with one group, one agent, an API key and the given counties; a network
/// name in use already is refused as `Duplicate`.
pub async fn provision(
    pool: &PgPool,
    network: &str,
    group: &str,
    agent: &str,
    counties: &[String],
) -> Result<Provisioned, AdminError> {
    let mut tx = pool.begin().await?;
    let tenancy::NewNetwork {
        network_id,
        group_id,
        agent_id,
    } = tenancy::insert_network(&mut tx, network, group, agent)
        .await
        .map_err(|e| {
            refusal(
                e,
                || format!("a network named {network:?} already exists"),
                || "a network vanished while it was provisioned".into(),
            )
        })?;
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
    let id =
        tenancy::insert_api_key(conn, network_id, agent_id, &hash_token(&token), label).await?;
    Ok((id, token))
}

/// Revokes an API key; it stops working for the next window. Returns whether it existed.
pub async fn revoke_key(pool: &PgPool, api_key_id: i64) -> Result<bool, sqlx::Error> {
    tenancy::revoke_api_key(pool, api_key_id).await
}

/// Adds a county to a network; returns its id.
pub async fn add_county(
    conn: &mut sqlx::PgConnection,
    network_id: i64,
    name: &str,
) -> Result<i64, sqlx::Error> {
    tenancy::insert_county(conn, network_id, name).await
}
