//! `case-intake failed edit` over a selection: the same field changes applied to every selected
//! open failed intake, each run as its key's next attempt (resolved `edited`, audited in the
//! window's transaction), in batches through the loop a replay uses (paced, or previewed and
//! rolled back on a dry run).
//!
//! A row the changes cannot apply to (a payload that is not a JSON object, truncated, sealed
//! with a key no longer configured, without a key, or lacking a field to unset) is skipped and
//! counted, its id listed; its payload is never shown.

use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use crate::admin::edit::{self, Changes, EditError};
use crate::admin::failed::{self, ReplayReport, Selected, Stored};
use crate::admin::pacing::BulkOptions;
use crate::intake::window::WindowContext;

/// The changes of a bulk edit: `--set` pairs and `--unset` names (never a whole body).
#[derive(Debug, Clone)]
pub struct BulkEdit {
    pub set: Vec<(String, Value)>,
    pub unset: Vec<String>,
    /// Required unless `options.dry_run`: recorded as `resolved_by` and in each audit row.
    pub operator: Option<String>,
    pub options: BulkOptions,
}

/// What a bulk edit came to (a dry run: what it would come to now).
#[derive(Debug, Clone, Serialize)]
pub struct BulkEditReport {
    /// Selected, created, failed again (by code), already done (`duplicate`), skipped,
    /// resolved meanwhile (`already_resolved`).
    #[serde(flatten)]
    pub totals: ReplayReport,
    /// The failed intakes skipped: the changes cannot apply to their stored payloads.
    pub skipped_ids: Vec<i64>,
    pub operator: Option<String>,
    /// The field names changed, redacted.
    pub fields_set: Vec<String>,
    pub fields_unset: Vec<String>,
}

/// Edits (or previews the edit of) every failed intake of `selected` still open when its batch
/// runs (see [`failed::select_open`]; the others are counted `already_resolved`), calling
/// `progress` once per batch.
pub async fn edit_selected(
    pool: &PgPool,
    ctx: &WindowContext,
    selected: &Selected,
    req: BulkEdit,
    mut progress: impl FnMut(&ReplayReport),
) -> Result<BulkEditReport, EditError> {
    let names: Vec<String> = req.set.iter().map(|(n, _)| n.clone()).collect();
    // The names as audited and reported (redacted).
    let shown = edit::audit_of(String::new(), &names, &req.unset, false);
    let changes = Changes::Fields {
        set: req.set,
        unset: req.unset,
    };
    edit::check_changes(&changes)?;
    let operator = match (&req.operator, req.options.dry_run) {
        (Some(op), _) => Some(edit::check_operator(op)?),
        (None, true) => None,
        (None, false) => return Err(EditError::NoOperator),
    };
    let who = operator.clone().unwrap_or_default();
    let mut skipped_ids = Vec::new();
    let dry_run = req.options.dry_run;
    let batch_of = |rows: Vec<Stored>, report: &mut ReplayReport| {
        let mut batch = Vec::new();
        for row in rows {
            match edit::corrected(&row, &changes, ctx, who.clone()) {
                Ok((mut envelope, audit)) => {
                    // A dry run writes no audit (as a single edit's): it may have no operator.
                    if !dry_run {
                        envelope.retried_by(operator.clone(), Some(audit));
                    }
                    batch.push(envelope);
                }
                Err(_) => {
                    report.skipped += 1;
                    skipped_ids.push(row.intake.id);
                }
            }
        }
        batch
    };
    let totals =
        failed::retry_batches(pool, ctx, selected, req.options, batch_of, |r| progress(r)).await?;
    Ok(BulkEditReport {
        totals,
        skipped_ids,
        operator: operator.map(|o| crate::infra::redact::display_text(&o)),
        fields_set: shown.fields_set,
        fields_unset: shown.fields_unset,
    })
}
