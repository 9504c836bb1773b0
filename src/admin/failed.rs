//! Failed intakes for operators: listing, inspection (SSN masked) and replay under the
//! original message key.
//!
//! What `list` and `show` return is for display: SSN-shaped text masked and control, bidi and
//! invisible characters escaped (see [`redact`]) in payloads, errors, keys and correlation ids,
//! so printing a hostile intake can neither leak an SSN nor drive the operator's terminal.
//! Replay reads the stored values, never these. The statements are in `store::failed`.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use crate::admin::pacing::BulkOptions;
use crate::domain::key::MessageKey;
use crate::infra::classify::{classify, retry_transient};
use crate::infra::redact;
use crate::intake::envelope::{Attempt, Envelope, Oversize, Retry};
use crate::intake::event::{ReplayInfo, Resolution};
use crate::intake::window::{self, Outcome, WindowContext};
use crate::store;
use crate::store::auth::TokenHash;
use crate::store::crypto::{CryptoError, Purpose, Vault};
use crate::store::failed::StoredFailure;

pub use crate::store::failed::{FailedIntake, Filter};

/// A row with its payload, for replay, edit and `show`.
pub(super) struct Stored {
    pub(super) intake: FailedIntake,
    /// Sealed with `payload_key_id` (see `crypto`).
    payload_sealed: Vec<u8>,
    payload_key_id: String,
    token_hash: Option<Vec<u8>>,
    /// Set when only a prefix of an oversized body was stored: a replay is refused by size
    /// again, as the whole body is gone.
    pub(super) oversize: Option<Oversize>,
}

impl Stored {
    pub(super) fn payload(&self, vault: &Vault) -> Result<Vec<u8>, CryptoError> {
        vault.open(
            Purpose::FailedPayload,
            &self.payload_key_id,
            &self.payload_sealed,
        )
    }

    /// The envelope of this failed intake's next attempt under its key, as its original caller
    /// (the stored token hash), with `body` (its stored payload, or an operator's correction);
    /// `None` without a key.
    pub(super) fn retry_envelope(
        &self,
        body: Vec<u8>,
        oversize: Option<Oversize>,
        how: Resolution,
        operator: Option<&str>,
    ) -> Option<Envelope> {
        Some(Envelope {
            // Stored keys passed the same parse when they arrived.
            message_key: Some(MessageKey::parse(self.intake.message_key.as_deref()?).ok()?),
            correlation_id: self.intake.correlation_id.clone(),
            token: self
                .token_hash
                .as_deref()
                .and_then(|t| TokenHash::try_from(t).ok()),
            body,
            oversize,
            attempt: Attempt::Retry(Retry {
                info: ReplayInfo {
                    attempt: self.intake.attempts + 1,
                    failed_intake_id: Some(self.intake.id),
                    supersedes: Some(self.intake.event_id),
                    how,
                },
                operator: operator.map(str::to_owned),
                edit: None,
            }),
            // A retry is an operator's action, not part of the original trace.
            trace: None,
            duplicate_override: false,
        })
    }
}

/// The failed intakes matching `f` above `after` (up to `upto`), with their payloads.
pub(super) async fn select(
    pool: &PgPool,
    f: &Filter,
    after: i64,
    upto: Option<i64>,
) -> Result<Vec<Stored>, sqlx::Error> {
    Ok(store::failed::select_failed(pool, f, after, upto)
        .await?
        .into_iter()
        .map(Stored::from)
        .collect())
}

impl From<StoredFailure> for Stored {
    fn from(s: StoredFailure) -> Self {
        Self {
            oversize: oversize_of(s.payload_truncated, s.payload_bytes, s.payload_sha256),
            intake: s.intake,
            payload_sealed: s.payload_sealed,
            payload_key_id: s.payload_key_id,
            token_hash: s.token_hash,
        }
    }
}

fn oversize_of(truncated: bool, bytes: Option<i64>, sha256: Option<Vec<u8>>) -> Option<Oversize> {
    if !truncated {
        return None;
    }
    Some(Oversize {
        bytes: usize::try_from(bytes?).ok()?,
        sha256: sha256?.try_into().ok()?,
    })
}

/// A page of failed intakes in display form, with the number that match in all.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// Failed intakes matching the filter, in all (not only after `after`).
    pub total: i64,
    pub rows: Vec<FailedIntake>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next_after: Option<i64>,
}

/// Lists failed intakes matching `f` with an id above `after`, oldest first, at most
/// `f.limit`, in display form.
pub async fn list(pool: &PgPool, f: &Filter, after: i64) -> Result<Page, sqlx::Error> {
    let total = store::failed::count_failed(pool, f, 0, None).await?;
    let rows: Vec<FailedIntake> = select(pool, f, after, None)
        .await?
        .into_iter()
        .map(|s| for_display(s.intake))
        .collect();
    let remaining = store::failed::count_failed(pool, f, after, None).await?;
    let next_after = match rows.last() {
        Some(last) if remaining > rows.len() as i64 => Some(last.id),
        _ => None,
    };
    Ok(Page {
        total,
        rows,
        next_after,
    })
}

