//! `case-intake failed edit`: parses the changes (`field=value`, `field:=JSON`, `--unset`,
//! `--body FILE|-`), finds the operator, calls `admin::edit` for one KEY or
//! `admin::bulk_edit` for a selection, and renders the report.
//!
//! Values are parsed here rather than by clap: clap quotes a rejected value in its error,
//! and a value may be an SSN. Errors name the field only.

use std::io::Read;

use serde_json::Value;

use crate::admin::bulk_edit::{self, BulkEdit};
use crate::admin::edit::{self, Changes, EditReport, EditRequest};
use crate::admin::{dismiss, failed};
use crate::app::supervisor;
use crate::infra::db;
use crate::infra::redact;
use crate::infra::settings::Settings;

use super::CliResult;
use super::bulk::{BulkArgs, Selection, progress_bar, retry_progress, retry_summary};

/// Correct a key's open failed intake, or every selected one, and run it again as its key's
/// next attempt (resolved `edited`, audited in `failed_intake_edits`). Try it with --dry-run
/// first.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("change").required(true).multiple(true)))]
pub struct EditArgs {
    /// The message key of the one failed intake to edit; without it, the selection options
    /// (`--group`, `--code`, `--key`, `--since/--until`, `--network` or `--all`) choose the open
    /// failed intakes to edit alike.
    #[arg(value_name = "KEY", conflicts_with_all = ["key", "code", "group", "since", "until", "all", "yes", "rate"])]
    target: Option<String>,
    #[command(flatten)]
    select: Selection,
    /// `field=value` sets a JSON string; `field:=JSON` sets any JSON value (`street_county:=12`,
    /// `household:=null`). Repeatable.
    #[arg(long = "set", value_name = "FIELD=VALUE|FIELD:=JSON", group = "change")]
    set: Vec<String>,
    /// Remove a field from the stored body. Repeatable.
    #[arg(long = "unset", value_name = "FIELD", group = "change")]
    unset: Vec<String>,
    /// Replace the whole body with this file (`-`: stdin); with a KEY only, not with
    /// --set/--unset. The only way to edit a failure whose payload was truncated (oversize).
    #[arg(long, value_name = "FILE|-", group = "change", requires = "target", conflicts_with_all = ["set", "unset"])]
    body: Option<String>,
    #[command(flatten)]
    bulk: BulkArgs,
}

/// `failed edit`: one KEY, or the selection.
pub async fn edit(args: EditArgs, settings: &Settings) -> CliResult {
    let set: Vec<(String, Value)> = args
        .set
        .iter()
        .map(|s| parse_set(s))
        .collect::<Result<_, _>>()?;
    let changes = match &args.body {
        Some(source) => Changes::Body(read_body(source, settings.intake.max_body_bytes)?),
        None => Changes::Fields {
            set,
            unset: args.unset.clone(),
        },
    };
    edit::check_changes(&changes)?;
    let operator = dismiss::operator_from(args.bulk.operator.as_deref(), |v| std::env::var(v).ok());
    if !args.bulk.dry_run && operator.is_none() {
        return Err(edit::EditError::NoOperator.into());
    }
    let Some(key) = args.target.clone() else {
        return edit_selected(&args, changes, operator, settings).await;
    };
    let req = EditRequest {
        key,
        network: args.select.network(),
        changes,
        dry_run: args.bulk.dry_run,
        operator,
    };
    let pool = db::open_current(&settings.database).await?;
    let ctx = supervisor::window_context(settings);
    let report = edit::edit(&pool, &ctx, req).await?;
    if args.bulk.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// `failed edit` without a KEY: the same field changes on every selected open failed intake,
/// in batches, after a confirmation above ten.
async fn edit_selected(
    args: &EditArgs,
    changes: Changes,
    operator: Option<String>,
    settings: &Settings,
) -> CliResult {
    let (bulk, select) = (&args.bulk, &args.select);
    let Changes::Fields { set, unset } = changes else {
        return Err("--body edits one failed intake: give its KEY".into());
    };
    if select.is_empty() && !bulk.all {
        return Err(
            "choose what to edit: a KEY, or --key, --code, --group, --since/--until, \
                    --network or --all"
                .into(),
        );
    }
    let pool = db::open_current(&settings.database).await?;
    let filter = select.filter(false, 0);
    let selected = failed::select_open(&pool, &filter).await?;
    let total = selected.len() as i64;
    eprintln!("{total} open failed intake(s) selected");
    let req = BulkEdit {
        set,
        unset,
        operator,
        options: bulk.options(settings),
    };
    if total > 0 {
        bulk.confirmed("edit", total)?;
        bulk.announce(settings, total);
    }
    let ctx = supervisor::window_context(settings);
    let bar = progress_bar(total);
    let progress = retry_progress(&bar, total, "edited");
    let report = bulk_edit::edit_selected(&pool, &ctx, &selected, req, progress).await?;
    bar.finish_and_clear();
    if bulk.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{}",
        retry_summary(&report.totals, ["would edit", "edited"])
    );
    if !report.skipped_ids.is_empty() {
        let ids: Vec<String> = report.skipped_ids.iter().map(i64::to_string).collect();
        println!(
            "skipped (the changes cannot apply to the stored payload; edit each with a KEY and \
             --body): failed intake(s) {}",
            ids.join(", ")
        );
    }
    Ok(())
}

