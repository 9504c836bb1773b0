//! `case-intake network|county|agent|key …`: the tenancy commands' arguments and their
//! rendering (a table or a line for people, `--json` for scripts). The logic is in
//! `admin::tenancy`; every command opens an existing, migrated database.

use clap::{Args, Subcommand};
use serde::Serialize;
use sqlx::PgPool;

use crate::admin::tenancy::{self, RevokedKey};
use crate::infra::db;
use crate::infra::redact::escape_controls;
use crate::infra::settings::Settings;

use super::CliResult;

/// The four tenancy command groups, flattened into the top-level commands.
#[derive(Subcommand)]
pub enum TenancyCommand {
    /// Networks: create, list.
    Network {
        #[command(subcommand)]
        command: NetworkCommand,
    },
    /// Counties of a network: add, list.
    County {
        #[command(subcommand)]
        command: CountyCommand,
    },
    /// Agents of a network: create, list, deactivate, reactivate.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// API keys: create (the token is printed once), list (never secrets), revoke.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

/// `--network N` and `--json`: what every listing of one network takes.
#[derive(Args)]
pub struct OfNetwork {
    /// The network's id (`network list` shows them).
    #[arg(long)]
    network: i64,
    /// Print JSON instead of the human table.
    #[arg(long)]
    json: bool,
}

/// An id and `--json`: what every change of one agent or key takes.
#[derive(Args)]
pub struct ById {
    /// The id (`agent list` / `key list` show them).
    id: i64,
    /// Print JSON instead of the human line.
    #[arg(long)]
    json: bool,
}

/// A name, the group it goes with and `--json`: what `network create` and `agent create` take.
#[derive(Args)]
pub struct NameInGroup {
    /// The name (unique: networks by name, agents by name within their network).
    #[arg(value_parser = non_blank)]
    name: String,
    /// The group (agency) of the network; created if the network has none of that name.
    #[arg(long, default_value = "Intake", value_parser = non_blank)]
    group: String,
    /// Print JSON instead of the human line.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Create a network with its first group (agents belong to a group).
    Create(NameInGroup),
    /// List networks with their counties, active agents and usable API keys.
    List {
        /// Print JSON instead of the human table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum CountyCommand {
    /// Add a county to a network (then failed intakes that named it can be replayed).
    Add {
        /// The network's id (`network list` shows them).
        #[arg(long)]
        network: i64,
        /// The county's name.
        #[arg(value_parser = non_blank)]
        name: String,
        /// Its state (e.g. NY), where one network spans states with same-named counties.
        #[arg(long, value_parser = non_blank)]
        state: Option<String>,
        /// Print JSON instead of the human line.
        #[arg(long)]
        json: bool,
    },
    /// List the counties of a network.
    List(OfNetwork),
}

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Create an active agent in a network (agent names are unique in a network).
    Create {
        /// The network's id (`network list` shows them).
        #[arg(long)]
        network: i64,
        #[command(flatten)]
        agent: NameInGroup,
    },
    /// List the agents of a network.
    List(OfNetwork),
    /// Deactivate an agent: its keys are refused from the next message on.
    Deactivate(ById),
    /// Re-activate an agent: its keys that are not revoked work again.
    #[command(alias = "re-activate")]
    Reactivate(ById),
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create an API key for an agent; prints the token once (only its hash is stored).
    Create {
        /// The agent the key acts as (`agent list` shows ids).
        #[arg(long)]
        agent: i64,
        /// A label to recognise the key by in `key list` (e.g. the system that holds it).
        #[arg(long, default_value = "")]
        label: String,
        /// Print JSON (with the token, shown once) instead of the human lines.
        #[arg(long)]
        json: bool,
    },
    /// List the API keys of a network (ids, agents, labels, dates; never secrets).
    List(OfNetwork),
    /// Revoke an API key: it is refused from the next message on.
    Revoke(ById),
}

fn non_blank(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_owned())
    }
}

/// Runs one tenancy command against the existing database.
pub async fn tenancy_command(command: TenancyCommand, settings: &Settings) -> CliResult {
    let pool = db::open_current(&settings.database).await?;
    match command {
        TenancyCommand::Network { command } => network(&pool, command).await,
        TenancyCommand::County { command } => county(&pool, command).await,
        TenancyCommand::Agent { command } => agent(&pool, command).await,
        TenancyCommand::Key { command } => key(&pool, command).await,
    }
}

/// Prints `value` as JSON when asked, otherwise the human line.
fn emit<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T) -> String) -> CliResult {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", human(value));
    }
    Ok(())
}

/// Operator-supplied names, made safe for a terminal.
fn show(s: &str) -> String {
    escape_controls(s).into_owned()
}

/// The line of a creation: `created network 3 "Name" with group 4`.
fn named(done: &str, id: i64, name: &str, rest: &str) -> String {
    format!("{done} {id} {:?} {rest}", show(name))
}

async fn network(pool: &PgPool, command: NetworkCommand) -> CliResult {
    match command {
        NetworkCommand::Create(NameInGroup { name, group, json }) => {
            let n = tenancy::create_network(pool, &name, &group).await?;
            emit(json, &n, |n| {
                let rest = format!("with group {}", n.group_id);
                named("created network", n.network_id, &n.name, &rest)
            })
        }
        NetworkCommand::List { json } => {
            let rows = tenancy::list_networks(pool).await?;
            emit(json, &rows, |rows| {
                let mut out = format!(
                    "{:>6}  {:<25}  {:>8}  {:>6}  {:>4}  name",
                    "id", "created at", "counties", "agents", "keys"
                );
                for r in rows {
                    out.push_str(&format!(
                        "\n{:>6}  {:<25}  {:>8}  {:>6}  {:>4}  {}",
                        r.id,
                        r.created_at.format("%Y-%m-%d %H:%M:%S"),
                        r.counties,
                        r.active_agents,
                        r.usable_keys,
                        show(&r.name)
                    ));
                }
                out
            })
        }
    }
}

