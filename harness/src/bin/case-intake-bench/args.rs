//! The command line: the options, the message mix and the duplicate policy, and their checks.

use std::path::PathBuf;

use clap::Parser;
use serde::Serialize;

use crate::Result;

/// Benchmark of the case-intake worker on a private database, queue and exchange.
#[derive(Parser, Debug)]
#[command(
    name = "case-intake-bench",
    version,
    about = "End-to-end benchmark of the case-intake worker on its own database, queue and exchange"
)]
pub struct Args {
    /// Intakes published in the measured phase (re-published duplicates included).
    #[arg(long, default_value_t = 100_000)]
    pub count: usize,
    /// Offered load in intakes per second; full speed (pipelined confirms) when absent.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Worker processes (or in-process workers with --in-process).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Run `case_intake::app::supervisor::run` inside this process instead of spawning `case-intake`.
    #[arg(long)]
    pub in_process: bool,
    /// intake.window_size of the workers.
    #[arg(long)]
    pub window: Option<usize>,
    /// amqp.prefetch of the workers (default: the built-in one, raised to --window if lower).
    #[arg(long)]
    pub prefetch: Option<u16>,
    /// intake.consumers of each worker.
    #[arg(long)]
    pub consumers: Option<usize>,
    /// database.max_connections of each worker.
    #[arg(long)]
    pub pool: Option<u32>,
    /// Any other worker setting, SECTION.KEY=VALUE (repeatable), e.g. outbox.batch_size=1000.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// The benchmark's own database; dropped and recreated unless --keep-db.
    #[arg(long, default_value = "case_intake_bench")]
    pub db: String,
    /// PostgreSQL server URL, without a database name.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub pg: String,
    /// RabbitMQ URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp: String,
    /// Neither drop the database at start nor at the end.
    #[arg(long)]
    pub keep_db: bool,
    /// Give up waiting for outcome events after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Also print the report as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Cases inserted directly with SQL into the measured network before measuring, each a
    /// distinct made-up person (SSN, names, date of birth, address, matching keys).
    #[arg(long, default_value_t = 0)]
    pub preload: u64,
    /// The measured network's duplicate_policy: off or flag (reject and link would need the
    /// checks to know which intakes must fail or link, so the benchmark refuses them).
    #[arg(long, default_value = "flag", value_parser = parse_policy)]
    pub policy: Policy,
    /// Measure alternately with the policy off and flag, on the same database and preload:
    /// --rounds pairs of measured phases (off, flag, then flag, off, …), then their ratio.
    #[arg(long)]
    pub alternate_policy: bool,
    /// With --alternate-policy: pairs of measured phases (default 3).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Households created before measuring (not measured), target of joins and replacements.
    #[arg(long, default_value_t = 200)]
    pub households: usize,
    /// How many of those households receive the head replacements.
    #[arg(long, default_value_t = 8)]
    pub hot: usize,
    /// Percentages of the measured messages by kind; new households are the rest. `duplicate`
    /// re-publishes an earlier message (same key); `person` is a new key whose body is a person
    /// already on file (preloaded or earlier in the phase), written differently.
    #[arg(long, default_value = "join=20,replace=13,invalid=2,duplicate=5,person=0", value_parser = parse_mix)]
    pub mix: Mix,
    /// Publisher confirms outstanding at most.
    #[arg(long, default_value_t = 1000)]
    pub outstanding: usize,
    /// Seed of the message mix (random when absent).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The worker binary (default: `case-intake` next to this executable).
    #[arg(long)]
    pub worker_bin: Option<PathBuf>,
    /// Only delete the queues and exchange left by run ID (a run killed with SIGKILL), then
    /// exit.
    #[arg(long, value_name = "ID")]
    pub cleanup: Option<String>,
}

/// Shares of the message kinds, in percent (new households: the rest).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Mix {
    pub join: f64,
    pub replace: f64,
    pub invalid: f64,
    pub duplicate: f64,
    pub person: f64,
}

/// The measured network's `duplicate_policy` that the benchmark supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    Off,
    Flag,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Off => "off",
            Policy::Flag => "flag",
        }
    }
}

pub fn parse_policy(s: &str) -> Result<Policy, String> {
    match s {
        "off" => Ok(Policy::Off),
        "flag" => Ok(Policy::Flag),
        "reject" | "link" => Err(format!(
            "{s} is not supported by the benchmark: its checks expect every valid intake to \
             create a case, and do not know which intakes {s} would turn away; use off or flag"
        )),
        other => Err(format!("unknown policy {other}: use off or flag")),
    }
}

pub fn parse_mix(s: &str) -> Result<Mix, String> {
    let mut mix = Mix {
        join: 0.0,
        replace: 0.0,
        invalid: 0.0,
        duplicate: 0.0,
        person: 0.0,
    };
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part}: expected KIND=PERCENT"))?;
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("{part}: not a number"))?;
        if !(0.0..=100.0).contains(&v) {
            return Err(format!("{part}: a percentage is 0 to 100"));
        }
        match k.trim() {
            "join" => mix.join = v,
            "replace" => mix.replace = v,
            "invalid" => mix.invalid = v,
            "duplicate" => mix.duplicate = v,
            "person" => mix.person = v,
            other => {
                return Err(format!(
                    "unknown kind {other}: use join, replace, invalid, duplicate, person"
                ));
            }
        }
    }
    if mix.join + mix.replace + mix.invalid + mix.duplicate + mix.person > 100.0 {
        return Err("the percentages add up to more than 100".into());
    }
    Ok(mix)
}

pub fn check_args(args: &Args) -> Result<()> {
    if args.count == 0 || args.workers == 0 || args.households == 0 || args.outstanding == 0 {
        return Err("--count, --workers, --households and --outstanding must be positive".into());
    }
    if args.hot == 0 || args.hot > args.households {
        return Err("--hot must be between 1 and --households".into());
    }
    if args.rounds == Some(0) {
        return Err("--rounds must be positive".into());
    }
    if args.rounds.is_some() && !args.alternate_policy {
        return Err("--rounds goes with --alternate-policy".into());
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be a positive number".into());
    }
    if args.db.is_empty()
        || !args
            .db
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err("--db must be made of lowercase letters, digits and underscores".into());
    }
    Ok(())
}
