//! Layered, typed configuration: built-in defaults, an optional TOML file, then environment
//! variables prefixed `CASE_INTAKE__` (double underscore between levels), validated at start.

use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The built-in defaults: they reach the PostgreSQL and RabbitMQ of a developer machine.
const DEFAULTS: &str = include_str!("../../config/default.toml");

/// Environment variables with this prefix override the file: `CASE_INTAKE__AMQP__PREFETCH=500`.
pub const ENV_PREFIX: &str = "CASE_INTAKE";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub intake: IntakeSettings,
    pub outbox: OutboxSettings,
    pub events: EventSettings,
    pub shutdown: ShutdownSettings,
    pub log: LogSettings,
    pub http: HttpSettings,
    pub crypto: CryptoSettings,
}

/// Keys for encryption at rest (see `crypto`). Every key is 32 bytes as 64 hex digits.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoSettings {
    /// Id of the key that seals new values; older keys stay listed to open old values.
    pub active_key: String,
    /// Key id → key.
    pub keys: std::collections::BTreeMap<String, SecretString>,
    /// Key of the SSN HMAC. Changing it breaks matching against stored HMACs.
    pub hmac_key: SecretString,
    /// Optional TOML file with `hmac_key = "…"` and a `[keys]` table, merged over the above
    /// (for secrets mounted as files).
    pub keys_file: String,
}

impl std::fmt::Debug for CryptoSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoSettings")
            .field("active_key", &self.active_key)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("keys_file", &self.keys_file)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: std::collections::BTreeMap<String, String>,
    hmac_key: Option<String>,
}

impl CryptoSettings {
    fn file(&self) -> Result<Option<KeysFile>, String> {
        if self.keys_file.is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.keys_file)
            .map_err(|e| format!("crypto.keys_file {}: {e}", self.keys_file))?;
        toml::from_str(&text)
            .map(Some)
            .map_err(|e| format!("crypto.keys_file {}: {}", self.keys_file, e.message()))
    }

    /// Every key (settings, then the keys file), as hex.
    pub fn all_keys(&self) -> Result<Vec<(String, String)>, String> {
        let mut keys: std::collections::BTreeMap<String, String> = self
            .keys
            .iter()
            .map(|(id, k)| (id.clone(), k.expose_secret().to_owned()))
            .collect();
        if let Some(file) = self.file()? {
            keys.extend(file.keys);
        }
        Ok(keys.into_iter().collect())
    }

    /// The HMAC key, as hex (the keys file wins).
    pub fn hmac_key(&self) -> Result<String, String> {
        Ok(self
            .file()?
            .and_then(|f| f.hmac_key)
            .unwrap_or_else(|| self.hmac_key.expose_secret().to_owned()))
    }

    /// The keys as bytes, checked: every key 32 bytes of hex, the active key among them. The
    /// vault (`store::crypto`) is built from this, and loading settings refuses what fails it.
    pub fn key_material(&self) -> Result<KeyMaterial, String> {
        let mut keys = Vec::new();
        for (id, hex_key) in self.all_keys()? {
            keys.push((
                id.clone(),
                key_bytes(&format!("crypto.keys.{id}"), &hex_key)?,
            ));
        }
        if !keys.iter().any(|(id, _)| *id == self.active_key) {
            return Err(format!(
                "crypto.active_key {:?} is not among crypto.keys",
                self.active_key
            ));
        }
        Ok(KeyMaterial {
            active: self.active_key.clone(),
            keys,
            hmac_key: key_bytes("crypto.hmac_key", &self.hmac_key()?)?,
        })
    }
}

/// Checked key bytes of [`CryptoSettings`].
pub struct KeyMaterial {
    /// The id of the key new values are sealed with.
    pub active: String,
    /// Every key by id: 32 bytes each.
    pub keys: Vec<(String, [u8; 32])>,
    /// The HMAC key (SSN matching, retry-count tags).
    pub hmac_key: [u8; 32],
}

