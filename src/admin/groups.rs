//! Failure groups for operators: open failed intakes counted by cause (error code and failing
//! fields) per network, and the label that selects a group again (`--group`). Each failure is
//! in exactly one group, so the groups' counts add up to the open failures.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::domain::error::ErrorCode;
use crate::infra::redact;
use crate::store;

/// One group of open failed intakes, in display form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    /// `None` for failures that never authenticated (no network).
    pub network: Option<i64>,
    pub code: String,
    /// The failing fields, sorted and comma-separated (`""` when none), SSNs masked and
    /// control characters escaped: they are caller text.
    pub fields: String,
    pub count: i64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Pass as `--group` to select this cause again (with `--network` for this network only).
    pub label: String,
}

/// The open failed intakes per group, most numerous first; one network's with `network`.
pub async fn groups(pool: &PgPool, network: Option<i64>) -> Result<Vec<Group>, sqlx::Error> {
    Ok(store::failed::failure_groups(pool, network)
        .await?
        .into_iter()
        .map(|g| {
            let code = redact::escape_controls(&g.error_code).into_owned();
            // Stored already redacted (rows older than that are redacted here, and their
            // label may then not select them: `--code` does).
            let fields = redact::display_text(&g.error_fields);
            Group {
                label: label(&code, &fields),
                network: g.network_id,
                code,
                fields,
                count: g.count,
                first_seen: g.first_seen,
                last_seen: g.last_seen,
            }
        })
        .collect())
}

/// A group's label: the code, then `:` and the fields when it names any.
pub fn label(code: &str, fields: &str) -> String {
    if fields.is_empty() {
        code.to_owned()
    } else {
        format!("{code}:{fields}")
    }
}

/// What `--group` selects: a stable code and, when given, exactly this set of failing fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLabel {
    pub code: ErrorCode,
    /// `None`: every field set of the code; `Some("")` (`code:`): failures naming no field.
    pub fields: Option<String>,
}

impl std::str::FromStr for GroupLabel {
    type Err = String;

    /// `code` or `code:field,field` as `failed groups` prints it; the code must be a stable
    /// code, the fields are matched exactly as listed (sorted, comma-separated).
    fn from_str(label: &str) -> Result<Self, Self::Err> {
        let (code, fields) = match label.split_once(':') {
            Some((code, fields)) => (code, Some(fields.to_owned())),
            None => (label, None),
        };
        let code = ErrorCode::parse(code).ok_or_else(|| {
            let codes: Vec<&str> = crate::domain::error::ALL_CODES
                .iter()
                .map(|c| c.as_str())
                .collect();
            format!(
                "{:?} is not an error code (one of: {})",
                redact::display_text(code),
                codes.join(", ")
            )
        })?;
        Ok(Self { code, fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_codes_are_checked() {
        let l: GroupLabel = "validation_failed:street_county,zip".parse().unwrap();
        assert_eq!(l.code, ErrorCode::ValidationFailed);
        assert_eq!(l.fields.as_deref(), Some("street_county,zip"));
        assert_eq!(
            label("validation_failed", "street_county,zip"),
            "validation_failed:street_county,zip"
        );

        let l: GroupLabel = "unauthorized".parse().unwrap();
        assert_eq!((l.code, l.fields), (ErrorCode::Unauthorized, None));
        assert_eq!(label("unauthorized", ""), "unauthorized");
        let l: GroupLabel = "malformed_json:".parse().unwrap();
        assert_eq!(l.fields.as_deref(), Some(""));
        // A field name may hold a colon: only the first one separates the code.
        let l: GroupLabel = "validation_failed:a:b".parse().unwrap();
        assert_eq!(l.fields.as_deref(), Some("a:b"));

        let e = "no_such_code:x".parse::<GroupLabel>().unwrap_err();
        assert!(
            e.contains("no_such_code") && e.contains("validation_failed"),
            "{e}"
        );
        let e = "\u{1b}[2J123-45-6789".parse::<GroupLabel>().unwrap_err();
        assert!(!e.contains('\u{1b}') && !e.contains("123-45"), "{e}");
    }
}
