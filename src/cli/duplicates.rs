//! `case-intake duplicates …`: the possible-duplicate pairs flagged at intake (`list`, `show`,
//! `dismiss`), a network's duplicate policy (`policy`), and the match keys of cases written
//! before matching existed (`reindex`). Parses, calls `admin::duplicates`, renders.

use clap::{Subcommand, ValueEnum};

use crate::admin::dismiss::Dismissal;
use crate::admin::duplicates::{
    self, CaseView, ListFilter, Pair, PairDetail, Policy, Selection, State,
};
use crate::infra::db;
use crate::infra::settings::Settings;
use crate::intake::matching::Rule;

use super::CliResult;
use super::bulk::{ask_before, operator_of};

#[derive(Subcommand)]
pub enum DuplicatesCommand {
    /// List flagged pairs, newest first (open ones unless --state says otherwise).
    List {
        /// Only this network's pairs.
        #[arg(long)]
        network: Option<i64>,
        /// Which pairs: open (not resolved yet), dismissed, or all.
        #[arg(long, value_enum, default_value_t = StateArg::Open)]
        state: StateArg,
        /// Only pairs that matched this rule.
        #[arg(long, value_parser = rules())]
        rule: Option<String>,
        /// At most this many pairs.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
        /// Print the pairs as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show one pair with both cases: ids, names, date of birth, street address, the SSN masked
    /// (last four digits only), and how it was resolved.
    Show {
        /// The pair's id (as `duplicates list` prints it).
        id: i64,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mark pairs dismissed (not the same person), with the operator and a reason; a pair
    /// already dismissed is reported and left as it is.
    Dismiss(DismissArgs),
    /// Print a network's duplicate policy, or set it.
    Policy {
        /// The network.
        #[arg(long)]
        network: i64,
        /// The new policy: off (no matching), flag (create and record the pair), reject (fail
        /// `possible_duplicate` unless overridden) or link (answer with the existing case).
        #[arg(value_enum)]
        policy: Option<PolicyArg>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compute the match keys of cases that have none (written before matching existed), in
    /// batches, each its own transaction; cases with no usable date of birth stay without.
    Reindex {
        /// Only this network's cases.
        #[arg(long)]
        network: Option<i64>,
        /// Cases per batch (and per transaction).
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        batch: i64,
        /// Print the totals as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["ids", "all_open"])))]
pub struct DismissArgs {
    /// The pairs to dismiss (ids as `duplicates list` prints them).
    ids: Vec<i64>,
    /// Every open pair of --network instead.
    #[arg(long, requires = "network", conflicts_with = "ids")]
    all_open: bool,
    /// The network of --all-open.
    #[arg(long)]
    network: Option<i64>,
    /// Why these are not duplicates (1–500 characters): stored with each pair.
    #[arg(long)]
    reason: String,
    /// The operator recorded as dismissing (default: $CASE_INTAKE_OPERATOR, else $USER, else
    /// $LOGNAME).
    #[arg(long)]
    operator: Option<String>,
    /// Go ahead without asking, however many are selected (more than 10 ask on a terminal,
    /// and are refused without a terminal).
    #[arg(long)]
    yes: bool,
    /// Print the totals as JSON.
    #[arg(long)]
    json: bool,
}

/// `--state` of `duplicates list`.
#[derive(Clone, Copy, ValueEnum)]
pub enum StateArg {
    Open,
    Dismissed,
    All,
}

impl From<StateArg> for State {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Open => State::Open,
            StateArg::Dismissed => State::Dismissed,
            StateArg::All => State::All,
        }
    }
}

/// The policy argument of `duplicates policy`.
#[derive(Clone, Copy, ValueEnum)]
pub enum PolicyArg {
    Off,
    Flag,
    Reject,
    Link,
}

impl From<PolicyArg> for Policy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Off => Policy::Off,
            PolicyArg::Flag => Policy::Flag,
            PolicyArg::Reject => Policy::Reject,
            PolicyArg::Link => Policy::Link,
        }
    }
}

/// The rule names, listed by `--help` and checked before anything connects.
fn rules() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(Rule::ALL.map(Rule::as_str))
}

pub async fn duplicates_command(command: DuplicatesCommand, settings: &Settings) -> CliResult {
    match command {
        DuplicatesCommand::List {
            network,
            state,
            rule,
            limit,
            json,
        } => {
            let filter = ListFilter {
                network,
                state: state.into(),
                rule,
                limit,
            };
            list(&filter, json, settings).await
        }
        DuplicatesCommand::Show { id, json } => show(id, json, settings).await,
        DuplicatesCommand::Dismiss(args) => dismiss(&args, settings).await,
        DuplicatesCommand::Policy {
            network,
            policy,
            json,
        } => set_or_show_policy(network, policy.map(Policy::from), json, settings).await,
        DuplicatesCommand::Reindex {
            network,
            batch,
            json,
        } => reindex(network, batch, json, settings).await,
    }
}

async fn list(filter: &ListFilter, json: bool, settings: &Settings) -> CliResult {
    let pool = db::open_current(&settings.database).await?;
    let pairs = duplicates::list(&pool, filter).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&pairs)?);
    } else {
        print_pairs(&pairs);
    }
    eprintln!("{} pair(s)", pairs.len());
    Ok(())
}

fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// One line per pair.
fn print_pairs(pairs: &[Pair]) {
    println!(
        "{:>8}  {:>7}  {:>9}  {:>9}  {:<28}  {:>5}  {:<10}  {:<30}  {:<23}  state",
        "id", "network", "case", "candidate", "rules", "score", "overridden", "key", "flagged at"
    );
    for p in pairs {
        println!(
            "{:>8}  {:>7}  {:>9}  {:>9}  {:<28}  {:>5.2}  {:<10}  {:<30}  {:<23}  {}",
            p.id,
            p.network,
            p.case_id,
            p.candidate_case_id,
            p.rules.join(","),
            p.score,
            yes_no(p.overridden),
            p.message_key.as_deref().unwrap_or("-"),
            time(&p.flagged_at),
            p.state,
        );
    }
}

async fn show(id: i64, json: bool, settings: &Settings) -> CliResult {
    let pool = db::open_current(&settings.database).await?;
    let detail = duplicates::show(&pool, id).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
    } else {
        print!("{}", render(&detail));
    }
    Ok(())
}

/// The pair, then each case in a block. Everything is in display form already
/// (`admin::duplicates`: caller text escaped, SSNs masked).
pub fn render(d: &PairDetail) -> String {
    let p = &d.pair;
    let mut out = format!(
        "possible duplicate {}  network {}  {}\n  rules {}  score {:.2}  overridden {}\n  \
         flagged at {}  key {}  event {}\n",
        p.id,
        p.network,
        p.state,
        p.rules.join(","),
        p.score,
        yes_no(p.overridden),
        time(&p.flagged_at),
        p.message_key.as_deref().unwrap_or("-"),
        p.event_id,
    );
    if let Some(at) = &p.resolved_at {
        out.push_str(&format!(
            "  {} at {} by {}: {}\n",
            p.state,
            time(at),
            p.resolved_by.as_deref().unwrap_or("-"),
            p.resolution_reason.as_deref().unwrap_or("-"),
        ));
    }
    out.push_str(&render_case(
        "case",
        "created by the intake",
        p.case_id,
        d.case.as_ref(),
    ));
    out.push_str(&render_case(
        "candidate",
        "existing case",
        p.candidate_case_id,
        d.candidate.as_ref(),
    ));
    out
}

fn render_case(label: &str, role: &str, id: i64, case: Option<&CaseView>) -> String {
    let Some(c) = case else {
        return format!("{label} {id} ({role}): no longer stored\n");
    };
    format!(
        "{label} {id} ({role})\n  household {}, group {}, created {}, private {}\n  \
         name {} {}, born {}\n  street address {}\n  SSN {}\n",
        c.household_id,
        c.group_id,
        time(&c.created_at),
        yes_no(c.private),
        c.first_name,
        c.last_name,
        c.date_of_birth.map_or("-".to_owned(), |d| d.to_string()),
        c.street_address.as_deref().unwrap_or("-"),
        c.ssn.as_deref().unwrap_or("-"),
    )
}

async fn dismiss(args: &DismissArgs, settings: &Settings) -> CliResult {
    let operator = operator_of(args.operator.as_deref())?.ok_or(
        "no operator: pass --operator NAME or set CASE_INTAKE_OPERATOR (a dismissal records who)",
    )?;
    let who = Dismissal::new(&operator, &args.reason)?;
    let selection = match (args.all_open, args.network) {
        (true, Some(network)) => Selection::AllOpen { network },
        _ => Selection::Ids(args.ids.clone()),
    };
    let pool = db::open_current(&settings.database).await?;
    let selected = duplicates::select(&pool, &selection).await?;
    let total = selected.open.len() as i64;
    eprintln!("{total} open pair(s) selected");
    ask_before(
        &format!("dismiss {total} possible duplicates?"),
        total,
        args.yes,
    )?;
    let report = duplicates::dismiss(&pool, &selected, &who).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("dismissed {}", report.dismissed);
    if !report.already_dismissed.is_empty() {
        let ids: Vec<String> = report
            .already_dismissed
            .iter()
            .map(i64::to_string)
            .collect();
        println!(
            "already dismissed {} (left as they were): {}",
            ids.len(),
            ids.join(", ")
        );
    }
    Ok(())
}

async fn set_or_show_policy(
    network: i64,
    policy: Option<Policy>,
    json: bool,
    settings: &Settings,
) -> CliResult {
    let pool = db::open_current(&settings.database).await?;
    match policy {
        None => {
            let current = duplicates::policy(&pool, network).await?;
            if json {
                let out = serde_json::json!({"network": network, "policy": current});
                println!("{out}");
            } else {
                println!("network {network}: {}", current.as_str());
            }
        }
        Some(new) => {
            let change = duplicates::set_policy(&pool, network, new).await?;
            if json {
                println!("{}", serde_json::to_string(&change)?);
            } else {
                println!(
                    "network {network}: {} → {}",
                    change.old.as_str(),
                    change.new.as_str()
                );
            }
        }
    }
    Ok(())
}

async fn reindex(network: Option<i64>, batch: i64, json: bool, settings: &Settings) -> CliResult {
    let pool = db::open_current(&settings.database).await?;
    let report = duplicates::reindex(&pool, network, batch, |r| {
        eprintln!(
            "batch {}: {} case(s) read, {} updated, {} without usable values",
            r.batches, r.scanned, r.updated, r.skipped
        );
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "updated {} case(s) ({} read, {} left without keys: no usable date of birth, names \
             or address)",
            report.updated, report.scanned, report.skipped
        );
    }
    Ok(())
}
