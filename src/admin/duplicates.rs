//! Possible duplicates for administrators (`case-intake duplicates …`): the pairs the pipeline
//! flagged, listed and shown with what deciding needs (SSNs masked from their last four digits,
//! never unsealed), dismissed with a reason by a named operator; each network's duplicate
//! policy; and the match keys of cases written before matching existed (`reindex`). The
//! statements are in `store::duplicates`.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::admin::dismiss::Dismissal;
use crate::infra::redact;
use crate::intake::matching::MatchKeys;
use crate::store::duplicates::{self as store, CaseForReview, CaseKeys, PairFilter, PairRow};
use crate::store::tenancy;

/// Why a `duplicates` command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum DuplicatesError {
    /// An id the operator named does not exist.
    #[error("{0}")]
    NotFound(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

fn no_network(id: i64) -> DuplicatesError {
    DuplicatesError::NotFound(format!("no network with id {id}"))
}

/// What an intake that matches an existing client does in a network: the pipeline's own type.
pub use crate::store::matching::DuplicatePolicy as Policy;

/// The policy a stored value names (the column's check allows no other).
fn stored_policy(s: &str) -> Result<Policy, DuplicatesError> {
    Policy::parse(s)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown duplicate policy {s:?}").into()))
        .map_err(DuplicatesError::from)
}

/// Which pairs a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    /// Not resolved yet.
    #[default]
    Open,
    Dismissed,
    All,
}

/// A listing's selection.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub network: Option<i64>,
    pub state: State,
    /// Only pairs that matched this rule (`matching::Rule::as_str`).
    pub rule: Option<String>,
    pub limit: i64,
}

/// One flagged pair in display form: the message key is caller text (SSN-shaped text masked,
/// control characters escaped).
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub id: i64,
    pub network: i64,
    pub case_id: i64,
    pub candidate_case_id: i64,
    pub rules: Vec<String>,
    pub score: f32,
    pub overridden: bool,
    pub message_key: Option<String>,
    pub event_id: uuid::Uuid,
    pub flagged_at: DateTime<Utc>,
    /// `open`, or the resolution (`dismissed`).
    pub state: String,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub resolution_reason: Option<String>,
}

impl From<PairRow> for Pair {
    fn from(r: PairRow) -> Self {
        Self {
            id: r.id,
            network: r.network_id,
            case_id: r.case_id,
            candidate_case_id: r.candidate_case_id,
            rules: r.rules,
            score: r.score,
            overridden: r.overridden,
            message_key: r.message_key.as_deref().map(redact::display_text),
            event_id: r.event_id,
            flagged_at: r.created_at,
            state: r.resolution.unwrap_or_else(|| "open".to_owned()),
            resolved_at: r.resolved_at,
            resolved_by: r.resolved_by.as_deref().map(redact::display_text),
            resolution_reason: r.resolution_reason.as_deref().map(redact::display_text),
        }
    }
}

/// The pairs `f` selects, newest first.
pub async fn list(pool: &PgPool, f: &ListFilter) -> Result<Vec<Pair>, DuplicatesError> {
    let filter = PairFilter {
        network: f.network,
        open: matches!(f.state, State::Open | State::All),
        dismissed: matches!(f.state, State::Dismissed | State::All),
        rule: f.rule.clone(),
        limit: f.limit,
    };
    let rows = store::list(pool, &filter).await?;
    Ok(rows.into_iter().map(Pair::from).collect())
}

/// One case of a pair as an administrator sees it: names and address in display form, the SSN
/// masked (`*****1234`, the form every mask of the service uses).
#[derive(Debug, Clone, Serialize)]
pub struct CaseView {
    pub case_id: i64,
    pub household_id: i64,
    pub group_id: i64,
    pub created_at: DateTime<Utc>,
    pub first_name: String,
    pub last_name: String,
    pub date_of_birth: Option<NaiveDate>,
    pub street_address: Option<String>,
    pub ssn: Option<String>,
    pub private: bool,
}

impl From<CaseForReview> for CaseView {
    fn from(c: CaseForReview) -> Self {
        Self {
            case_id: c.id,
            household_id: c.household_id,
            group_id: c.group_id,
            created_at: c.created_at,
            first_name: redact::display_text(&c.first_name),
            last_name: redact::display_text(&c.last_name),
            date_of_birth: c.date_of_birth,
            street_address: c.street_address.as_deref().map(redact::display_text),
            ssn: c.ss_number_last4.as_deref().map(redact::mask_last4),
            private: c.private,
        }
    }
}

/// A pair with both its cases: what `duplicates show` prints.
#[derive(Debug, Clone, Serialize)]
pub struct PairDetail {
    #[serde(flatten)]
    pub pair: Pair,
    /// The case the intake created.
    pub case: Option<CaseView>,
    /// The existing case it may duplicate.
    pub candidate: Option<CaseView>,
}

/// One pair with its two cases; `NotFound` for an unknown id.
pub async fn show(pool: &PgPool, id: i64) -> Result<PairDetail, DuplicatesError> {
    let Some(row) = store::get(pool, id).await? else {
        return Err(DuplicatesError::NotFound(format!(
            "no possible duplicate with id {id}"
        )));
    };
    let cases = store::cases_for_review(pool, &[row.case_id, row.candidate_case_id]).await?;
    let view = |id: i64| {
        cases
            .iter()
            .find(|c| c.id == id)
            .cloned()
            .map(CaseView::from)
    };
    let (case, candidate) = (view(row.case_id), view(row.candidate_case_id));
    Ok(PairDetail {
        pair: row.into(),
        case,
        candidate,
    })
}