/// The open failed intakes a bulk retry (replay, bulk edit) selected, by id, fixed when
/// selected: what the command announces, and what its report accounts for row by row, however
/// many are resolved before their batch runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selected {
    ids: Vec<i64>,
}

impl Selected {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The failed-intake ids, in id order.
    pub fn ids(&self) -> &[i64] {
        &self.ids
    }
}

/// Selects the open failed intakes matching `f` now (only what failed before the selection:
/// a retry that fails again records a new failed intake, which the run must not pick up).
pub async fn select_open(pool: &PgPool, f: &Filter) -> Result<Selected, sqlx::Error> {
    let open = Filter {
        include_resolved: false,
        ..f.clone()
    };
    let upto = store::failed::newest_failed_id(pool).await?;
    let ids = store::failed::select_failed_ids(pool, &open, upto).await?;
    Ok(Selected { ids })
}

/// How many open failed intakes a replay of `f` would select now.
pub async fn replay_count(pool: &PgPool, f: &Filter) -> Result<i64, sqlx::Error> {
    let open = Filter {
        include_resolved: false,
        ..f.clone()
    };
    let upto = store::failed::newest_failed_id(pool).await?;
    store::failed::count_failed(pool, &open, 0, upto).await
}

/// A failed intake as shown to an operator: key and correlation id escaped (the envelope checks
/// refuse control characters there now, but rows stored before them may hold some), the error
/// redacted again (errors are redacted when built; older rows were not).
pub(super) fn for_display(mut intake: FailedIntake) -> FailedIntake {
    let escape = |s: String| redact::escape_controls(&s).into_owned();
    intake.message_key = intake.message_key.map(escape);
    intake.correlation_id = intake.correlation_id.map(escape);
    intake.error_code = escape(intake.error_code);
    redact::redact_json(&mut intake.error);
    // Operator text (a dismissal's reason may quote a record): shown like caller text.
    let display = |s: String| redact::display_text(&s);
    intake.resolved_by = intake.resolved_by.map(display);
    intake.resolution_reason = intake.resolution_reason.map(display);
    intake
}

/// A failed intake with its payload, for `failed show`.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    #[serde(flatten)]
    pub intake: FailedIntake,
    /// The payload as JSON with every SSN-shaped value masked and control characters escaped,
    /// or a note when it is not a JSON object.
    pub payload: Value,
}

/// Every attempt recorded for a message key (its history) in display form, payloads with every
/// SSN masked.
pub async fn show(
    pool: &PgPool,
    vault: &Vault,
    key: &str,
    network: Option<i64>,
) -> Result<Vec<Shown>, sqlx::Error> {
    let f = Filter {
        key: Some(key.to_owned()),
        network,
        include_resolved: true,
        limit: 1000,
        ..Filter::default()
    };
    Ok(select(pool, &f, 0, None)
        .await?
        .into_iter()
        .map(|s| Shown {
            payload: match s.payload(vault) {
                Ok(p) => masked_payload(&p),
                Err(e) => Value::String(format!("<payload cannot be opened: {e}>")),
            },
            intake: for_display(s.intake),
        })
        .collect())
}

/// The payload for display: JSON with every SSN-shaped key, string and number reduced to its
/// last four digits (and the whole value of `ss_number`, `ssn` and the like), control
/// characters escaped. A body that is not a JSON object is not shown at all (it could hold
/// anything).
pub fn masked_payload(payload: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(payload) {
        Ok(mut object @ Value::Object(_)) => {
            redact::redact_json(&mut object);
            object
        }
        _ => Value::String(format!("<{} bytes, not a JSON object>", payload.len())),
    }
}

/// Totals of a replay (of a dry run: what a replay would come to now).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    pub selected: usize,
    pub created: usize,
    pub failed: usize,
    /// Of `failed`, how many by error code.
    pub failed_by_code: BTreeMap<&'static str, usize>,
    /// The key had since got a case (or the same outcome): nothing new was created.
    pub duplicate: usize,
    /// Linked to an existing case by the network's `link` policy (no case created).
    pub matched: usize,
    /// Failed intakes without a message key cannot be replayed under it, nor those whose
    /// payload key is no longer configured.
    pub skipped: usize,
    /// Resolved after the selection, before their retry claimed the key (the sender's
    /// corrected body committed first, another replay or edit, a dismissal; or purged): left
    /// as they were, nothing published. `selected` is the sum of every other count.
    pub already_resolved: usize,
    /// Nothing was written: each window was rolled back.
    pub dry_run: bool,
}