/// Parses `field=value` (a JSON string) or `field:=JSON` (any JSON value), splitting at the
/// first `=`. The error names the field, never the value.
pub fn parse_set(arg: &str) -> Result<(String, Value), String> {
    let Some((name, value)) = arg.split_once('=') else {
        return Err("--set takes FIELD=VALUE or FIELD:=JSON".into());
    };
    match name.strip_suffix(':') {
        Some(name) => serde_json::from_str(value)
            .map(|v| (name.to_owned(), v))
            .map_err(|_| {
                format!(
                    "--set {}:= needs a JSON value (e.g. 12, null, \"text\")",
                    redact::display_text(name)
                )
            }),
        None => Ok((name.to_owned(), Value::String(value.to_owned()))),
    }
}

/// Reads the replacement body from a file or stdin (`-`), refusing more than `max` bytes
/// (what the worker would refuse as too large) without reading further.
fn read_body(source: &str, max: usize) -> Result<Vec<u8>, String> {
    let shown = redact::display_text(source);
    let reader: Box<dyn Read> = if source == "-" {
        Box::new(std::io::stdin())
    } else {
        let file = std::fs::File::open(source).map_err(|e| format!("--body {shown}: {e}"))?;
        Box::new(file)
    };
    let mut body = Vec::new();
    reader
        .take(max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("--body {shown}: {e}"))?;
    if body.len() > max {
        return Err(format!(
            "--body {shown}: larger than intake.max_body_bytes ({max} bytes)"
        ));
    }
    Ok(body)
}

/// The report as text: what was (or would be) done, and the outcome.
fn print_report(r: &EditReport) {
    let mode = if r.dry_run { "dry run: " } else { "" };
    let network = r.network_id.map_or("-".into(), |n| n.to_string());
    println!(
        "{mode}key {} (network {network}), failed intake {}, attempt {}",
        r.message_key, r.failed_intake_id, r.attempt
    );
    if r.body_replaced {
        println!("  body replaced");
    }
    if !r.fields_set.is_empty() {
        println!("  set:   {}", r.fields_set.join(", "));
    }
    if !r.fields_unset.is_empty() {
        println!("  unset: {}", r.fields_unset.join(", "));
    }
    let verb = if r.dry_run { "would be" } else { "is" };
    match (r.outcome, &r.case, &r.error) {
        ("failed", _, error) => print_failure(verb, error.as_ref()),
        ("already_resolved", _, _) => {
            println!("already_resolved: the failure was resolved meanwhile; nothing was done");
            if !r.dry_run {
                return;
            }
        }
        (outcome, Some(c), _) => print_case(r.dry_run, verb, outcome, c),
        (outcome, None, _) => println!("{outcome}: the key's outcome {verb} answered again"),
    }
    if !r.dry_run {
        println!("event {}", r.event_id);
    } else {
        println!("nothing was written");
    }
}

fn print_case(dry_run: bool, verb: &str, outcome: &str, c: &edit::Placement) {
    let id = |v: Option<i64>| v.map_or("-".into(), |v| v.to_string());
    let created = if outcome == "duplicate" {
        "duplicate: the key already has its case"
    } else {
        "created"
    };
    println!(
        "{created}: case {} in household {}",
        id(c.case_id),
        id(c.household_id)
    );
    if let (Some(new), Some(head)) = (c.household_created, c.head_of_household) {
        let household = if new {
            "a new household"
        } else {
            "an existing household"
        };
        let role = if head { "its head" } else { "a member" };
        println!("  {verb} placed in {household} as {role}");
        if let Some(prev) = c.previous_head_case_id {
            println!("  replacing head case {prev}");
        }
    }
    if dry_run {
        println!("  (ids are illustrative: a real edit allocates others)");
    }
}

fn print_failure(verb: &str, error: Option<&Value>) {
    let code = error.and_then(|e| e["code"].as_str()).unwrap_or("unknown");
    println!("failed: {code} (a new failed intake {verb} recorded)");
    if let Some(message) = error.and_then(|e| e["message"].as_str()) {
        println!("  {message}");
    }
    if let Some(fields) = error.and_then(|e| e["fields"].as_object()) {
        for (field, messages) in fields {
            let list: Vec<&str> = messages
                .as_array()
                .map(|m| m.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            println!("  {field}: {}", list.join("; "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_takes_strings_and_json_the_httpie_way() {
        assert_eq!(
            parse_set("first_name=Ann").unwrap(),
            ("first_name".into(), Value::String("Ann".into()))
        );
        assert_eq!(
            parse_set("street_county:=12").unwrap(),
            ("street_county".into(), Value::from(12))
        );
        assert_eq!(
            parse_set("household:=null").unwrap(),
            ("household".into(), Value::Null)
        );
        // A string value may hold `=` and `:=`: the first `=` splits.
        assert_eq!(
            parse_set("notes=a:=b=c").unwrap(),
            ("notes".into(), Value::String("a:=b=c".into()))
        );
        assert_eq!(parse_set("x=").unwrap(), ("x".into(), Value::from("")));
    }

    #[test]
    fn a_bad_set_names_the_field_never_the_value() {
        let e = parse_set("ss_number:=123-45-6789").unwrap_err();
        assert!(e.contains("ss_number") && !e.contains("6789"), "{e}");
        let e = parse_set("123456789").unwrap_err();
        assert!(!e.contains("6789"), "{e}");
        let e = parse_set("123-45-6789:={").unwrap_err();
        assert!(!e.contains("123-45"), "{e}");
    }
}
