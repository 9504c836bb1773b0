//! `case-intake failed edit`: parses the changes (`field=value`, `field:=JSON`, `--unset`,
//! `--body FILE|-`), finds the operator, calls `admin::edit` and renders its report.
//!
//! Values are parsed here rather than by clap: clap quotes a rejected value in its error,
//! and a value may be an SSN. Errors name the field only.

use std::io::Read;

use serde_json::Value;

use crate::admin::edit::{self, Changes, EditReport, EditRequest};
use crate::app::supervisor;
use crate::infra::db;
use crate::infra::redact;
use crate::infra::settings::Settings;

use super::CliResult;

/// Correct a key's open failed intake and run it again as the key's next attempt (resolved
/// `edited`, audited in `failed_intake_edits`). Try it with --dry-run first.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("change").required(true).multiple(true)))]
pub struct EditArgs {
    /// The message key of the failed intake.
    key: String,
    /// The network whose open failure of KEY to edit (required when KEY has open failures in
    /// several networks).
    #[arg(long)]
    network: Option<i64>,
    /// `field=value` sets a JSON string; `field:=JSON` sets any JSON value (`street_county:=12`,
    /// `household:=null`). Repeatable.
    #[arg(long = "set", value_name = "FIELD=VALUE|FIELD:=JSON", group = "change")]
    set: Vec<String>,
    /// Remove a field from the stored body. Repeatable.
    #[arg(long = "unset", value_name = "FIELD", group = "change")]
    unset: Vec<String>,
    /// Replace the whole body with this file (`-`: stdin); not with --set/--unset. The only
    /// way to edit a failure whose payload was truncated (oversize).
    #[arg(long, value_name = "FILE|-", group = "change", conflicts_with_all = ["set", "unset"])]
    body: Option<String>,
    /// Show what the corrected intake would come to, writing nothing.
    #[arg(long)]
    dry_run: bool,
    /// Who edits (audited, recorded as resolved_by); default: $CASE_INTAKE_OPERATOR, then $USER
    /// or $LOGNAME. Required unless --dry-run.
    #[arg(long, env = "CASE_INTAKE_OPERATOR")]
    operator: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `failed edit`.
pub async fn edit(args: EditArgs, settings: &Settings) -> CliResult {
    let changes = match &args.body {
        Some(source) => Changes::Body(read_body(source, settings.intake.max_body_bytes)?),
        None => Changes::Fields {
            set: args
                .set
                .iter()
                .map(|s| parse_set(s))
                .collect::<Result<_, _>>()?,
            unset: args.unset.clone(),
        },
    };
    edit::check_changes(&changes)?;
    let operator = args
        .operator
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|o| !o.trim().is_empty());
    let req = EditRequest {
        key: args.key.clone(),
        network: args.network,
        changes,
        dry_run: args.dry_run,
        operator,
    };
    if !req.dry_run && req.operator.is_none() {
        return Err(edit::EditError::NoOperator.into());
    }
    let pool = db::open_current(&settings.database).await?;
    let ctx = supervisor::window_context(settings);
    let report = edit::edit(&pool, &ctx, req).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
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