async fn county(pool: &PgPool, command: CountyCommand) -> CliResult {
    match command {
        CountyCommand::Add {
            network,
            name,
            state,
            json,
        } => {
            let c = tenancy::add_county(pool, network, &name, state.as_deref()).await?;
            emit(json, &c, |c| {
                let rest = format!("to network {}", c.network_id);
                named("added county", c.county_id, &c.name, &rest)
            })
        }
        CountyCommand::List(OfNetwork { network, json }) => {
            let rows = tenancy::list_counties(pool, network).await?;
            emit(json, &rows, |rows| {
                let mut out = format!("{:>6}  {:<6}  name", "id", "state");
                for r in rows {
                    let state = r.state.as_deref().map_or("-".into(), show);
                    out.push_str(&format!("\n{:>6}  {:<6}  {}", r.id, state, show(&r.name)));
                }
                out
            })
        }
    }
}

async fn agent(pool: &PgPool, command: AgentCommand) -> CliResult {
    match command {
        AgentCommand::Create {
            network,
            agent: NameInGroup { name, group, json },
        } => {
            let a = tenancy::create_agent(pool, network, &name, &group).await?;
            emit(json, &a, |a| {
                let rest = format!("in network {} (group {})", a.network_id, a.group_id);
                named("created agent", a.agent_id, &a.name, &rest)
            })
        }
        AgentCommand::List(OfNetwork { network, json }) => {
            let rows = tenancy::list_agents(pool, network).await?;
            emit(json, &rows, |rows| {
                let mut out = format!(
                    "{:>6}  {:<8}  {:>4}  {:<20}  name",
                    "id", "active", "keys", "group"
                );
                for r in rows {
                    out.push_str(&format!(
                        "\n{:>6}  {:<8}  {:>4}  {:<20}  {}",
                        r.id,
                        if r.active { "yes" } else { "no" },
                        r.open_keys,
                        show(&r.group_name),
                        show(&r.name)
                    ));
                }
                out
            })
        }
        AgentCommand::Deactivate(ById { id, json }) => set_active(pool, id, false, json).await,
        AgentCommand::Reactivate(ById { id, json }) => set_active(pool, id, true, json).await,
    }
}

async fn set_active(pool: &PgPool, id: i64, active: bool, json: bool) -> CliResult {
    let changed = tenancy::set_agent_active(pool, id, active).await?;
    if changed.usable_keys == 0 {
        warn_unusable(changed.network_id);
    }
    emit(json, &changed, |c| {
        let what = if c.active {
            "re-activated"
        } else {
            "deactivated"
        };
        format!("{what} agent {} of network {}", c.agent_id, c.network_id)
    })
}

/// Said on stderr (also with `--json`) whenever a command leaves a network without a key
/// that authenticates: its intakes fail `unauthorized` until one is made.
fn warn_unusable(network_id: i64) {
    eprintln!(
        "warning: network {network_id} has no usable API key left: its intakes fail `unauthorized` until `case-intake key create --agent ID` (with an active agent) or `case-intake agent reactivate ID`"
    );
}

async fn key(pool: &PgPool, command: KeyCommand) -> CliResult {
    match command {
        KeyCommand::Create { agent, label, json } => {
            let k = tenancy::create_api_key(pool, agent, &label).await?;
            if !k.agent_active {
                eprintln!(
                    "warning: agent {agent} is inactive: the key works once `case-intake agent reactivate {agent}`"
                );
            }
            emit(json, &k, |k| {
                format!(
                    "created API key {} for agent {} of network {}\ntoken (shown once, only its hash is stored): {}",
                    k.api_key_id, k.agent_id, k.network_id, k.token
                )
            })
        }
        KeyCommand::List(OfNetwork { network, json }) => {
            let rows = tenancy::list_api_keys(pool, network).await?;
            emit(json, &rows, |rows| {
                let mut out = format!(
                    "{:>6}  {:>6}  {:<6}  {:<19}  {:<19}  label",
                    "id", "agent", "usable", "created at", "revoked at"
                );
                for r in rows {
                    let revoked = r
                        .revoked_at
                        .map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string());
                    out.push_str(&format!(
                        "\n{:>6}  {:>6}  {:<6}  {:<19}  {:<19}  {}",
                        r.id,
                        r.agent_id,
                        if r.usable { "yes" } else { "no" },
                        r.created_at.format("%Y-%m-%d %H:%M:%S"),
                        revoked,
                        show(&r.label)
                    ));
                }
                out
            })
        }
        KeyCommand::Revoke(ById { id, json }) => revoke(pool, id, json).await,
    }
}

/// `key revoke ID` and its older spelling `revoke-key ID`.
pub async fn revoke(pool: &PgPool, id: i64, json: bool) -> CliResult {
    let r: RevokedKey = tenancy::revoke_api_key(pool, id).await?;
    if r.usable_keys == 0 {
        warn_unusable(r.network_id);
    }
    emit(json, &r, |r| format!("revoked API key {}", r.api_key_id))
}