/// Replays the open failed intakes matching `f` in windows of `window_size`, calling
/// `progress` after each.
pub async fn replay(
    pool: &PgPool,
    ctx: &WindowContext,
    f: &Filter,
    window_size: usize,
    progress: impl FnMut(&ReplayReport),
) -> Result<ReplayReport, sqlx::Error> {
    let options = BulkOptions {
        window_size,
        rate: None,
        dry_run: false,
    };
    replay_with(pool, ctx, f, options, None, progress).await
}

/// Replays the open failed intakes matching `f` in batches paced to `options.rate`, calling
/// `progress` once per batch; with `options.dry_run` each batch runs through
/// [`window::preview`] (its transaction rolled back: nothing written, no event queued).
/// `operator` is recorded as resolving the failures the replays resolve.
pub async fn replay_with(
    pool: &PgPool,
    ctx: &WindowContext,
    f: &Filter,
    options: BulkOptions,
    operator: Option<&str>,
    progress: impl FnMut(&ReplayReport),
) -> Result<ReplayReport, sqlx::Error> {
    let selected = select_open(pool, f).await?;
    replay_selected(pool, ctx, &selected, options, operator, progress).await
}

/// Replays the failed intakes of `selected` (see [`replay_with`]): every row is accounted for,
/// those resolved since the selection as `already_resolved`.
pub async fn replay_selected(
    pool: &PgPool,
    ctx: &WindowContext,
    selected: &Selected,
    options: BulkOptions,
    operator: Option<&str>,
    progress: impl FnMut(&ReplayReport),
) -> Result<ReplayReport, sqlx::Error> {
    let batch_of =
        |rows: Vec<Stored>, report: &mut ReplayReport| envelopes_of(rows, ctx, operator, report);
    retry_batches(pool, ctx, selected, options, batch_of, progress).await
}

/// The envelopes a replay would run for these failed intakes now (those still open, with a
/// key and a payload that opens), as [`replay_selected`] builds them for a batch. The fault
/// suite and the tests run them after a resend to stage the race a replay meets between its
/// selection and its claim.
pub async fn replay_envelopes(
    pool: &PgPool,
    ctx: &WindowContext,
    ids: &[i64],
    operator: Option<&str>,
) -> Result<Vec<Envelope>, sqlx::Error> {
    let rows = store::failed::failed_by_ids(pool, ids).await?;
    let open = rows
        .into_iter()
        .map(Stored::from)
        .filter(|s| s.intake.resolved_at.is_none())
        .collect();
    Ok(envelopes_of(
        open,
        ctx,
        operator,
        &mut ReplayReport::default(),
    ))
}

/// The loop of every bulk retry (replay, bulk edit): the failed intakes of `selected`, in
/// batches paced to `options.rate`, each batch's rows read again when it starts: those
/// resolved since the selection are counted `already_resolved`, the others turned into a
/// batch of envelopes by `batch_of` (which counts what it skips) and run as one window (previewed and
/// rolled back on a dry run), whose retries of failures resolved meanwhile come back
/// [`Outcome::AlreadyResolved`]. `progress` after every batch, each announced batch included.
pub(super) async fn retry_batches(
    pool: &PgPool,
    ctx: &WindowContext,
    selected: &Selected,
    options: BulkOptions,
    mut batch_of: impl FnMut(Vec<Stored>, &mut ReplayReport) -> Vec<Envelope>,
    mut progress: impl FnMut(&ReplayReport),
) -> Result<ReplayReport, sqlx::Error> {
    let pacing = options.pacing();
    let mut report = ReplayReport {
        dry_run: options.dry_run,
        ..ReplayReport::default()
    };
    for ids in selected.ids.chunks(pacing.batch().max(1)) {
        let started = Instant::now();
        let n = ids.len();
        report.selected += n;
        let open: Vec<Stored> = store::failed::failed_by_ids(pool, ids)
            .await?
            .into_iter()
            .map(Stored::from)
            .filter(|s| s.intake.resolved_at.is_none())
            .collect();
        report.already_resolved += n - open.len();
        let batch = batch_of(open, &mut report);
        let outcomes = process_retrying(pool, ctx, &batch, options.dry_run);
        for outcome in outcomes.await? {
            report.count(&outcome);
        }
        progress(&report);
        tokio::time::sleep(pacing.pause(n, started.elapsed())).await;
    }
    Ok(report)
}

