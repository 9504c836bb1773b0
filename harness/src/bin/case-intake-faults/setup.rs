//! The run's database, broker names and worker-log folder, and the lock that keeps two suite runs
//! from sharing the machine's services.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

use case_intake::admin::provision;
use case_intake::infra::db as service_db;
use case_intake::infra::settings::Settings;
use case_intake_harness::db;
use case_intake_harness::db::LOCAL_SERVER;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::amqp::declare_broker;
use crate::{DB_NAME, Res};

pub struct Setup {
    pub suffix: String,
    pub db_url: String,
    pub pool: PgPool,
    pub intake_queue: String,
    pub events_exchange: String,
    pub capture_queue: String,
    pub token: String,
    pub county: i64,
    pub dir: PathBuf,
}

/// The PostgreSQL server of the run: the pair's address with `--db-failover`, else the
/// machine's own.
pub static SERVER: OnceLock<String> = OnceLock::new();

pub fn server() -> &'static str {
    SERVER.get().map_or(LOCAL_SERVER, String::as_str)
}

pub async fn drop_database() -> Res<()> {
    Ok(db::drop_database(server(), DB_NAME).await?)
}

/// The suite's own pool; its `application_name` keeps it out of the `terminate` fault.
pub fn suite_pool(url: &str) -> Res<PgPool> {
    let options = PgConnectOptions::from_str(url)?.application_name("case-intake-faults");
    Ok(PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options))
}

pub async fn setup() -> Res<Setup> {
    let suffix = Uuid::new_v4().simple().to_string()[..10].to_owned();
    drop_database().await?;
    let mut settings = Settings::load(None)?;
    let url = db::database_url(server(), DB_NAME);
    settings.database.url = url.clone().into();
    settings.database.create_database = true;
    settings.amqp.intake_queue = format!("faults.{suffix}.intake");
    settings.amqp.events_exchange = format!("faults.{suffix}.events");
    let migrated = service_db::migrate(&settings.database).await?;
    let p = provision::provision(
        &migrated,
        "faults network",
        "Faults agency",
        "faults agent",
        &["Kings".into(), "Queens".into()],
    )
    .await?;
    migrated.close().await;
    let capture_queue = format!("faults.{suffix}.captured-events");
    declare_broker(&settings, &capture_queue).await?;

    let dir = std::env::temp_dir().join(format!("case-intake-faults-{suffix}"));
    std::fs::create_dir_all(&dir)?;
    Ok(Setup {
        pool: suite_pool(&url)?,
        db_url: url,
        intake_queue: settings.amqp.intake_queue,
        events_exchange: settings.amqp.events_exchange,
        capture_queue,
        token: p.token,
        county: p.county_ids[0],
        dir,
        suffix,
    })
}

/// Serialises suite runs on one machine: the database name is fixed and the faults hit the
/// shared services, so a second run would drop the first one's database mid-run. The lock is
/// released when the process exits, however it exits.
pub async fn run_lock() -> Res<std::fs::File> {
    let path = std::env::temp_dir().join("case-intake-faults.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    let deadline = Instant::now() + Duration::from_secs(30 * 60);
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                if !told {
                    say!("another fault run holds {}; waiting", path.display());
                    told = true;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(format!("{} still held after 30 min", path.display()).into());
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
}
