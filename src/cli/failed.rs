//! `case-intake failed …` and `case-intake replay`: selecting failed intakes, rendering them,
//! and replaying them through the pipeline.

use clap::Subcommand;

use crate::admin::failed;
use crate::app::supervisor;
use crate::infra::db;
use crate::infra::settings::Settings;
use crate::store::crypto::Vault;

use super::CliResult;

#[derive(Subcommand)]
pub enum FailedCommand {
    /// List failed intakes (open ones unless --include-resolved).
    List {
        #[command(flatten)]
        select: Selection,
        #[arg(long)]
        include_resolved: bool,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Show every attempt of a message key: payload (SSN masked), error, attempts.
    Show {
        key: String,
        #[arg(long)]
        network: Option<i64>,
    },
}

/// Filters shared by `failed list` and `replay`.
#[derive(clap::Args)]
pub struct Selection {
    /// One message key.
    #[arg(long)]
    key: Option<String>,
    /// An error code, e.g. validation_failed.
    #[arg(long)]
    code: Option<String>,
    #[arg(long)]
    network: Option<i64>,
    /// Failed at or after this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_parser = parse_time)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Failed before this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_parser = parse_time)]
    until: Option<chrono::DateTime<chrono::Utc>>,
}

impl Selection {
    fn filter(&self, include_resolved: bool, limit: i64) -> Result<failed::Filter, String> {
        if let Some(code) = &self.code
            && crate::intake::error::ErrorCode::parse(code).is_none()
        {
            return Err(format!("unknown error code {code:?}"));
        }
        Ok(failed::Filter {
            key: self.key.clone(),
            code: self.code.clone(),
            network: self.network,
            since: self.since,
            until: self.until,
            include_resolved,
            limit,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.key.is_none()
            && self.code.is_none()
            && self.network.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
        .map_err(|_| format!("{s:?} is neither RFC 3339 nor YYYY-MM-DD"))
}

/// `failed list` and `failed show`.
pub async fn failed_command(command: FailedCommand, settings: &Settings) -> CliResult {
    match command {
        FailedCommand::List {
            select,
            include_resolved,
            limit,
            json,
        } => list(&select, include_resolved, limit, json, settings).await,
        FailedCommand::Show { key, network } => show(&key, network, settings).await,
    }
}

async fn list(
    select: &Selection,
    include_resolved: bool,
    limit: i64,
    json: bool,
    settings: &Settings,
) -> CliResult {
    let pool = db::open_current(&settings.database).await?;
    let rows = failed::list(&pool, &select.filter(include_resolved, limit)?).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:>8}  {:<25}  {:>7}  {:<22}  {:>8}  key",
        "id", "failed at", "network", "code", "attempts"
    );
    for r in &rows {
        println!(
            "{:>8}  {:<25}  {:>7}  {:<22}  {:>8}  {}",
            r.id,
            r.created_at.format("%Y-%m-%d %H:%M:%S%.3f"),
            r.network_id.map_or("-".into(), |n| n.to_string()),
            r.error_code,
            r.attempts,
            r.message_key.as_deref().unwrap_or("-"),
        );
    }
    eprintln!("{} failed intake(s)", rows.len());
    Ok(())
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
pub async fn replay(select: &Selection, all: bool, json: bool, settings: &Settings) -> CliResult {
    if select.is_empty() && !all {
        return Err(
            "choose what to replay: --key, --code, --since/--until, --network or --all".into(),
        );
    }
    let pool = db::open_current(&settings.database).await?;
    let filter = select.filter(false, 0)?;
    let ctx = supervisor::window_context(settings);
    let report = failed::replay(&pool, &ctx, &filter, settings.intake.window_size, |r| {
        eprintln!(
            "replayed {} (created {}, failed again {}, already done {}, skipped {})",
            r.selected, r.created, r.failed, r.duplicate, r.skipped
        );
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "replayed {}: created {}, failed again {}, already done {}, skipped (no key) {}",
            report.selected, report.created, report.failed, report.duplicate, report.skipped
        );
    }
    Ok(())
}