impl ReplayReport {
    /// Counts one retry's outcome.
    fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Created { .. } => self.created += 1,
            Outcome::Failed { code, .. } => {
                self.failed += 1;
                *self.failed_by_code.entry(code.as_str()).or_default() += 1;
            }
            Outcome::Duplicate { .. } => self.duplicate += 1,
            Outcome::Matched { .. } => self.matched += 1,
            Outcome::AlreadyResolved { .. } => self.already_resolved += 1,
        }
    }
}

/// The envelopes replaying `rows` under their keys; rows that cannot be replayed (no key, a
/// payload sealed with a key no longer configured) are counted as skipped.
fn envelopes_of(
    rows: Vec<Stored>,
    ctx: &WindowContext,
    operator: Option<&str>,
    report: &mut ReplayReport,
) -> Vec<Envelope> {
    rows.into_iter()
        .filter_map(|s| {
            let envelope = s
                .payload(&ctx.vault)
                .ok()
                .and_then(|p| s.retry_envelope(p, s.oversize, Resolution::Replayed, operator));
            if envelope.is_none() {
                report.skipped += 1;
            }
            envelope
        })
        .collect()
}

/// Runs a window (or previews it, rolled back, on a dry run), re-running it a few times on
/// transient errors.
pub(super) async fn process_retrying(
    pool: &PgPool,
    ctx: &WindowContext,
    envelopes: &[Envelope],
    dry_run: bool,
) -> Result<Vec<Outcome>, sqlx::Error> {
    if envelopes.is_empty() {
        return Ok(Vec::new());
    }
    retry_transient(REPLAY_TRANSIENT_RETRIES, classify, || async {
        if dry_run {
            let decided = window::preview(pool, ctx, envelopes).await?;
            Ok(decided.into_iter().map(|d| d.outcome).collect())
        } else {
            window::run(pool, ctx, envelopes).await
        }
    })
    .await
}

/// Re-runs of a replay window after transient database errors.
const REPLAY_TRANSIENT_RETRIES: usize = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_ssn_is_masked_and_non_json_hidden() {
        let p = masked_payload(br#"{"ss_number":"111-22-3333","first_name":"A"}"#);
        assert_eq!(p["ss_number"], "*****3333");
        assert_eq!(p["first_name"], "A");
        let p = masked_payload(br#"{"ss_number":"12"}"#);
        assert_eq!(p["ss_number"], "*****");
        let p = masked_payload(b"111223333 raw");
        assert_eq!(p, Value::String("<13 bytes, not a JSON object>".into()));
    }

    #[test]
    fn every_ssn_in_a_payload_is_masked_and_controls_escaped() {
        let body = serde_json::json!({
            "ssn": "123-45-6789",
            "SS_Number": 123_456_789,
            "notes": {"list": ["123 45 6789", {"bare": 987_654_321}]},
            "987-65-4321": 1,
            "\u{1b}[31mX\u{7}": "\u{9b}2J\u{202e}",
        });
        let p = masked_payload(&serde_json::to_vec(&body).unwrap());
        let text = serde_json::to_string(&p).unwrap();
        for digits in ["12345", "45-6789", "45 6789", "98765", "65-4321"] {
            assert!(!text.contains(digits), "{text}");
        }
        assert_eq!(p["ssn"], "*****6789");
        assert_eq!(p["SS_Number"], "*****6789");
        assert_eq!(p["notes"]["list"][0], "*****6789");
        assert_eq!(p["notes"]["list"][1]["bare"], "*****4321");
        assert_eq!(p["*****4321"], 1);
        assert_eq!(p[r"\u{1b}[31mX\u{7}"], r"\u{9b}2J\u{202e}");
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() || redact::is_invisible(c))
        );
    }

    #[test]
    fn listed_rows_are_escaped_and_their_errors_redacted() {
        let row = FailedIntake {
            id: 1,
            network_id: None,
            message_key: Some("k\u{1b}]0;t\u{7}".into()),
            correlation_id: Some("c\u{0}\u{85}\u{2067}".into()),
            error_code: "validation_failed".into(),
            // As stored before errors were redacted when built.
            error: serde_json::json!({
                "code": "validation_failed",
                "message": "1 field failed validation",
                "fields": {"123-45-6789": ["is not a recognized field"]}
            }),
            attempts: 1,
            event_id: uuid::Uuid::nil(),
            created_at: chrono::Utc::now(),
            resolved_at: None,
            resolution: None,
            resolved_by: None,
            resolution_reason: None,
            resolved_event_id: None,
        };
        let shown = for_display(row);
        assert_eq!(shown.message_key.as_deref(), Some(r"k\u{1b}]0;t\u{7}"));
        assert_eq!(
            shown.correlation_id.as_deref(),
            Some(r"c\u{0}\u{85}\u{2067}")
        );
        assert_eq!(
            shown.error["fields"],
            serde_json::json!({"*****6789": ["is not a recognized field"]})
        );
    }
}
