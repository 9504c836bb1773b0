//! The PostgreSQL pool: session settings that bound every wait, database creation, migrations.

use std::str::FromStr;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::infra::settings::DatabaseSettings;

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

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
pub async fn ensure_database(settings: &DatabaseSettings) -> Result<(), sqlx::Error> {
    let options = connect_options(settings)?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = options.clone().database("postgres").connect().await?;
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
            Err(e) => return Err(e),
        }
    }
    admin.close().await?;
    Ok(())
}

/// Opens the pool (connections are made on demand, so a database outage at start is retried
/// by the caller rather than failing here).
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options = connect_options(settings)?;
    // A Unix-socket connection has no Nagle delay; a TCP one gets TCP_NODELAY (see `nodelay`).
    let tcp_port = options.get_socket().is_none().then(|| options.get_port());
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout())
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

/// Creates the database if asked to, then applies pending migrations.
pub async fn migrate(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    run_migrations(settings).await?;
    pool(settings)
}

/// Creates the database if asked to and applies migrations. They run on a one-connection pool of their own
/// whose `lock_timeout` is 0, so workers starting together wait for each other's migration
/// lock (an advisory lock) instead of failing on the configured lock timeout.
pub async fn run_migrations(settings: &DatabaseSettings) -> Result<(), sqlx::Error> {
    if settings.create_database {
        ensure_database(settings).await?;
    }
    let options = PgConnectOptions::from_str(settings.url.expose_secret())?
        .application_name("case-intake migrate")
        .options([("lock_timeout", "0")]);
    let migrations = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(settings.acquire_timeout())
        .connect_with(options)
        .await?;
    let result = MIGRATOR.run(&migrations).await;
    migrations.close().await;
    result?;
    Ok(())
}