/// What a dismissal acts on.
#[derive(Debug, Clone)]
pub enum Selection {
    /// These pairs.
    Ids(Vec<i64>),
    /// Every open pair of a network.
    AllOpen { network: i64 },
}

/// The pairs a dismissal would change, and those it would leave (already dismissed).
#[derive(Debug, Clone, Default)]
pub struct Selected {
    pub open: Vec<i64>,
    pub already_dismissed: Vec<i64>,
}

/// What `selection` names now; `NotFound` for an unknown pair or network, before anything is
/// changed (a mistyped id does not dismiss the others).
pub async fn select(pool: &PgPool, selection: &Selection) -> Result<Selected, DuplicatesError> {
    match selection {
        Selection::AllOpen { network } => {
            if !tenancy::network_exists(pool, *network).await? {
                return Err(no_network(*network));
            }
            Ok(Selected {
                open: store::open_ids(pool, *network).await?,
                already_dismissed: Vec::new(),
            })
        }
        Selection::Ids(ids) => {
            let found = store::states(pool, ids).await?;
            let mut missing: Vec<i64> = ids
                .iter()
                .copied()
                .filter(|id| !found.iter().any(|(f, _)| f == id))
                .collect();
            missing.sort_unstable();
            missing.dedup();
            if !missing.is_empty() {
                let list: Vec<String> = missing.iter().map(i64::to_string).collect();
                return Err(DuplicatesError::NotFound(format!(
                    "no possible duplicate with id {}: nothing dismissed",
                    list.join(", ")
                )));
            }
            let (open, closed): (Vec<_>, Vec<_>) = found.into_iter().partition(|(_, o)| *o);
            Ok(Selected {
                open: open.into_iter().map(|(id, _)| id).collect(),
                already_dismissed: closed.into_iter().map(|(id, _)| id).collect(),
            })
        }
    }
}

/// Totals of a dismissal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DismissReport {
    pub dismissed: usize,
    /// Dismissed before (or meanwhile, by someone else): left as they were.
    pub already_dismissed: Vec<i64>,
}

/// Dismisses the open pairs of `selected` in one statement, by `who`; a pair dismissed since
/// the selection is left as it was and reported with the already dismissed.
pub async fn dismiss(
    pool: &PgPool,
    selected: &Selected,
    who: &Dismissal,
) -> Result<DismissReport, DuplicatesError> {
    let changed = store::dismiss(pool, &selected.open, who.operator(), who.reason()).await?;
    let mut already = selected.already_dismissed.clone();
    already.extend(selected.open.iter().filter(|id| !changed.contains(id)));
    already.sort_unstable();
    Ok(DismissReport {
        dismissed: changed.len(),
        already_dismissed: already,
    })
}

/// A network's duplicate policy.
pub async fn policy(pool: &PgPool, network: i64) -> Result<Policy, DuplicatesError> {
    let stored = store::policy(pool, network).await?;
    stored_policy(&stored.ok_or_else(|| no_network(network))?)
}

/// A policy change: what it was and what it is.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PolicyChange {
    pub network: i64,
    pub old: Policy,
    pub new: Policy,
}

/// Sets a network's duplicate policy; it applies to the windows that start after it.
pub async fn set_policy(
    pool: &PgPool,
    network: i64,
    new: Policy,
) -> Result<PolicyChange, DuplicatesError> {
    let old = store::set_policy(pool, network, new.as_str()).await?;
    let old = stored_policy(&old.ok_or_else(|| no_network(network))?)?;
    Ok(PolicyChange { network, old, new })
}

/// Progress and totals of a reindex.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReindexReport {
    pub batches: usize,
    /// Cases without keys that were read.
    pub scanned: usize,
    /// Cases given at least one key.
    pub updated: u64,
    /// Cases left without keys: no usable date of birth, names or address.
    pub skipped: usize,
}

/// Computes the match keys of every case (of `network`, or all) that has neither, `batch`
/// cases per transaction, walking by id so that each case is read once and cases that get no
/// key (no date of birth, a placeholder) do not come back. Calls `progress` after each batch.
pub async fn reindex(
    pool: &PgPool,
    network: Option<i64>,
    batch: i64,
    mut progress: impl FnMut(&ReindexReport),
) -> Result<ReindexReport, DuplicatesError> {
    if let Some(n) = network
        && !tenancy::network_exists(pool, n).await?
    {
        return Err(no_network(n));
    }
    let mut report = ReindexReport::default();
    let mut after = 0;
    loop {
        let mut tx = pool.begin().await?;
        let cases = store::unindexed_cases(&mut tx, network, after, batch).await?;
        let Some(last) = cases.last() else { break };
        after = last.id;
        let keys: Vec<CaseKeys> = cases
            .iter()
            .map(|c| {
                let k = MatchKeys::from_parts(
                    &c.first_name,
                    &c.last_name,
                    c.date_of_birth,
                    c.street_address.as_deref(),
                );
                CaseKeys {
                    case_id: c.id,
                    name: k.name,
                    address: k.address,
                }
            })
            .filter(|k| k.name.is_some() || k.address.is_some())
            .collect();
        let updated = store::set_match_keys(&mut tx, &keys).await?;
        tx.commit().await?;
        report.batches += 1;
        report.scanned += cases.len();
        report.updated += updated;
        report.skipped += cases.len() - keys.len();
        progress(&report);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_reads_back_from_its_stored_text() {
        for p in Policy::ALL {
            assert_eq!(stored_policy(p.as_str()).unwrap(), p);
        }
        assert!(stored_policy("maybe").is_err());
    }
}