fn key_bytes(name: &str, hex_key: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(hex_key.trim()).map_err(|_| format!("{name} must be hex"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{name} must be 32 bytes (64 hex digits)"))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of the health, metrics and counties server; empty turns it off.
    pub address: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Holds a password in most deployments, so it is never printed. TLS: add
    /// `sslmode=require` (or `verify-full` with `sslrootcert=…`) to the URL.
    pub url: SecretString,
    /// A file whose content replaces `url` (secrets mounted as files).
    pub url_file: String,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    /// Bounds every attempt to open a connection (a server that accepts TCP but never
    /// answers), so a command fails with a message instead of hanging.
    pub connect_timeout_ms: u64,
    /// Bounds how long a window waits on a household lock before it is retried as transient.
    pub lock_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    pub idle_in_transaction_timeout_ms: u64,
    /// Create the database named in `url` when it does not exist.
    pub create_database: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// `amqp://` or, for TLS, `amqps://`: the one-endpoint form of `urls`.
    pub url: SecretString,
    /// A file whose content replaces `url` (secrets mounted as files).
    pub url_file: String,
    /// Several endpoints of one cluster (TOML array; `CASE_INTAKE__AMQP__URLS` as a
    /// comma-separated list), tried in a shuffled order on every (re)connect. Setting both
    /// this and `url` (or `url_file`) is refused.
    #[serde(default, deserialize_with = "url_list")]
    pub urls: Option<Vec<SecretString>>,
    /// Bounds the connect to one endpoint before the next is tried.
    pub endpoint_timeout_ms: u64,
    /// Replicas of each quorum queue when it is declared (`x-quorum-initial-group-size`);
    /// RabbitMQ caps it at the number of cluster nodes, so 3 also works on a single node.
    pub quorum_initial_group_size: u16,
    pub intake_queue: String,
    pub events_exchange: String,
    pub created_routing_key: String,
    pub failed_routing_key: String,
    /// Routing key of `case.intake_resolved` events.
    pub resolved_routing_key: String,
    /// Routing key of `case.matched` events (an intake linked to an existing case).
    pub matched_routing_key: String,
    pub prefetch: u16,
    /// Declare queues and exchanges at start; off when operators import definitions instead.
    pub declare_topology: bool,
    pub connect_timeout_ms: u64,
    pub heartbeat_secs: u16,
    /// How long an intake waits in the retry queue (its message TTL) before it returns to the
    /// intake queue. Changing it needs the retry queue re-created (queue arguments are fixed).
    pub retry_delay_ms: u64,
}

/// `urls` as a TOML array or as one comma-separated string (the environment form).
fn url_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<SecretString>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        One(String),
        Many(Vec<String>),
    }
    let items = match Form::deserialize(d)? {
        Form::One(s) => s.split(',').map(str::to_owned).collect::<Vec<_>>(),
        Form::Many(v) => v,
    };
    Ok(Some(
        items
            .into_iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .map(SecretString::from)
            .collect(),
    ))
}

impl AmqpSettings {
    /// The configured endpoints: `urls`, or `url` alone.
    pub fn endpoint_urls(&self) -> Vec<&str> {
        match &self.urls {
            Some(urls) => urls.iter().map(|u| u.expose_secret()).collect(),
            None => vec![self.url.expose_secret()],
        }
    }

    /// Every endpoint's URL as the service's lapin connections use it (see
    /// [`Self::with_session_params`]).
    pub fn connection_urls(&self) -> Vec<String> {
        self.endpoint_urls()
            .into_iter()
            .map(|u| self.with_session_params(u))
            .collect()
    }

    pub fn endpoint_timeout(&self) -> Duration {
        Duration::from_millis(self.endpoint_timeout_ms)
    }

