//! The operator's side of the fault suite's `replay-vs-resend` and `edit-vs-resend` kinds: a
//! retry (a replay, an edit) selects a key's open failure, the sender's corrected body is
//! published and committed by the workers, and only then does the staged retry run — the
//! order in which an operator's retry used to give the key a second, wrong outcome (issue 21).
//! Each retry's outcome is recorded for the suite's checks; the pure checks are here with
//! their unit tests.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use case_intake::admin::edit::{self, Changes, EditRequest, StagedEdit};
use case_intake::admin::failed::{self, Filter};
use case_intake::app::supervisor;
use case_intake::infra::settings::Settings;
use case_intake::intake::envelope::Envelope;
use case_intake::intake::window::{self, Outcome, WindowContext};
use serde_json::json;
use sqlx::PgPool;

use crate::cli::BoxError;
use crate::kinds::Kind;
use crate::ledger::lock;

/// The operator name the suite's retries record.
pub const OPERATOR: &str = "case-intake-faults";
/// The last name an edit sets: another body than the sender's correction, so an edit that
/// acted on the superseded failure would be refused, visibly.
pub const EDITED_LAST_NAME: &str = "Edited";
/// How long a staged retry waits for the resend to resolve its failure.
const RESEND_WAIT: Duration = Duration::from_secs(120);
/// Runs of a staged retry (each after a pause) while a fault keeps the database away.
const RUNS: usize = 10;

/// A retry selected before the resend, run after it.
pub enum Staged {
    Replay {
        failed_intake_id: i64,
        envelopes: Vec<Envelope>,
    },
    Edit(Box<StagedEdit>),
}

impl Staged {
    fn failed_intake_id(&self) -> i64 {
        match self {
            Staged::Replay {
                failed_intake_id, ..
            } => *failed_intake_id,
            Staged::Edit(e) => e.failed_intake_id(),
        }
    }
}

/// What became of one staged retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryResult {
    pub key: String,
    pub kind: Kind,
    /// `already_resolved` (the only right answer), another outcome's name, or why it did not
    /// run (`not_superseded`: the resend never resolved the failure in time; `error: …`).
    pub outcome: String,
}

/// Stages and runs the suite's operator retries against the run's database.
#[derive(Clone)]
pub struct Operator {
    pool: PgPool,
    ctx: WindowContext,
    pub results: Arc<Mutex<Vec<RetryResult>>>,
}

impl Operator {
    /// An operator on `pool` with the workers' settings (the same sealing keys) for `db_url`;
    /// no relay: the workers' sweeps publish what a retry queues.
    pub fn new(pool: PgPool, db_url: &str) -> Result<Self, BoxError> {
        let mut settings = Settings::load(None)?;
        settings.database.url = db_url.to_owned().into();
        let ctx = supervisor::window_context(&settings);
        Ok(Self {
            pool,
            ctx,
            results: Arc::default(),
        })
    }

    /// Selects `key`'s open `validation_failed` failure and builds the retry `kind` makes of it.
    pub async fn stage(&self, kind: Kind, key: &str) -> Result<Staged, BoxError> {
        let filter = Filter {
            key: Some(key.to_owned()),
            code: Some("validation_failed".into()),
            limit: 10,
            ..Filter::default()
        };
        let selected = failed::select_open(&self.pool, &filter).await?;
        let Some(&failed_intake_id) = selected.ids().first() else {
            return Err(format!("{key}: no open failure to retry").into());
        };
        match kind {
            Kind::EditRace => {
                let req = EditRequest {
                    key: key.to_owned(),
                    network: None,
                    changes: Changes::Fields {
                        set: vec![("last_name".into(), json!(EDITED_LAST_NAME))],
                        unset: vec![],
                    },
                    dry_run: false,
                    operator: Some(OPERATOR.into()),
                };
                Ok(Staged::Edit(Box::new(
                    edit::stage(&self.pool, &self.ctx, req).await?,
                )))
            }
            _ => {
                let envelopes = failed::replay_envelopes(
                    &self.pool,
                    &self.ctx,
                    &[failed_intake_id],
                    Some(OPERATOR),
                )
                .await?;
                Ok(Staged::Replay {
                    failed_intake_id,
                    envelopes,
                })
            }
        }
    }

