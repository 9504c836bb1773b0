//! The PostgreSQL pool: session settings that bound every wait, database creation and
//! migrations (`migrate`, for `run` and `migrate` only), and opening a database that must
//! already exist at the binary's schema (`open_current`, for every other command), and
//! recycling the pool's connections after an outage (`recycle`).

use std::future::Future;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use sqlx::migrate::{Migrate, MigrateError};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::infra::settings::DatabaseSettings;

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why a database could not be opened; every message names the server and the database (never
/// the URL, which may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "waited {waited_ms} ms for PostgreSQL at {target} to answer a connection; giving up (database.connect_timeout_ms)"
    )]
    Timeout { target: Target, waited_ms: u64 },
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect { target: Target, source: sqlx::Error },
    #[error("database {0:?} does not exist; run `case-intake migrate` first")]
    Missing(String),
    #[error(
        "database {database:?} is behind this binary: migration {version} ({description}) is not applied; run `case-intake migrate` first"
    )]
    Behind {
        database: String,
        version: i64,
        description: String,
    },
    #[error(
        "database {database:?}: migration {version} failed part-way; repair it, then run `case-intake migrate`"
    )]
    Dirty { database: String, version: i64 },
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] MigrateError),
}

/// The server and database a connection is for, as messages show them.
#[derive(Debug, Clone)]
pub struct Target {
    server: String,
    database: String,
}

impl Target {
    fn of(options: &PgConnectOptions) -> Target {
        let server = match options.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        };
        // PostgreSQL's own default: a database named like the user.
        let database = options
            .get_database()
            .unwrap_or(options.get_username())
            .to_owned();
        Target { server, database }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (database {:?})", self.server, self.database)
    }
}

/// Runs a connection attempt for `target`, bounded by `limit`; a database that does not exist
/// is told apart from other refusals.
async fn bounded<T>(
    limit: Duration,
    target: &Target,
    attempt: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(limit, attempt).await {
        Err(_) => Err(DbError::Timeout {
            target: target.clone(),
            waited_ms: limit.as_millis() as u64,
        }),
        // invalid_catalog_name: the database named in the URL is not there.
        Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("3D000") => {
            Err(DbError::Missing(target.database.clone()))
        }
        Ok(Err(source)) => Err(DbError::Connect {
            target: target.clone(),
            source,
        }),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Connect options with the timeouts of the settings, so that a lock wait or a stuck
/// statement becomes an error we classify instead of a hang; `application_name` lets an
/// operator find (and a fault test terminate) the worker's sessions.
pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, sqlx::Error> {
    let options = PgConnectOptions::from_str(settings.url.expose_secret())?
        .application_name("case-intake")
        .options([
            ("lock_timeout", settings.lock_timeout_ms.to_string()),
            (
                "statement_timeout",
                settings.statement_timeout_ms.to_string(),
            ),
            (
                "idle_in_transaction_session_timeout",
                settings.idle_in_transaction_timeout_ms.to_string(),
            ),
        ])
        .log_statements(tracing::log::LevelFilter::Trace);
    Ok(options)
}

/// Creates the database of `settings.url` when it does not exist yet.
pub async fn ensure_database(settings: &DatabaseSettings) -> Result<(), DbError> {
    let options = connect_options(settings)?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let admin_options = options.clone().database("postgres");
    let target = Target::of(&admin_options);
    let mut admin = bounded(settings.connect_timeout(), &target, admin_options.connect()).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let sql = format!("CREATE DATABASE {quoted}");
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
        {
            Ok(_) => {}
            // Another worker created it at the same time.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {}
            Err(e) => return Err(e.into()),
        }
    }
    admin.close().await?;
    Ok(())
}

/// When [`recycle`] was last asked, in microseconds since [`clock`]'s start; 0 for never.
///
/// Process-wide rather than per pool: the pool is cloned into every part of the worker and a
/// sqlx pool carries no state of ours, and a process talks to one database. A recycle asked
/// by one part (or by a test beside others) only costs the other pools a reconnect each.
static RECYCLED_AT_US: AtomicU64 = AtomicU64::new(0);

/// Microseconds since the first call; the clock of [`RECYCLED_AT_US`].
fn clock() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Discards, at their next acquire, every pooled connection made before now. Called on an
/// outage-class error (see `infra::classify`): after a failover the pool may hold sessions
/// that still answer but go to the wrong server — a demoted primary, a server made read-only,
/// a proxy's old backend — and sqlx's ping before acquire only catches dead ones. New
/// connections go through the database address again, to wherever it points now.
pub fn recycle() {
    RECYCLED_AT_US.fetch_max(clock().max(1), Ordering::Relaxed);
}

/// Whether a connection of age `age` was made after the last [`recycle`].
fn made_since_recycle(age: Duration) -> bool {
    let made_at = clock().saturating_sub(age.as_micros() as u64);
    made_at >= RECYCLED_AT_US.load(Ordering::Relaxed)
}

/// Opens the pool (connections are made on demand, so a database outage at start is retried
/// by the caller rather than failing here). Connections made before the last [`recycle`] are
/// closed instead of handed out.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options = connect_options(settings)?;
    // A Unix-socket connection has no Nagle delay; a TCP one gets TCP_NODELAY (see `nodelay`).
    let tcp_port = options.get_socket().is_none().then(|| options.get_port());
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout())
        .before_acquire(|_conn, meta| Box::pin(async move { Ok(made_since_recycle(meta.age)) }))
        .after_connect(move |_conn, _meta| {
            Box::pin(async move {
                if let Some(port) = tcp_port {
                    crate::infra::nodelay::apply(port);
                }
                Ok(())
            })
        })
        .connect_lazy_with(options))
}