    /// `url` with the heartbeat and the frame size the stacks are sized for
    /// (src/infra/stack.rs), unless the URL sets them itself.
    fn with_session_params(&self, url: &str) -> String {
        let mut url = url.to_owned();
        for (name, value) in [
            ("heartbeat", self.heartbeat_secs.to_string()),
            ("frame_max", crate::infra::stack::FRAME_MAX.to_string()),
        ] {
            if !url.contains(&format!("{name}=")) {
                let sep = if url.contains('?') { '&' } else { '?' };
                url = format!("{url}{sep}{name}={value}");
            }
        }
        url
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeSettings {
    /// Deliveries processed together in one transaction.
    pub window_size: usize,
    /// How long a window waits for more deliveries once it has one.
    pub window_wait_ms: u64,
    /// Concurrent consumers (each its own channel and windows).
    pub consumers: usize,
    pub max_body_bytes: usize,
    pub max_depth: usize,
    /// Re-runs of a window's transaction after a transient database error.
    pub transient_retries: usize,
    /// Deliveries of an intake through the retry queue before it fails `retries_exhausted`.
    pub max_attempts: u32,
    /// How long a window is held (unacked) while PostgreSQL is unreachable before its
    /// deliveries are handed back; below the broker's 30-minute consumer ack timeout.
    pub outage_hold_ms: u64,
    /// How long message keys (and resolved failed intakes) are remembered.
    pub dedup_retention_days: u32,
    /// `/healthz` fails when messages wait in the intake queue and no window has completed
    /// for this long (outside a database outage), so that the orchestrator restarts a stuck
    /// worker.
    pub stall_limit_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    pub batch_size: i64,
    /// How often the relay sweeps for rows no window of this process handed it.
    pub poll_interval_ms: u64,
    /// How long the relay waits for the broker's confirms of a batch (its transaction stays
    /// open meanwhile); unconfirmed events are published again.
    pub confirm_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    /// CloudEvents `source` attribute.
    pub source: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `auto` (text on a terminal, JSON otherwise), `text` or `json`.
    pub format: String,
    /// A tracing `EnvFilter` directive; `RUST_LOG` wins when set.
    pub filter: String,
}

/// Why the configuration was refused; printed at start, then the process exits.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Defaults, then `file` if given, then `CASE_INTAKE__*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load_with_env(file, None)
    }

