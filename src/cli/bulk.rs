//! What the bulk commands over failed intakes share (`replay`, `failed dismiss`, `failed
//! edit` with a selection, and the duplicate commands' confirmation): the selection filters,
//! the bulk options, the confirmation before acting on many, the progress display and the
//! one-line summary of a bulk retry.

use crate::admin::failed;
use crate::admin::groups::GroupLabel;
use crate::admin::pacing::BulkOptions;
use crate::domain::error::ALL_CODES;
use crate::infra::settings::Settings;

use super::CliResult;

/// Filters shared by `failed list`, `replay` and `failed dismiss`.
#[derive(clap::Args)]
pub struct Selection {
    /// One message key.
    #[arg(long)]
    key: Option<String>,
    /// An error code.
    #[arg(long, value_parser = error_codes())]
    code: Option<String>,
    /// One failure group as `failed groups` labels it: `CODE` (every failure with that code)
    /// or `CODE:FIELD,FIELD` (exactly that set of failing fields; `CODE:` for none).
    #[arg(long, conflicts_with = "code")]
    group: Option<GroupLabel>,
    /// One network's failed intakes.
    #[arg(long)]
    network: Option<i64>,
    /// Failed at or after this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_parser = parse_time)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Failed before this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_parser = parse_time)]
    until: Option<chrono::DateTime<chrono::Utc>>,
}

/// The stable error codes, listed by `--help` and checked before anything connects.
fn error_codes() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(ALL_CODES.map(|c| c.as_str()))
}

impl Selection {
    pub(super) fn filter(&self, include_resolved: bool, limit: i64) -> failed::Filter {
        let group_code = self.group.as_ref().map(|g| g.code.as_str().to_owned());
        failed::Filter {
            key: self.key.clone(),
            code: self.code.clone().or(group_code),
            fields: self.group.as_ref().and_then(|g| g.fields.clone()),
            network: self.network,
            since: self.since,
            until: self.until,
            include_resolved,
            limit,
        }
    }

    /// The network chosen with `--network`.
    pub(super) fn network(&self) -> Option<i64> {
        self.network
    }

    pub fn is_empty(&self) -> bool {
        self.key.is_none()
            && self.code.is_none()
            && self.group.is_none()
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

/// Bulk commands over more than this many failed intakes ask first (or need `--yes`).
pub(super) const ASK_ABOVE: i64 = 10;

/// Options shared by the bulk commands, `replay` and `failed dismiss`.
#[derive(clap::Args)]
pub struct BulkArgs {
    /// Act on every open failed intake (required when no other filter is given).
    #[arg(long)]
    pub all: bool,
    /// Go ahead without asking, however many are selected (more than 10 ask on a terminal,
    /// and are refused without a terminal).
    #[arg(long)]
    pub yes: bool,
    /// At most this many failed intakes per second on average: batches of at most N, each
    /// followed by a pause.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: Option<u32>,
    /// Run each batch's transaction and roll it back: report what would happen, write
    /// nothing, queue no event.
    #[arg(long)]
    pub dry_run: bool,
    /// The operator recorded as resolving the failed intakes (default: $CASE_INTAKE_OPERATOR,
    /// else $USER, else $LOGNAME).
    #[arg(long)]
    pub operator: Option<String>,
    /// Print the totals as JSON.
    #[arg(long)]
    pub json: bool,
}

impl BulkArgs {
    pub(super) fn options(&self, settings: &Settings) -> BulkOptions {
        BulkOptions {
            window_size: settings.intake.window_size,
            rate: self.rate,
            dry_run: self.dry_run,
        }
    }

    /// The operator from `--operator` or the environment, checked; `None` when neither names
    /// one.
    pub(super) fn operator(&self) -> Result<Option<String>, String> {
        operator_of(self.operator.as_deref())
    }

    /// Asks (or refuses) before acting on more than [`ASK_ABOVE`]; a dry run writes nothing
    /// and never asks.
    pub(super) fn confirmed(&self, verb: &str, total: i64) -> CliResult {
        if self.dry_run {
            return Ok(());
        }
        ask_before(&format!("{verb} {total} failed intakes?"), total, self.yes)
    }

    /// Tells how the work is cut, when a rate cuts it.
    pub(super) fn announce(&self, settings: &Settings, total: i64) {
        if let Some(rate) = self.rate {
            let batches = self
                .options(settings)
                .pacing()
                .batches(total.max(0) as usize);
            eprintln!(
                "at most {rate}/s: {} batch(es) of at most {}",
                batches.len(),
                batches.first().copied().unwrap_or(0)
            );
        }
        if self.dry_run {
            eprintln!("dry run: every batch is rolled back; nothing is written");
        }
    }
}

/// The progress of a bulk retry (replay, bulk edit): the bar, or without a terminal a line
/// per batch.
pub(super) fn retry_progress<'a>(
    bar: &'a indicatif::ProgressBar,
    total: i64,
    verb: &'a str,
) -> impl FnMut(&failed::ReplayReport) + 'a {
    move |r| {
        if bar.is_hidden() {
            eprintln!(
                "{verb} {} of {total} (created {}, failed again {}, already done {}, skipped {}, \
                 already resolved {})",
                r.selected, r.created, r.failed, r.duplicate, r.skipped, r.already_resolved
            );
        }
        bar.set_position(r.selected as u64);
    }
}

/// A bulk retry's totals in one line; `verbs`: for a dry run, and for a real run.
pub(super) fn retry_summary(report: &failed::ReplayReport, verbs: [&str; 2]) -> String {
    let by_code: Vec<String> = report
        .failed_by_code
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect();
    let by_code = match by_code.is_empty() {
        true => String::new(),
        false => format!(" ({})", by_code.join(", ")),
    };
    let (prefix, verb) = match report.dry_run {
        true => ("dry run, nothing written: ", verbs[0]),
        false => ("", verbs[1]),
    };
    // Shown only when some were linked, so the line stays as it was for other networks.
    let linked = match report.matched {
        0 => String::new(),
        n => format!(", linked to an existing case {n}"),
    };
    format!(
        "{prefix}{verb} {}: created {}{linked}, failed again {}{by_code}, already done {}, \
         skipped {}, already resolved {}",
        report.selected,
        report.created,
        report.failed,
        report.duplicate,
        report.skipped,
        report.already_resolved
    )
}

/// A progress bar on stderr with the total; hidden (drawing nothing) when stderr is not a
/// terminal, where the per-batch lines are printed instead.
pub(super) fn progress_bar(total: i64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total.max(0) as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed}") {
        bar.set_style(style);
    }
    bar
}

/// The operator a command acts for, from `flag` (`--operator`) or the environment
/// (`CASE_INTAKE_OPERATOR`, `USER`, `LOGNAME`), checked; `None` when neither names one.
pub(super) fn operator_of(flag: Option<&str>) -> Result<Option<String>, String> {
    crate::admin::dismiss::operator_from(flag, |v| std::env::var(v).ok())
        .map(|name| crate::admin::dismiss::check_operator(&name))
        .transpose()
}

/// Goes ahead at once with at most [`ASK_ABOVE`] rows or with `yes`; otherwise asks
/// `question` on the terminal, and refuses without one.
pub(super) fn ask_before(question: &str, total: i64, yes: bool) -> CliResult {
    if total <= ASK_ABOVE || yes {
        return Ok(());
    }
    if confirm(question)? {
        return Ok(());
    }
    Err(format!("nothing done: {total} selected; confirm, or add --yes").into())
}

/// Asks on the terminal; `false` without asking when stdin is not a terminal (a script must
/// say `--yes`).
fn confirm(question: &str) -> std::io::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
