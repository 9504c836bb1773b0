//! `case-intake failed dismiss`: closing the selected open failed intakes with a reason, by a
//! named operator, throttled or as a dry run; refused without a reason or an operator.

use crate::admin::dismiss::{self, Dismissal};
use crate::admin::failed;
use crate::app::supervisor;
use crate::infra::db;
use crate::infra::settings::Settings;

use super::CliResult;
use super::bulk::{BulkArgs, Selection, progress_bar};

#[derive(clap::Args)]
pub struct DismissArgs {
    /// Why these failures will not be retried (1–500 characters): stored with each, never
    /// published.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    select: Selection,
    #[command(flatten)]
    bulk: BulkArgs,
}

pub async fn dismiss(args: &DismissArgs, settings: &Settings) -> CliResult {
    let bulk = &args.bulk;
    if args.select.is_empty() && !bulk.all {
        return Err(
            "choose what to dismiss: --key, --code, --group, --since/--until, --network or --all"
                .into(),
        );
    }
    let operator = bulk.operator()?.ok_or(
        "no operator: pass --operator NAME or set CASE_INTAKE_OPERATOR (a dismissal records who)",
    )?;
    let who = Dismissal::new(&operator, &args.reason)?;
    let pool = db::open_current(&settings.database).await?;
    let filter = args.select.filter(false, 0);
    let selected = failed::select_open(&pool, &filter).await?;
    let total = selected.len() as i64;
    eprintln!("{total} open failed intake(s) selected");
    if total == 0 {
        return print_report(&dismiss::DismissReport::default(), bulk.json);
    }
    bulk.confirmed("dismiss", total)?;
    bulk.announce(settings, total);
    let ctx = supervisor::window_context(settings);
    let bar = progress_bar(total);
    let options = bulk.options(settings);
    let report = dismiss::dismiss_selected(&pool, &ctx, &selected, &who, options, |r| {
        if bar.is_hidden() {
            eprintln!(
                "dismissed {} of {total} (already resolved {})",
                r.dismissed, r.already_resolved
            );
        }
        bar.set_position(r.selected as u64);
    })
    .await?;
    bar.finish_and_clear();
    print_report(&report, bulk.json)
}

fn print_report(report: &dismiss::DismissReport, json: bool) -> CliResult {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else if report.dry_run {
        println!(
            "dry run, nothing written: would dismiss {} of {} selected (already resolved {})",
            report.dismissed, report.selected, report.already_resolved
        );
    } else {
        println!(
            "dismissed {} of {} selected (already resolved {})",
            report.dismissed, report.selected, report.already_resolved
        );
    }
    Ok(())
}
