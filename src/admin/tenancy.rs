//! The tenancy model for operators: networks, counties, agents and API keys created, listed,
//! (de)activated and revoked one at a time (`case-intake network|county|agent|key`). Database
//! refusals become [`AdminError`]s that say what was duplicated or not found, never raw SQL
//! errors. The statements are in `store::tenancy`.

use serde::Serialize;
use sqlx::PgPool;

use crate::store::auth::{generate_token, hash_token};
use crate::store::tenancy::{self, AgentRow, ApiKeyRow, County, NetworkRow};

/// Why a tenancy command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The thing exists already (a unique name).
    #[error("{0}")]
    Duplicate(String),
    /// An id the operator named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The thing is already in the state asked for.
    #[error("{0}")]
    Unchanged(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Turns a unique violation (23505) into `Duplicate` and a foreign-key violation (23503) into
/// `NotFound`, with the messages of the operation that met them.
pub fn refusal(
    e: sqlx::Error,
    duplicate: impl FnOnce() -> String,
    unknown: impl FnOnce() -> String,
) -> AdminError {
    let code = match &e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    };
    match code.as_deref() {
        Some("23505") => AdminError::Duplicate(duplicate()),
        Some("23503") => AdminError::NotFound(unknown()),
        _ => AdminError::Database(e),
    }
}

fn no_network(id: i64) -> String {
    format!("no network with id {id}")
}

fn no_agent(id: i64) -> String {
    format!("no agent with id {id}")
}

fn network_named(name: &str) -> String {
    format!("a network named {name:?} already exists")
}

/// A network just created, with its first group.
#[derive(Debug, Clone, Serialize)]
pub struct NewNetwork {
    pub network_id: i64,
    pub name: String,
    pub group_id: i64,
}

/// A county just added.
#[derive(Debug, Clone, Serialize)]
pub struct NewCounty {
    pub county_id: i64,
    pub network_id: i64,
    pub name: String,
    pub state: Option<String>,
}

/// An agent just created.
#[derive(Debug, Clone, Serialize)]
pub struct NewAgent {
    pub agent_id: i64,
    pub network_id: i64,
    pub group_id: i64,
    pub name: String,
}

/// An agent after `agent deactivate|reactivate`, with what its network can still do.
#[derive(Debug, Clone, Serialize)]
pub struct AgentChanged {
    pub agent_id: i64,
    pub network_id: i64,
    pub active: bool,
    /// Keys of the network that authenticate now; 0 means it can publish nothing.
    pub usable_keys: i64,
}

/// An API key just created; `token` is shown once and never stored.
#[derive(Debug, Clone, Serialize)]
pub struct NewApiKey {
    pub api_key_id: i64,
    pub agent_id: i64,
    pub network_id: i64,
    pub label: String,
    /// False when the agent is inactive: the key works once it is re-activated.
    pub agent_active: bool,
    pub token: String,
}

/// An API key after `key revoke`, with what its network can still do.
#[derive(Debug, Clone, Serialize)]
pub struct RevokedKey {
    pub api_key_id: i64,
    pub network_id: i64,
    /// Keys of the network that still authenticate; 0 means it can publish nothing until a
    /// new key is created.
    pub usable_keys: i64,
}

/// Creates a network and its first group (agents join a group).
pub async fn create_network(
    pool: &PgPool,
    name: &str,
    group: &str,
) -> Result<NewNetwork, AdminError> {
    let mut tx = pool.begin().await?;
    let network_id = tenancy::insert_network_only(&mut tx, name)
        .await
        .map_err(|e| refusal(e, || network_named(name), || no_network(0)))?;
    let group_id = tenancy::ensure_group(&mut tx, network_id, group).await?;
    tx.commit().await?;
    Ok(NewNetwork {
        network_id,
        name: name.to_owned(),
        group_id,
    })
}

/// Every network with its counts of counties, active agents and usable keys.
pub async fn list_networks(pool: &PgPool) -> Result<Vec<NetworkRow>, AdminError> {
    Ok(tenancy::list_networks(pool).await?)
}

/// What `list` finds in a network, after checking that the network exists (an unknown id is an
/// error, not an empty list).
async fn in_network<T>(
    pool: &PgPool,
    network_id: i64,
    list: impl std::future::Future<Output = Result<Vec<T>, sqlx::Error>>,
) -> Result<Vec<T>, AdminError> {
    if !tenancy::network_exists(pool, network_id).await? {
        return Err(AdminError::NotFound(no_network(network_id)));
    }
    Ok(list.await?)
}

/// The counties of a network, by name.
pub async fn list_counties(pool: &PgPool, network_id: i64) -> Result<Vec<County>, AdminError> {
    in_network(pool, network_id, tenancy::list_counties(pool, network_id)).await
}

