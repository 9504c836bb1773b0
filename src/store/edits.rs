//! The audit of operators' edits of failed intakes (`failed_intake_edits`): written by the
//! window's transaction with the corrected attempt it audits, read by the operator's tools.
//!
//! Field names only, never values (a value may be an SSN); the names themselves go through
//! [`redact::display_text`], as a name could be SSN-shaped or hold control characters.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::infra::redact;
use crate::store::unnest::column;

/// What an operator changed in a failed intake, as the audit records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditAudit {
    pub operator: String,
    /// Names of the fields set (redacted when the row is written).
    pub fields_set: Vec<String>,
    /// Names of the fields removed (redacted when the row is written).
    pub fields_unset: Vec<String>,
    /// The whole body was replaced (`--body`).
    pub body_replaced: bool,
}

/// One audited edit: the failed intake it corrected and what the corrected attempt came to.
#[derive(Debug, Clone)]
pub struct EditRow {
    pub failed_intake_id: i64,
    pub message_key: String,
    pub audit: EditAudit,
    /// `created`, `failed` or `duplicate`.
    pub outcome: &'static str,
    /// The outcome event of the corrected attempt.
    pub event_id: Uuid,
}

/// Writes audit rows in the caller's transaction. The network is the edited failed intake's
/// own (what an operator looks an edit up by), not the one the attempt authenticated as; the
/// key is stored as `failed_intakes` stores it, and masked only where it is shown.
pub async fn insert_edits(
    tx: &mut PgConnection,
    rows: &[EditRow],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let names = |v: &[String]| -> String {
        let shown: Vec<String> = v.iter().map(|n| redact::display_text(n)).collect();
        // A text[] literal per row, built by PostgreSQL from JSON: no quoting done here.
        serde_json::to_string(&shown).unwrap_or_else(|_| "[]".into())
    };
    sqlx::query(
        "INSERT INTO failed_intake_edits (failed_intake_id, network_id, message_key, operator,
                                          edited_at, fields_set, fields_unset, body_replaced,
                                          outcome, event_id)
         SELECT u.id, f.network_id, u.k, u.op, $9,
                ARRAY(SELECT jsonb_array_elements_text(u.fs::jsonb)),
                ARRAY(SELECT jsonb_array_elements_text(u.fu::jsonb)),
                u.br, u.o, u.e
           FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                       $6::bool[], $7::text[], $8::uuid[])
             AS u(id, k, op, fs, fu, br, o, e)
           LEFT JOIN failed_intakes f ON f.id = u.id",
    )
    .bind(column(rows, |r| r.failed_intake_id))
    .bind(column(rows, |r| r.message_key.as_str()))
    .bind(column(rows, |r| r.audit.operator.as_str()))
    .bind(column(rows, |r| names(&r.audit.fields_set)))
    .bind(column(rows, |r| names(&r.audit.fields_unset)))
    .bind(column(rows, |r| r.audit.body_replaced))
    .bind(column(rows, |r| r.outcome))
    .bind(column(rows, |r| r.event_id))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One audited edit as read back.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EditRecord {
    pub id: i64,
    pub failed_intake_id: Option<i64>,
    pub network_id: Option<i64>,
    pub message_key: String,
    pub operator: String,
    pub edited_at: DateTime<Utc>,
    pub fields_set: Vec<String>,
    pub fields_unset: Vec<String>,
    pub body_replaced: bool,
    pub outcome: String,
    pub event_id: Uuid,
}

/// The audited edits of a message key (in one network, or in any), oldest first. Trusted: an
/// operator's read.
pub async fn edits_of(
    pool: &PgPool,
    message_key: &str,
    network: Option<i64>,
) -> Result<Vec<EditRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, failed_intake_id, network_id, message_key, operator, edited_at, fields_set,
                fields_unset, body_replaced, outcome, event_id
           FROM failed_intake_edits
          WHERE message_key = $1 AND ($2::bigint IS NULL OR network_id = $2)
          ORDER BY id",
    )
    .bind(message_key)
    .bind(network)
    .fetch_all(pool)
    .await
}
