//! Re-encryption under the active key (`case-intake rotate-key`): after a new key is made
//! active, old values are re-sealed in batches so the old key can eventually be removed.

use sqlx::{PgPool, Row};

use crate::store::crypto::{CryptoError, Purpose, Vault};

/// Rows re-sealed per transaction.
const BATCH: i64 = 1000;

/// What a rotation did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rotated {
    pub ssns: u64,
    pub payloads: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("row {id}: {source}")]
    Crypto { id: i64, source: CryptoError },
}

/// Re-seals one batch of `table`; returns how many rows changed.
async fn rotate_batch(
    pool: &PgPool,
    vault: &Vault,
    purpose: Purpose,
    select: &'static str,
    update: &'static str,
) -> Result<u64, RotateError> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(select)
        .bind(vault.active_key())
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut sealed = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.try_get(0)?;
        let value: Vec<u8> = row.try_get(1)?;
        let key_id: String = row.try_get(2)?;
        let plain = vault
            .open(purpose, &key_id, &value)
            .map_err(|source| RotateError::Crypto { id, source })?;
        ids.push(id);
        sealed.push(vault.seal(purpose, &plain));
    }
    if ids.is_empty() {
        return Ok(0);
    }
    sqlx::query(update)
        .bind(&ids)
        .bind(&sealed)
        .bind(vault.active_key())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ids.len() as u64)
}

/// Re-seals every value not sealed with the active key; `progress` after each batch.
pub async fn rotate(
    pool: &PgPool,
    vault: &Vault,
    mut progress: impl FnMut(&Rotated),
) -> Result<Rotated, RotateError> {
    let mut done = Rotated::default();
    loop {
        let n = rotate_batch(
            pool,
            vault,
            Purpose::Ssn,
            "SELECT id, ss_number_sealed, ss_number_key_id FROM cases
              WHERE ss_number_key_id IS NOT NULL AND ss_number_key_id <> $1
              ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
            "UPDATE cases c SET ss_number_sealed = u.s, ss_number_key_id = $3
               FROM unnest($1::bigint[], $2::bytea[]) AS u(id, s) WHERE c.id = u.id",
        )
        .await?;
        done.ssns += n;
        if n == 0 {
            break;
        }
        progress(&done);
    }
    loop {
        let n = rotate_batch(
            pool,
            vault,
            Purpose::FailedPayload,
            "SELECT id, payload_sealed, payload_key_id FROM failed_intakes
              WHERE payload_key_id <> $1
              ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
            "UPDATE failed_intakes f SET payload_sealed = u.s, payload_key_id = $3
               FROM unnest($1::bigint[], $2::bytea[]) AS u(id, s) WHERE f.id = u.id",
        )
        .await?;
        done.payloads += n;
        if n == 0 {
            break;
        }
        progress(&done);
    }
    Ok(done)
}
