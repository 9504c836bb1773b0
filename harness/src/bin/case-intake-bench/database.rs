//! The benchmark's own database: created fresh, migrated, provisioned and preloaded; its size and
//! WAL position for the per-intake figures.

use case_intake::admin::provision;
use case_intake::admin::provision::Provisioned;
use case_intake::infra::db as service_db;
use case_intake::infra::settings::Settings;
use case_intake::store::crypto::Vault;
use case_intake_harness::checks;
use case_intake_harness::db;
use sqlx::PgPool;

use crate::Result;
use crate::args::{Args, Policy};
use crate::preload::{Preloaded, preload};

/// The benchmark's database: fresh (unless --keep-db), migrated, provisioned, preloaded.
pub async fn open_database(
    args: &Args,
    id: &str,
    settings: &Settings,
) -> Result<(PgPool, Provisioned, Preloaded)> {
    if !args.keep_db {
        db::drop_database(&args.pg, &args.db).await?;
    }
    let mut bench_db = settings.database.clone();
    bench_db.max_connections = 4;
    bench_db.statement_timeout_ms = 600_000;
    bench_db.create_database = true;
    let pool = service_db::migrate(&bench_db).await?;
    let net = provision::provision(
        &pool,
        &format!("bench {id}"),
        "Bench agency",
        "bench agent",
        &["Kings".into(), "Queens".into()],
    )
    .await?;
    let mut preloaded = Preloaded {
        count: args.preload,
        ..Preloaded::default()
    };
    if args.preload > 0 {
        // Into the measured network: matching looks up the caller's network only.
        let vault = Vault::from_settings(&settings.crypto)?;
        preloaded.first_person = preload(&pool, &net, vault, args.preload).await?;
    }
    preloaded.cases = checks::cases_in(&pool, net.network_id).await?;
    preloaded.outcomes = checks::outcome_rows(&pool, Some(net.network_id))
        .await?
        .len();
    Ok((pool, net, preloaded))
}

/// Sets the measured network's duplicate policy (read by workers started afterwards).
pub async fn set_policy(pool: &PgPool, network: i64, policy: Policy) -> Result<()> {
    sqlx::query("UPDATE networks SET duplicate_policy = $1 WHERE id = $2")
        .bind(policy.as_str())
        .bind(network)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn wal_lsn(pool: &PgPool) -> Result<String> {
    Ok(sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await?)
}

pub async fn db_size(pool: &PgPool) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(pool)
            .await?,
    )
}
