//! `case-intake failed …` and `case-intake replay`: listing and showing failed intakes, and
//! replaying them through the pipeline (throttled, or as a dry run). `failed groups`,
//! `failed dismiss` and `failed edit` are in `groups.rs`, `dismiss.rs` and `edit.rs`; the
//! selection, confirmation and progress every bulk command shares are in `bulk.rs`.

use clap::Subcommand;

use crate::admin::failed;
use crate::app::supervisor;
use crate::infra::db;
use crate::infra::settings::Settings;
use crate::store::crypto::Vault;

use super::CliResult;
use super::bulk::{BulkArgs, Selection, progress_bar, retry_progress, retry_summary};

#[derive(Subcommand)]
pub enum FailedCommand {
    /// List failed intakes, oldest first (open ones unless --include-resolved), a page at a
    /// time: the total is printed, and the next page starts with --after.
    List {
        #[command(flatten)]
        select: Selection,
        /// Also list failed intakes already resolved by a replay.
        #[arg(long)]
        include_resolved: bool,
        /// At most this many rows.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
        /// Start after this failed-intake id (the next page of an earlier listing).
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Print the rows as a JSON array (the total and the next page go to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Show every attempt of a message key: payload (SSN masked), error, attempts. Always JSON.
    Show {
        /// The message key.
        key: String,
        /// Only the attempts of this network (keys are per network).
        #[arg(long)]
        network: Option<i64>,
        /// Accepted for symmetry with the other read commands: the output is JSON anyway.
        #[arg(long)]
        json: bool,
    },
    /// Open failed intakes per group (network, error code, failing fields), most numerous
    /// first, with the label that selects the group again (`--group`).
    Groups {
        /// Only this network's groups.
        #[arg(long)]
        network: Option<i64>,
        /// Print the groups as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Mark the selected open failed intakes resolved as dismissed (kept, with the operator
    /// and the reason) and announce each with a `case.intake_resolved` event.
    Dismiss(super::dismiss::DismissArgs),
    /// Correct a key's open failed intake (`--set field=value`, `--set field:=JSON`, `--unset
    /// field`, or `--body FILE|-`) and run it as the key's next attempt; `--dry-run` first.
    Edit(super::edit::EditArgs),
}

/// `failed list`, `failed show` and `failed edit`.
pub async fn failed_command(command: FailedCommand, settings: &Settings) -> CliResult {
    match command {
        FailedCommand::List {
            select,
            include_resolved,
            limit,
            after,
            json,
        } => {
            let filter = select.filter(include_resolved, limit);
            list(&filter, after, json, settings).await
        }
        FailedCommand::Show { key, network, .. } => show(&key, network, settings).await,
        FailedCommand::Groups { network, json } => {
            super::groups::groups(network, json, settings).await
        }
        FailedCommand::Dismiss(args) => super::dismiss::dismiss(&args, settings).await,
        FailedCommand::Edit(args) => super::edit::edit(args, settings).await,
    }
}

async fn list(filter: &failed::Filter, after: i64, json: bool, settings: &Settings) -> CliResult {
    let pool = db::open_current(&settings.database).await?;
    let page = failed::list(&pool, filter, after).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&page.rows)?);
    } else {
        print_rows(&page.rows);
    }
    eprintln!(
        "showing {} of {} failed intake(s)",
        page.rows.len(),
        page.total
    );
    if let Some(next) = page.next_after {
        eprintln!("next page: add --after {next}");
    }
    Ok(())
}

/// One line per failed intake; the error message is cut to keep the line readable (`failed
/// show` has all of it).
fn print_rows(rows: &[failed::FailedIntake]) {
    println!(
        "{:>8}  {:<23}  {:>7}  {:<22}  {:>8}  {:<9}  {:<30}  message",
        "id", "failed at", "network", "code", "attempts", "state", "key"
    );
    for r in rows {
        println!(
            "{:>8}  {:<23}  {:>7}  {:<22}  {:>8}  {:<9}  {:<30}  {}",
            r.id,
            r.created_at.format("%Y-%m-%d %H:%M:%S%.3f"),
            r.network_id.map_or("-".into(), |n| n.to_string()),
            r.error_code,
            r.attempts,
            r.resolution.as_deref().unwrap_or("open"),
            r.message_key.as_deref().unwrap_or("-"),
            cut(r.error["message"].as_str().unwrap_or(""), 80),
        );
    }
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

async fn show(key: &str, network: Option<i64>, settings: &Settings) -> CliResult {
    let pool = db::open_current(&settings.database).await?;
    let vault = Vault::from_settings(&settings.crypto)?;
    let rows = failed::show(&pool, &vault, key, network).await?;
    if rows.is_empty() {
        return Err(format!("no failed intake with key {key:?}").into());
    }
    println!("{}", serde_json::to_string_pretty(&rows)?);
    Ok(())
}

/// `replay`: every selected open failed intake again, under its original key.
pub async fn replay(select: &Selection, bulk: &BulkArgs, settings: &Settings) -> CliResult {
    if select.is_empty() && !bulk.all {
        return Err(
            "choose what to replay: --key, --code, --group, --since/--until, --network or --all"
                .into(),
        );
    }
    let operator = bulk.operator()?;
    let pool = db::open_current(&settings.database).await?;
    let filter = select.filter(false, 0);
    // The selection is fixed here: the run accounts for each of these rows, however many a
    // sender's resend resolves before its batch.
    let selected = failed::select_open(&pool, &filter).await?;
    let total = selected.len() as i64;
    eprintln!("{total} open failed intake(s) selected");
    if total == 0 {
        return print_replay(&failed::ReplayReport::default(), bulk.json);
    }
    bulk.confirmed("replay", total)?;
    bulk.announce(settings, total);
    let ctx = supervisor::window_context(settings);
    let bar = progress_bar(total);
    let options = bulk.options(settings);
    let progress = retry_progress(&bar, total, "replayed");
    let report = failed::replay_selected(
        &pool,
        &ctx,
        &selected,
        options,
        operator.as_deref(),
        progress,
    )
    .await?;
    bar.finish_and_clear();
    print_replay(&report, bulk.json)
}

fn print_replay(report: &failed::ReplayReport, json: bool) -> CliResult {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    println!("{}", retry_summary(report, ["would replay", "replayed"]));
    Ok(())
}
