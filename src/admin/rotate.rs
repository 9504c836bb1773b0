//! Re-encryption under the active key (`case-intake rotate-key`): after a new key is made
//! active, old values are re-sealed in batches so the old key can eventually be removed. The
//! statements are in `store::rotate`.

use sqlx::PgPool;

use crate::store::crypto::{CryptoError, Vault};
use crate::store::rotate::{SealedColumn, lock_stale, store_resealed};

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

/// Re-seals one batch of `column`; returns how many rows changed.
async fn rotate_batch(
    pool: &PgPool,
    vault: &Vault,
    column: SealedColumn,
) -> Result<u64, RotateError> {
    let mut tx = pool.begin().await?;
    let stale = lock_stale(&mut tx, column, vault.active_key(), BATCH).await?;
    if stale.is_empty() {
        return Ok(0);
    }
    let purpose = column.purpose();
    let mut ids = Vec::with_capacity(stale.len());
    let mut sealed = Vec::with_capacity(stale.len());
    for s in &stale {
        let plain = vault
            .open(purpose, &s.key_id, &s.sealed)
            .map_err(|source| RotateError::Crypto { id: s.id, source })?;
        ids.push(s.id);
        sealed.push(vault.seal(purpose, &plain));
    }
    store_resealed(&mut tx, column, &ids, &sealed, vault.active_key()).await?;
    tx.commit().await?;
    Ok(ids.len() as u64)
}

/// Re-seals every value of `column` not sealed with the active key, counting them in `done`;
/// `progress` after each batch.
async fn rotate_column(
    pool: &PgPool,
    vault: &Vault,
    column: SealedColumn,
    done: &mut Rotated,
    progress: &mut impl FnMut(&Rotated),
) -> Result<(), RotateError> {
    loop {
        let n = rotate_batch(pool, vault, column).await?;
        match column {
            SealedColumn::CaseSsns => done.ssns += n,
            SealedColumn::FailedPayloads => done.payloads += n,
        }
        if n == 0 {
            return Ok(());
        }
        progress(done);
    }
}

/// Re-seals every value not sealed with the active key, SSNs first, then failed payloads;
/// `progress` after each batch.
pub async fn rotate(
    pool: &PgPool,
    vault: &Vault,
    mut progress: impl FnMut(&Rotated),
) -> Result<Rotated, RotateError> {
    let mut done = Rotated::default();
    for column in [SealedColumn::CaseSsns, SealedColumn::FailedPayloads] {
        rotate_column(pool, vault, column, &mut done, &mut progress).await?;
    }
    Ok(done)
}
