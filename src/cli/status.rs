//! `case-intake status KEY [--network N] [--json]`: what became of a message key, in every
//! network where it has an outcome (or the one named), as the status endpoint answers it.

use crate::admin::status::{self, IntakeStatus, NetworkStatus, StatusError};
use crate::infra::db;
use crate::infra::redact;
use crate::infra::settings::Settings;

use super::CliResult;

/// Prints the key's status per network; an error (a failing exit code) when it has none.
pub async fn status(key: &str, network: Option<i64>, json: bool, settings: &Settings) -> CliResult {
    let pool = db::open_current(&settings.database).await?;
    let found = status::for_operator(&pool, key, network).await?;
    if found.is_empty() {
        let shown = redact::escape_controls(key);
        let place = network.map_or("any network".to_owned(), |n| format!("network {n}"));
        return Err(format!(
            "no outcome is recorded for key \"{shown}\" in {place} (not received, still queued, \
             or removed by retention)"
        )
        .into());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        for s in &found {
            print!("{}", render(s));
        }
    }
    Ok(())
}

/// One block per network: a first line with the key's status, then its details, indented.
/// Everything shown is in display form already (`admin::status`: escaped, SSNs masked).
pub fn render(s: &NetworkStatus) -> String {
    let network = status::label(s.network);
    let time = |t: &chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S%.3f UTC");
    match &s.status {
        IntakeStatus::Created(c) | IntakeStatus::Matched(c) => format!(
            "network {network}  key {}  {}\n  case {}, household {}, attempt {}, \
             decided at {}\n  event {}\n",
            c.message_key,
            match s.status {
                IntakeStatus::Matched(_) => "matched (linked to an existing case)",
                _ => "created",
            },
            c.case_id,
            c.household_id.map_or("-".to_owned(), |h| h.to_string()),
            c.attempt,
            time(&c.decided_at),
            c.event_id,
        ),
        IntakeStatus::Failed(f) | IntakeStatus::Pending(f) => {
            let kind = match s.status {
                IntakeStatus::Pending(_) => "pending (awaits an operator's replay)",
                _ => "failed",
            };
            format!(
                "network {network}  key {}  {kind}\n  attempt {}, failed at {}, retry by {}\n  \
                 event {}\n{}",
                f.message_key,
                f.attempt,
                time(&f.failed_at),
                f.retry_by.as_str(),
                f.event_id,
                render_error(&f.error),
            )
        }
        IntakeStatus::Resolved(r) => format!(
            "network {network}  key {}  resolved ({})\n  attempt {}, resolved at {}\n  \
             event {}\n{}",
            r.message_key,
            r.resolution,
            r.attempt,
            time(&r.resolved_at),
            r.event_id,
            render_error(&r.error),
        ),
    }
}

/// The error's code and message, then one line per failing field.
fn render_error(e: &StatusError) -> String {
    let mut out = format!("  error {}: {}\n", e.code, e.message);
    if let Some(fields) = e.fields.as_object() {
        for (field, messages) in fields {
            let messages: Vec<&str> = match messages {
                serde_json::Value::Array(items) => {
                    items.iter().filter_map(|m| m.as_str()).collect()
                }
                other => other.as_str().into_iter().collect(),
            };
            out.push_str(&format!("    {field}: {}\n", messages.join("; ")));
        }
    }
    out
}