/// Adds a county to an existing network; a county of the same name and state is a duplicate.
pub async fn add_county(
    pool: &PgPool,
    network_id: i64,
    name: &str,
    state: Option<&str>,
) -> Result<NewCounty, AdminError> {
    let duplicate = || match state {
        Some(s) => format!("network {network_id} already has a county {name:?} in {s:?}"),
        None => format!("network {network_id} already has a county {name:?}"),
    };
    let id = tenancy::insert_county_once(pool, network_id, name, state)
        .await
        .map_err(|e| refusal(e, duplicate, || no_network(network_id)))?;
    let county_id = id.ok_or_else(|| AdminError::Duplicate(duplicate()))?;
    Ok(NewCounty {
        county_id,
        network_id,
        name: name.to_owned(),
        state: state.map(str::to_owned),
    })
}

/// Creates an active agent in the group `group` of a network (the group is created if the
/// network has none of that name); agent names are unique within a network.
pub async fn create_agent(
    pool: &PgPool,
    network_id: i64,
    name: &str,
    group: &str,
) -> Result<NewAgent, AdminError> {
    let mut tx = pool.begin().await?;
    let group_id = tenancy::ensure_group(&mut tx, network_id, group)
        .await
        .map_err(|e| refusal(e, || no_network(network_id), || no_network(network_id)))?;
    let agent_id = tenancy::insert_agent_once(&mut tx, network_id, group_id, name)
        .await?
        .ok_or_else(|| {
            AdminError::Duplicate(format!(
                "network {network_id} already has an agent named {name:?}"
            ))
        })?;
    tx.commit().await?;
    Ok(NewAgent {
        agent_id,
        network_id,
        group_id,
        name: name.to_owned(),
    })
}

/// The agents of a network.
pub async fn list_agents(pool: &PgPool, network_id: i64) -> Result<Vec<AgentRow>, AdminError> {
    in_network(pool, network_id, tenancy::list_agents(pool, network_id)).await
}

/// Deactivates (`active` false) or re-activates an agent: its keys stop or start working from
/// the next window. Asking for the state it is in already is refused as `Unchanged`.
pub async fn set_agent_active(
    pool: &PgPool,
    agent_id: i64,
    active: bool,
) -> Result<AgentChanged, AdminError> {
    let (network_id, was_active) = tenancy::set_agent_active(pool, agent_id, active)
        .await?
        .ok_or_else(|| AdminError::NotFound(no_agent(agent_id)))?;
    if was_active == active {
        let state = if active { "active" } else { "inactive" };
        return Err(AdminError::Unchanged(format!(
            "agent {agent_id} is already {state}"
        )));
    }
    Ok(AgentChanged {
        agent_id,
        network_id,
        active,
        usable_keys: tenancy::usable_keys(pool, network_id).await?,
    })
}

/// Creates an API key for an agent (of the agent's network); only the token's hash is stored.
pub async fn create_api_key(
    pool: &PgPool,
    agent_id: i64,
    label: &str,
) -> Result<NewApiKey, AdminError> {
    let (network_id, agent_active) = tenancy::agent_state(pool, agent_id)
        .await?
        .ok_or_else(|| AdminError::NotFound(no_agent(agent_id)))?;
    let token = generate_token();
    let mut conn = pool.acquire().await?;
    let api_key_id =
        tenancy::insert_api_key(&mut conn, network_id, agent_id, &hash_token(&token), label)
            .await
            .map_err(|e| {
                refusal(
                    e,
                    || "token collision; try again".into(),
                    || no_agent(agent_id),
                )
            })?;
    Ok(NewApiKey {
        api_key_id,
        agent_id,
        network_id,
        label: label.to_owned(),
        agent_active,
        token,
    })
}

/// The API keys of a network, without secrets (only hashes are stored anyway).
pub async fn list_api_keys(pool: &PgPool, network_id: i64) -> Result<Vec<ApiKeyRow>, AdminError> {
    in_network(pool, network_id, tenancy::list_api_keys(pool, network_id)).await
}

/// Revokes an API key from the next window on. Revoking a network's last usable key is
/// allowed (a leaked key must be stoppable at once); the result says so.
pub async fn revoke_api_key(pool: &PgPool, api_key_id: i64) -> Result<RevokedKey, AdminError> {
    let (network_id, was_revoked) = tenancy::revoke_api_key_once(pool, api_key_id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no API key with id {api_key_id}")))?;
    if was_revoked {
        return Err(AdminError::Unchanged(format!(
            "API key {api_key_id} is already revoked"
        )));
    }
    Ok(RevokedKey {
        api_key_id,
        network_id,
        usable_keys: tenancy::usable_keys(pool, network_id).await?,
    })
}