    /// Waits for the resend to resolve the staged failure, then runs the retry and records
    /// its outcome.
    pub async fn finish(&self, kind: Kind, key: String, staged: Staged) {
        let outcome = match self.await_resolved(staged.failed_intake_id()).await {
            true => self.run(staged).await,
            false => "not_superseded".to_owned(),
        };
        lock(&self.results).push(RetryResult { key, kind, outcome });
    }

    async fn await_resolved(&self, id: i64) -> bool {
        let deadline = Instant::now() + RESEND_WAIT;
        while Instant::now() < deadline {
            let resolved: Result<bool, _> = sqlx::query_scalar(
                "SELECT resolved_at IS NOT NULL FROM failed_intakes WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&self.pool)
            .await;
            if matches!(resolved, Ok(true)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Runs the retry, again after a pause while a fault keeps the database away.
    async fn run(&self, staged: Staged) -> String {
        let mut last = String::new();
        match staged {
            Staged::Replay { envelopes, .. } => {
                for _ in 0..RUNS {
                    match window::run(&self.pool, &self.ctx, &envelopes).await {
                        Ok(out) => return out.first().map_or("none", outcome_name).to_owned(),
                        Err(e) => last = format!("error: {e}"),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            // A failed run rolled back: the same staged edit runs again, as an operator
            // re-runs `failed edit` after a database outage.
            Staged::Edit(staged) => {
                for _ in 0..RUNS {
                    match edit::run_staged(&self.pool, &self.ctx, (*staged).clone()).await {
                        Ok(report) => return report.outcome.to_owned(),
                        Err(e) => last = format!("error: {e}"),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        last
    }
}

/// The name of a retry's outcome, as `failed edit` reports it.
pub fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Created { .. } => "created",
        Outcome::Failed { .. } => "failed",
        Outcome::Duplicate { .. } => "duplicate",
        Outcome::Matched { .. } => "matched",
        Outcome::AlreadyResolved { .. } => "already_resolved",
    }
}

/// The retries that did something to a key whose failure was superseded before they ran
/// (every retry the suite ran was staged so), and those that errored: `key (kind): outcome`.
/// A retry that never ran because the resend did not resolve its failure in time is not one.
pub fn retries_that_acted(results: &[RetryResult]) -> Vec<String> {
    results
        .iter()
        .filter(|r| r.outcome != "already_resolved" && r.outcome != "not_superseded")
        .map(|r| format!("{} ({}): {}", r.key, r.kind.name(), r.outcome))
        .collect()
}

/// Open failed intakes of attempt 2 or later under a key whose outcome is a case: a retry
/// (replay, edit) recorded a new failure for a key that had meanwhile got its case. Refusals
/// of a publisher's other body are attempt 1, so none is counted here.
pub async fn open_retry_failures_of_cases(pool: &PgPool) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT f.message_key || ' (failed intake ' || f.id || ', attempt ' || f.attempts
                || ', ' || f.error_code || ')'
           FROM failed_intakes f
           JOIN intake_outcomes o ON o.message_key = f.message_key AND o.network_id = f.network_id
          WHERE f.resolved_at IS NULL AND f.attempts >= 2
            AND o.outcome IN ('created', 'matched')
          ORDER BY f.id",
    )
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(key: &str, outcome: &str) -> RetryResult {
        RetryResult {
            key: key.into(),
            kind: Kind::ReplayRace,
            outcome: outcome.into(),
        }
    }

    #[test]
    fn only_a_retry_that_left_its_superseded_failure_alone_passes() {
        let results = [
            result("a", "already_resolved"),
            result("b", "not_superseded"),
            result("c", "failed"),
            result("d", "duplicate"),
            result("e", "error: pool timed out"),
        ];
        assert_eq!(
            retries_that_acted(&results),
            [
                "c (replay_race): failed",
                "d (replay_race): duplicate",
                "e (replay_race): error: pool timed out"
            ]
        );
    }
}
