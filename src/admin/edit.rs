//! `case-intake failed edit`: an operator's correction of a key's open failed intake, run
//! through the window as the key's next attempt (resolved `edited`, audited in
//! `failed_intake_edits` in the same transaction), or previewed and rolled back (`--dry-run`).
//!
//! Everything returned is for display: the key, field names and errors pass through
//! [`redact`], so no SSN and no control character reaches the operator's terminal. Values the
//! operator set are never echoed nor audited.

use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::admin::failed::{self, Stored};
use crate::infra::redact;
use crate::intake::envelope::{Envelope, is_unsafe_char};
use crate::intake::event::Resolution;
use crate::intake::window::{self, Outcome, WindowContext};
use crate::store::edits::EditAudit;
use crate::store::failed::Filter;

/// What the operator changes: fields of the stored JSON object, or the whole body.
#[derive(Debug, Clone, PartialEq)]
pub enum Changes {
    /// `--set` (name, value) pairs and `--unset` names, applied to the stored object.
    Fields {
        set: Vec<(String, Value)>,
        unset: Vec<String>,
    },
    /// `--body`: the corrected body, as bytes.
    Body(Vec<u8>),
}

/// Why an edit was refused before anything was written.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("no open failed intake with key {0}")]
    NoOpenFailure(String),
    #[error("key {key} has open failed intakes in networks {networks}: choose one with --network")]
    SeveralNetworks { key: String, networks: String },
    #[error(
        "the stored payload of failed intake {0} was truncated (oversize): only --body can replace it"
    )]
    Truncated(i64),
    #[error("the stored payload of failed intake {0} is not a JSON object: replace it with --body")]
    NotAnObject(i64),
    #[error("the stored payload of failed intake {0} cannot be opened: {1}")]
    Unreadable(i64, crate::store::crypto::CryptoError),
    #[error("{0}")]
    Changes(String),
    #[error("no operator: give --operator NAME (or set CASE_INTAKE_OPERATOR)")]
    NoOperator,
    #[error("the operator name must be 1 to 200 characters without control characters")]
    BadOperator,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// An edit to make (or, with `dry_run`, to preview).
#[derive(Debug, Clone)]
pub struct EditRequest {
    pub key: String,
    pub network: Option<i64>,
    pub changes: Changes,
    pub dry_run: bool,
    /// Required unless `dry_run`: recorded as `resolved_by` and in the audit.
    pub operator: Option<String>,
}

/// The case an edit created, or (dry run) would create.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Placement {
    pub case_id: Option<i64>,
    pub household_id: Option<i64>,
    pub household_created: Option<bool>,
    pub head_of_household: Option<bool>,
    pub previous_head_case_id: Option<i64>,
}

impl Placement {
    /// A case known by its ids only (a committed create, or an existing case linked to).
    fn existing(case_id: i64, household_id: i64) -> Self {
        Self {
            case_id: Some(case_id),
            household_id: Some(household_id),
            household_created: None,
            head_of_household: None,
            previous_head_case_id: None,
        }
    }
}

/// What an edit came to, in display form.
#[derive(Debug, Clone, Serialize)]
pub struct EditReport {
    pub dry_run: bool,
    /// Ids drawn by a dry run are not used again: a real edit gets others.
    pub ids_illustrative: bool,
    pub message_key: String,
    pub network_id: Option<i64>,
    pub failed_intake_id: i64,
    pub attempt: i32,
    pub operator: Option<String>,
    pub fields_set: Vec<String>,
    pub fields_unset: Vec<String>,
    pub body_replaced: bool,
    /// `created`, `failed`, `duplicate`, `matched`, or `already_resolved`: the failure was
    /// resolved between its selection and the edit's transaction (its sender's corrected body
    /// committed first), and the edit did nothing (no audit, no event).
    pub outcome: &'static str,
    /// The attempt's event; for `already_resolved` the event of the failure it would have
    /// retried.
    pub event_id: Uuid,
    pub case: Option<Placement>,
    /// The code, message and field errors of a failed attempt, redacted.
    pub error: Option<Value>,
}

/// Checks an operator name: what `failed_intake_edits.operator` and a terminal can hold.
pub fn check_operator(name: &str) -> Result<String, EditError> {
    let name = name.trim();
    let n = name.chars().count();
    if !(1..=200).contains(&n) || name.chars().any(is_unsafe_char) {
        return Err(EditError::BadOperator);
    }
    Ok(name.to_owned())
}