/// Creates the database if asked to, then applies pending migrations. Only `run` and
/// `migrate` call this; every other command opens with [`open_current`].
pub async fn migrate(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    run_migrations(settings).await?;
    Ok(pool(settings)?)
}

/// Creates the database if asked to and applies migrations. They run on a one-connection pool of their own
/// whose `lock_timeout` is 0, so workers starting together wait for each other's migration
/// lock (an advisory lock) instead of failing on the configured lock timeout.
pub async fn run_migrations(settings: &DatabaseSettings) -> Result<(), DbError> {
    if settings.create_database {
        ensure_database(settings).await?;
    }
    let options = PgConnectOptions::from_str(settings.url.expose_secret())?
        .application_name("case-intake migrate")
        // The migrator creates its table with IF NOT EXISTS on every run; the server's notice
        // that it exists already would be logged at INFO by every start.
        .options([("lock_timeout", "0"), ("client_min_messages", "warning")]);
    let target = Target::of(&options);
    let migrations = bounded(
        settings.connect_timeout(),
        &target,
        PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(settings.acquire_timeout())
            .connect_with(options),
    )
    .await?;
    let result = MIGRATOR.run(&migrations).await;
    migrations.close().await;
    result?;
    Ok(())
}

/// Opens the pool of a database that must exist and carry every migration of this binary:
/// commands other than `run` and `migrate` never create or change a schema, so a mistyped
/// database name or a database not yet migrated is refused with a message saying so.
pub async fn open_current(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    let options = connect_options(settings)?;
    let target = Target::of(&options);
    let mut conn = bounded(settings.connect_timeout(), &target, options.connect()).await?;
    let checked = check_schema(&mut conn, &target.database).await;
    conn.close().await?;
    checked?;
    Ok(pool(settings)?)
}

/// Refuses a schema with a failed migration or without one of the binary's migrations. A
/// database ahead of the binary is accepted: migrations are additive, so an older binary keeps
/// working during an upgrade.
async fn check_schema(conn: &mut PgConnection, database: &str) -> Result<(), DbError> {
    let table = MIGRATOR.table_name.as_ref();
    let applied = match conn.list_applied_migrations(table).await {
        Ok(applied) => applied,
        // undefined_table: never migrated at all.
        Err(MigrateError::Execute(sqlx::Error::Database(e)))
            if e.code().as_deref() == Some("42P01") =>
        {
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(version) = conn.dirty_version(table).await.ok().flatten() {
        return Err(DbError::Dirty {
            database: database.to_owned(),
            version,
        });
    }
    let missing = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .find(|m| !applied.iter().any(|a| a.version == m.version));
    match missing {
        Some(m) => Err(DbError::Behind {
            database: database.to_owned(),
            version: m.version,
            description: m.description.to_string(),
        }),
        None => Ok(()),
    }
}
