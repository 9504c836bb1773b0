//! Re-sealing under the active key: the sealed columns (SSNs of cases, payloads of failed
//! intakes), read in batches of rows sealed with another key and written back re-sealed.
//! Operator statements: they act on every network.

use sqlx::PgConnection;

use crate::store::crypto::Purpose;

/// A column of sealed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedColumn {
    /// `cases.ss_number_sealed` (with `ss_number_key_id`).
    CaseSsns,
    /// `failed_intakes.payload_sealed` (with `payload_key_id`).
    FailedPayloads,
}

impl SealedColumn {
    /// What the column's values are sealed for.
    pub fn purpose(self) -> Purpose {
        match self {
            Self::CaseSsns => Purpose::Ssn,
            Self::FailedPayloads => Purpose::FailedPayload,
        }
    }

    /// Rows sealed with another key than `$1`, locked, oldest first, at most `$2`.
    fn select_stale(self) -> &'static str {
        match self {
            Self::CaseSsns => {
                "SELECT id, ss_number_sealed, ss_number_key_id FROM cases
                  WHERE ss_number_key_id IS NOT NULL AND ss_number_key_id <> $1
                  ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED"
            }
            Self::FailedPayloads => {
                "SELECT id, payload_sealed, payload_key_id FROM failed_intakes
                  WHERE payload_key_id <> $1
                  ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED"
            }
        }
    }

    /// Writes the values `$2` of the rows `$1`, sealed with the key `$3`.
    fn update_sealed(self) -> &'static str {
        match self {
            Self::CaseSsns => {
                "UPDATE cases c SET ss_number_sealed = u.s, ss_number_key_id = $3
                   FROM unnest($1::bigint[], $2::bytea[]) AS u(id, s) WHERE c.id = u.id"
            }
            Self::FailedPayloads => {
                "UPDATE failed_intakes f SET payload_sealed = u.s, payload_key_id = $3
                   FROM unnest($1::bigint[], $2::bytea[]) AS u(id, s) WHERE f.id = u.id"
            }
        }
    }
}

/// A value sealed with a key other than the active one.
#[derive(Debug, Clone)]
pub struct StaleSeal {
    pub id: i64,
    pub sealed: Vec<u8>,
    pub key_id: String,
}

/// Locks and returns up to `limit` values of `column` not sealed with `active_key` (rows
/// another rotation holds are skipped), in id order.
pub async fn lock_stale(
    tx: &mut PgConnection,
    column: SealedColumn,
    active_key: &str,
    limit: i64,
) -> Result<Vec<StaleSeal>, sqlx::Error> {
    let rows: Vec<(i64, Vec<u8>, String)> = sqlx::query_as(column.select_stale())
        .bind(active_key)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, sealed, key_id)| StaleSeal { id, sealed, key_id })
        .collect())
}

/// Writes `sealed[i]`, sealed with `active_key`, as the value of `column` of row `ids[i]`.
pub async fn store_resealed(
    tx: &mut PgConnection,
    column: SealedColumn,
    ids: &[i64],
    sealed: &[Vec<u8>],
    active_key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(column.update_sealed())
        .bind(ids)
        .bind(sealed)
        .bind(active_key)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