/// Checks the field changes before anything connects: at least one, no empty name, no field
/// set twice or both set and unset.
pub fn check_changes(changes: &Changes) -> Result<(), EditError> {
    let Changes::Fields { set, unset } = changes else {
        return Ok(());
    };
    if set.is_empty() && unset.is_empty() {
        return Err(EditError::Changes(
            "nothing to change: give --set, --unset or --body".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for name in set.iter().map(|(n, _)| n).chain(unset) {
        if name.is_empty() {
            return Err(EditError::Changes("a field name cannot be empty".into()));
        }
        if !seen.insert(name) {
            return Err(EditError::Changes(format!(
                "field {} is changed twice",
                redact::display_text(name)
            )));
        }
    }
    Ok(())
}

/// The edited body: the stored JSON object with `set` and `unset` applied.
fn apply(
    id: i64,
    payload: &[u8],
    set: &[(String, Value)],
    unset: &[String],
) -> Result<Vec<u8>, EditError> {
    let mut object: Map<String, Value> =
        serde_json::from_slice(payload).map_err(|_| EditError::NotAnObject(id))?;
    for name in unset {
        if object.remove(name).is_none() {
            return Err(EditError::Changes(format!(
                "--unset {}: the stored payload has no such field",
                redact::display_text(name)
            )));
        }
    }
    for (name, value) in set {
        object.insert(name.clone(), value.clone());
    }
    serde_json::to_vec(&object).map_err(|_| EditError::NotAnObject(id))
}

/// The key's open failed intake to edit: in `network`, or the only network it has open
/// failures in; the newest if there are several.
async fn open_failure(pool: &PgPool, key: &str, network: Option<i64>) -> Result<Stored, EditError> {
    let filter = Filter {
        key: Some(key.to_owned()),
        network,
        include_resolved: false,
        limit: 1000,
        ..Filter::default()
    };
    let mut rows = failed::select(pool, &filter, 0, None).await?;
    let mut networks: Vec<Option<i64>> = rows.iter().map(|s| s.intake.network_id).collect();
    networks.sort_unstable();
    networks.dedup();
    if networks.len() > 1 {
        let listed: Vec<String> = networks
            .iter()
            .map(|n| n.map_or("(none)".into(), |n| n.to_string()))
            .collect();
        return Err(EditError::SeveralNetworks {
            key: shown_key(key),
            networks: listed.join(", "),
        });
    }
    rows.pop().ok_or_else(|| {
        let within = network.map_or(String::new(), |n| format!(" in network {n}"));
        EditError::NoOpenFailure(format!("{}{within}", shown_key(key)))
    })
}

fn shown_key(key: &str) -> String {
    format!("{:?}", redact::display_text(key))
}

/// The corrected envelope of `row`'s next attempt, and the audit of the change.
pub(super) fn corrected(
    row: &Stored,
    changes: &Changes,
    ctx: &WindowContext,
    operator: String,
) -> Result<(Envelope, EditAudit), EditError> {
    let id = row.intake.id;
    let (body, audit) = match changes {
        Changes::Body(body) => (body.clone(), audit_of(operator, &[], &[], true)),
        Changes::Fields { .. } if row.oversize.is_some() => return Err(EditError::Truncated(id)),
        Changes::Fields { set, unset } => {
            let payload = row
                .payload(&ctx.vault)
                .map_err(|e| EditError::Unreadable(id, e))?;
            let names: Vec<String> = set.iter().map(|(n, _)| n.clone()).collect();
            let body = apply(id, &payload, set, unset)?;
            (body, audit_of(operator, &names, unset, false))
        }
    };
    let envelope = row
        .retry_envelope(body, None, Resolution::Edited, None)
        .ok_or_else(|| EditError::NoOpenFailure("without a key".into()))?;
    Ok((envelope, audit))
}

/// The audit of a change; names redacted, as everywhere they are stored or shown.
pub(super) fn audit_of(
    operator: String,
    set: &[String],
    unset: &[String],
    body: bool,
) -> EditAudit {
    let shown = |v: &[String]| v.iter().map(|n| redact::display_text(n)).collect();
    EditAudit {
        operator,
        fields_set: shown(set),
        fields_unset: shown(unset),
        body_replaced: body,
    }
}

/// Edits (or previews the edit of) the key's open failed intake.
pub async fn edit(
    pool: &PgPool,
    ctx: &WindowContext,
    req: EditRequest,
) -> Result<EditReport, EditError> {
    let staged = stage(pool, ctx, req).await?;
    run_staged(pool, ctx, staged).await
}

/// An edit whose failed intake is selected and whose corrected envelope is built, not yet run:
/// between [`stage`] and [`run_staged`] the failure may be resolved by its sender's resend (the
/// race the fault suite's `edit-vs-resend` stages), which the run then finds and leaves alone.
/// A run that failed rolled back, so a clone of the staged edit may be run again.
#[derive(Clone)]
pub struct StagedEdit {
    req: EditRequest,
    operator: Option<String>,
    failed_intake_id: i64,
    envelope: Envelope,
    audit: EditAudit,
    report: EditReport,
}

impl StagedEdit {
    /// The failed intake the edit retries.
    pub fn failed_intake_id(&self) -> i64 {
        self.failed_intake_id
    }
}

/// Checks the request, selects the key's open failed intake and builds its corrected attempt.
pub async fn stage(
    pool: &PgPool,
    ctx: &WindowContext,
    req: EditRequest,
) -> Result<StagedEdit, EditError> {
    check_changes(&req.changes)?;
    let operator = match (&req.operator, req.dry_run) {
        (Some(op), _) => Some(check_operator(op)?),
        (None, true) => None,
        (None, false) => return Err(EditError::NoOperator),
    };
    let row = open_failure(pool, &req.key, req.network).await?;
    let who = operator.clone().unwrap_or_default();
    let (envelope, audit) = corrected(&row, &req.changes, ctx, who)?;
    let report = report_of(&req, &row, &audit, operator.clone());
    Ok(StagedEdit {
        failed_intake_id: row.intake.id,
        req,
        operator,
        envelope,
        audit,
        report,
    })
}

/// Runs (or previews) a staged edit as the key's next attempt; `already_resolved` when its
/// failure was resolved since it was staged.
pub async fn run_staged(
    pool: &PgPool,
    ctx: &WindowContext,
    staged: StagedEdit,
) -> Result<EditReport, EditError> {
    let StagedEdit {
        req,
        operator,
        failed_intake_id: _,
        envelope,
        audit,
        mut report,
    } = staged;
    let envelopes = [envelope];
    if req.dry_run {
        let decided = window::preview(pool, ctx, &envelopes).await?;
        if let Some(d) = decided.into_iter().next() {
            previewed(&mut report, &d.outcome, d.event.as_ref());
        }
        return Ok(report);
    }
    let [mut envelope] = envelopes;
    envelope.retried_by(operator, Some(audit));
    let outcomes = failed::process_retrying(pool, ctx, &[envelope], false).await?;
    if let Some(outcome) = outcomes.first() {
        applied(pool, &mut report, outcome, &req.key).await?;
    }
    Ok(report)
}

/// The report before the outcome is known.
fn report_of(
    req: &EditRequest,
    row: &Stored,
    audit: &EditAudit,
    operator: Option<String>,
) -> EditReport {
    EditReport {
        dry_run: req.dry_run,
        ids_illustrative: req.dry_run,
        message_key: redact::display_text(&req.key),
        network_id: row.intake.network_id,
        failed_intake_id: row.intake.id,
        attempt: row.intake.attempts + 1,
        operator: operator.map(|o| redact::display_text(&o)),
        fields_set: audit.fields_set.clone(),
        fields_unset: audit.fields_unset.clone(),
        body_replaced: audit.body_replaced,
        outcome: "failed",
        event_id: Uuid::nil(),
        case: None,
        error: None,
    }
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Created { .. } => "created",
        Outcome::Failed { .. } => "failed",
        Outcome::Duplicate { .. } => "duplicate",
        Outcome::Matched { .. } => "matched",
        Outcome::AlreadyResolved { .. } => "already_resolved",
    }
}

/// Fills in a dry run's outcome from the event it would publish: the placement of a created
/// case, or the error of a failure.
fn previewed(report: &mut EditReport, outcome: &Outcome, event: Option<&Value>) {
    report.outcome = outcome_name(outcome);
    report.event_id = outcome.event_id();
    let data = event.map(|e| &e["data"]);
    match outcome {
        Outcome::Created { .. } | Outcome::Duplicate { .. } => {
            // A `case.created` event's data: the case as stored (`id`) and its placement.
            report.case = data.filter(|d| d["id"].is_i64()).map(|d| Placement {
                case_id: d["id"].as_i64(),
                household_id: d["household_id"].as_i64(),
                household_created: d["household_created"].as_bool(),
                head_of_household: d["head_of_household"].as_bool(),
                previous_head_case_id: d["previous_head_case_id"].as_i64(),
            });
        }
        Outcome::Matched {
            case_id,
            household_id,
            ..
        } => report.case = Some(Placement::existing(*case_id, *household_id)),
        Outcome::Failed { .. } => report.error = data.map(|d| redacted(&d["error"])),
        Outcome::AlreadyResolved { .. } => {}
    }
}

/// Fills in a committed edit's outcome: the case created, or the new failure's error.
async fn applied(
    pool: &PgPool,
    report: &mut EditReport,
    outcome: &Outcome,
    key: &str,
) -> Result<(), sqlx::Error> {
    report.outcome = outcome_name(outcome);
    report.event_id = outcome.event_id();
    match outcome {
        Outcome::Created { .. } | Outcome::Matched { .. } => {
            report.case = outcome
                .case()
                .map(|(case, household)| Placement::existing(case, household));
        }
        Outcome::Failed { code, event_id } => {
            let error = failure_error(pool, key, *event_id).await?;
            report.error =
                Some(error.unwrap_or_else(|| serde_json::json!({ "code": code.as_str() })));
        }
        Outcome::Duplicate { .. } | Outcome::AlreadyResolved { .. } => {}
    }
    Ok(())
}

/// The error of the failed intake recorded with `event_id`, in display form.
async fn failure_error(
    pool: &PgPool,
    key: &str,
    event_id: Uuid,
) -> Result<Option<Value>, sqlx::Error> {
    let filter = Filter {
        key: Some(key.to_owned()),
        include_resolved: true,
        limit: 1000,
        ..Filter::default()
    };
    let rows = failed::select(pool, &filter, 0, None).await?;
    Ok(rows
        .into_iter()
        .find(|s| s.intake.event_id == event_id)
        .map(|s| failed::for_display(s.intake).error))
}

fn redacted(v: &Value) -> Value {
    let mut v = v.clone();
    redact::redact_json(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(set: &[(&str, Value)], unset: &[&str]) -> Changes {
        Changes::Fields {
            set: set
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.clone()))
                .collect(),
            unset: unset.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    #[test]
    fn changes_need_one_field_at_most_once_with_a_name() {
        assert!(check_changes(&fields(&[], &[])).is_err());
        assert!(check_changes(&fields(&[("", json!(1))], &[])).is_err());
        assert!(check_changes(&fields(&[("a", json!(1))], &["a"])).is_err());
        assert!(check_changes(&fields(&[("a", json!(1)), ("a", json!(2))], &[])).is_err());
        assert!(check_changes(&fields(&[("a", json!(1))], &["b"])).is_ok());
        assert!(check_changes(&Changes::Body(Vec::new())).is_ok());
        // The refusal names the field masked, never an SSN.
        let e = check_changes(&fields(&[("123-45-6789", json!(1))], &["123-45-6789"]));
        let shown = e.unwrap_err().to_string();
        assert!(
            shown.contains("*****6789") && !shown.contains("123-45"),
            "{shown}"
        );
    }

    #[test]
    fn fields_are_set_and_unset_on_the_stored_object() {
        let stored = br#"{"first_name":"A","nickname":"x","street_county":1}"#;
        let set = [
            ("street_county".to_owned(), json!(12)),
            ("household".to_owned(), Value::Null),
        ];
        let body = apply(1, stored, &set, &["nickname".to_owned()]).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"first_name": "A", "street_county": 12, "household": null})
        );
        // Unsetting what is not there is refused (a typo), naming the field only.
        assert!(matches!(
            apply(1, stored, &[], &["nick".to_owned()]),
            Err(EditError::Changes(_))
        ));
        // Not an object: only --body can replace it.
        for stored in [&b"[1,2]"[..], b"not json", b"\"text\""] {
            assert!(matches!(
                apply(7, stored, &set, &[]),
                Err(EditError::NotAnObject(7))
            ));
        }
    }

    #[test]
    fn an_operator_is_a_plain_name_of_1_to_200_characters() {
        assert_eq!(check_operator(" jdoe ").unwrap(), "jdoe");
        for bad in ["", "   ", "j\u{1b}[31mdoe", "a\u{202e}b", &"x".repeat(201)] {
            assert!(check_operator(bad).is_err(), "{bad:?}");
        }
    }
}