    /// [`Settings::load`] with `env` read in place of the process environment when given:
    /// tests pass their variables here instead of changing the process-wide environment,
    /// which every thread of a test binary shares.
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<&config::Map<String, String>>,
    ) -> Result<Self, SettingsError> {
        let environment = || {
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(env.cloned())
        };
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        // The same sources without the defaults: whether the operator set `amqp.url` (the
        // defaults always do), which together with `amqp.urls` is refused.
        let mut given = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
            given = given.add_source(config::File::from(path).required(true));
        }
        let url_given = given
            .add_source(environment())
            .build()?
            .get_string("amqp.url")
            .is_ok();
        let mut settings: Settings = builder
            .add_source(environment())
            .build()?
            .try_deserialize()?;
        settings.read_secret_files()?;
        settings.check_endpoints(url_given)?;
        settings.check()?;
        Ok(settings)
    }

    /// `amqp.urls` and `amqp.url` are two forms of one setting: one of them, and a list that
    /// names at least one endpoint.
    fn check_endpoints(&self, url_given: bool) -> Result<(), SettingsError> {
        let Some(urls) = &self.amqp.urls else {
            return Ok(());
        };
        if url_given || !self.amqp.url_file.is_empty() {
            return Err(SettingsError::Invalid(
                "amqp.url (or amqp.url_file) and amqp.urls are both set: use one of them".into(),
            ));
        }
        if urls.is_empty() {
            return Err(SettingsError::Invalid(
                "amqp.urls must list at least one endpoint".into(),
            ));
        }
        Ok(())
    }

    fn read_secret_files(&mut self) -> Result<(), SettingsError> {
        let read = |name: &str, path: &str| {
            std::fs::read_to_string(path)
                .map(|s| SecretString::from(s.trim().to_owned()))
                .map_err(|e| SettingsError::Invalid(format!("{name} {path}: {e}")))
        };
        if !self.database.url_file.is_empty() {
            self.database.url = read("database.url_file", &self.database.url_file)?;
        }
        if !self.amqp.url_file.is_empty() {
            self.amqp.url = read("amqp.url_file", &self.amqp.url_file)?;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), SettingsError> {
        let mut problems = self.url_problems();
        for (name, value) in [
            ("amqp.intake_queue", &self.amqp.intake_queue),
            ("amqp.events_exchange", &self.amqp.events_exchange),
            ("amqp.created_routing_key", &self.amqp.created_routing_key),
            ("amqp.failed_routing_key", &self.amqp.failed_routing_key),
            ("amqp.resolved_routing_key", &self.amqp.resolved_routing_key),
            ("amqp.matched_routing_key", &self.amqp.matched_routing_key),
            ("events.source", &self.events.source),
        ] {
            if value.trim().is_empty() || value.len() > 255 {
                problems.push(format!("{name} must be 1 to 255 characters"));
            }
        }
        for (name, value) in self.positive_numbers() {
            if value == 0 {
                problems.push(format!("{name} must be greater than 0"));
            }
        }
        if self.intake.window_size > self.amqp.prefetch as usize {
            problems.push("intake.window_size must not exceed amqp.prefetch".into());
        }
        // Each consumer holds one connection during its window; the relay needs one more.
        if self.intake.consumers as u32 + 1 > self.database.max_connections {
            problems.push("database.max_connections must exceed intake.consumers".into());
        }
        if self.intake.outage_hold_ms >= 25 * 60 * 1000 {
            problems.push(
                "intake.outage_hold_ms must stay below the broker's 30-minute ack timeout (max 25 min)"
                    .into(),
            );
        }
        if !self.http.address.is_empty()
            && self.http.address.parse::<std::net::SocketAddr>().is_err()
        {
            problems.push("http.address must be host:port (e.g. 0.0.0.0:9090) or empty".into());
        }
        if !["auto", "text", "json"].contains(&self.log.format.as_str()) {
            problems.push("log.format must be auto, text or json".into());
        }
        if let Err(e) = self.crypto.key_material() {
            problems.push(e);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError::Invalid(problems.join("; ")))
        }
    }

    /// The connection URLs' schemes, and a frame_max the io thread's stack can take.
    fn url_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let url = self.database.url.expose_secret();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            problems.push("database.url must start with postgres:// or postgresql://".into());
        }
        let key = if self.amqp.urls.is_some() {
            "amqp.urls"
        } else {
            "amqp.url"
        };
        for amqp in self.amqp.endpoint_urls() {
            if !(amqp.starts_with("amqp://") || amqp.starts_with("amqps://")) {
                problems.push(format!("{key} must start with amqp:// or amqps://"));
            }
            // The deepest header the AMQP client may have to parse is bounded by the frame
            // size; the io thread's stack is sized for frames of at most this (src/stack.rs).
            if frame_max_of(amqp).is_some_and(|f| f == 0 || f > crate::infra::stack::FRAME_MAX) {
                problems.push(format!(
                    "{key} frame_max must be between 1 and {}",
                    crate::infra::stack::FRAME_MAX
                ));
            }
        }
        problems.dedup();
        problems
    }

    /// Settings where 0 means nothing works (a queue without consumers, a sweep that spins).
    fn positive_numbers(&self) -> [(&'static str, u64); 16] {
        [
            ("amqp.endpoint_timeout_ms", self.amqp.endpoint_timeout_ms),
            (
                "amqp.quorum_initial_group_size",
                self.amqp.quorum_initial_group_size as u64,
            ),
            (
                "database.connect_timeout_ms",
                self.database.connect_timeout_ms,
            ),
            (
                "database.max_connections",
                self.database.max_connections as u64,
            ),
            ("amqp.prefetch", self.amqp.prefetch as u64),
            ("intake.window_size", self.intake.window_size as u64),
            ("intake.consumers", self.intake.consumers as u64),
            ("intake.max_body_bytes", self.intake.max_body_bytes as u64),
            ("intake.max_depth", self.intake.max_depth as u64),
            ("outbox.batch_size", self.outbox.batch_size.max(0) as u64),
            ("outbox.confirm_timeout_ms", self.outbox.confirm_timeout_ms),
            // The sweep is the relay's only way to rows no window handed it: 0 would spin.
            ("outbox.poll_interval_ms", self.outbox.poll_interval_ms),
            ("intake.max_attempts", self.intake.max_attempts as u64),
            ("amqp.retry_delay_ms", self.amqp.retry_delay_ms),
            ("intake.stall_limit_ms", self.intake.stall_limit_ms),
            (
                "intake.dedup_retention_days",
                self.intake.dedup_retention_days as u64,
            ),
        ]
    }
}

impl DatabaseSettings {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// The `frame_max` query parameter of an AMQP URL, if it sets one (unparsable counts as 0).
pub fn frame_max_of(url: &str) -> Option<u32> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == "frame_max").then(|| value.parse().unwrap_or(0))
    })
}
