//! The measured phases: one, or alternating duplicate policies, each with fresh workers, and the
//! off/flag comparison of an alternating run.

use case_intake::infra::settings::Settings;
use serde::Serialize;

use crate::args::{Args, Policy};
use crate::database::set_policy;
use crate::evaluate::{Owed, evaluate};
use crate::fleet::Workers;
use crate::measure::measure;
use crate::report::{Report, print_report};
use crate::{Ctx, Result, WorkerStart};

/// One measured phase: its place in the run, its policy and its people.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    /// 1-based.
    pub index: usize,
    pub of: usize,
    pub policy: Policy,
}

/// The policy of each measured phase: --policy once, or with --alternate-policy pairs of off
/// and flag in the order off, flag, flag, off, off, flag, … so that a drift during the run
/// (the database growing by each phase's cases) weighs on both policies alike.
pub fn phase_policies(args: &Args) -> Vec<Policy> {
    if !args.alternate_policy {
        return vec![args.policy];
    }
    (0..args.rounds.unwrap_or(3))
        .flat_map(|r| {
            if r % 2 == 0 {
                [Policy::Off, Policy::Flag]
            } else {
                [Policy::Flag, Policy::Off]
            }
        })
        .collect()
}

/// Runs every measured phase on the same database, each with fresh workers (which read the
/// network's policy anew); the checks of a phase cover every earlier phase too.
pub async fn all_phases(ctx: &Ctx<'_>, start: &WorkerStart<'_>) -> Result<bool> {
    let policies = phase_policies(ctx.args);
    let mut prior: Vec<Owed> = Vec::new();
    let mut results: Vec<(Policy, f64, bool)> = Vec::new();
    for (i, policy) in policies.iter().enumerate() {
        let phase = Phase {
            index: i + 1,
            of: policies.len(),
            policy: *policy,
        };
        set_policy(ctx.pool, ctx.net.network_id, phase.policy).await?;
        if phase.of > 1 {
            eprintln!(
                "phase {}/{}: duplicate_policy {}",
                phase.index,
                phase.of,
                phase.policy.as_str()
            );
        }
        let mut workers = Workers::start(ctx.args, start.settings, start.overrides, start.bin)?;
        let report =
            measure_and_report(ctx, &phase, start.settings, &mut workers, &mut prior).await?;
        results.push((phase.policy, report.intakes_per_s, report.ok));
        if ctx.stop.is_cancelled() {
            break;
        }
    }
    if policies.len() > 1 {
        print_comparison(&results, ctx.args.json)?;
    }
    Ok(results.iter().all(|(_, _, ok)| *ok) && results.len() == policies.len())
}

/// The off/flag comparison of an alternating run.
#[derive(Serialize)]
pub struct Comparison {
    pub phases: Vec<ComparedPhase>,
    pub off_mean_per_s: f64,
    pub flag_mean_per_s: f64,
    /// flag / off of the means.
    pub ratio: f64,
    pub ok: bool,
}

#[derive(Serialize)]
pub struct ComparedPhase {
    pub policy: Policy,
    pub intakes_per_s: f64,
    pub ok: bool,
}

pub fn print_comparison(results: &[(Policy, f64, bool)], json: bool) -> Result<()> {
    let mean = |p: Policy| {
        let v: Vec<f64> = results.iter().filter(|r| r.0 == p).map(|r| r.1).collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let (off, flag) = (mean(Policy::Off), mean(Policy::Flag));
    let c = Comparison {
        phases: results
            .iter()
            .map(|(policy, intakes_per_s, ok)| ComparedPhase {
                policy: *policy,
                intakes_per_s: *intakes_per_s,
                ok: *ok,
            })
            .collect(),
        off_mean_per_s: off,
        flag_mean_per_s: flag,
        ratio: if off > 0.0 { flag / off } else { 0.0 },
        ok: results.iter().all(|r| r.2),
    };
    println!("comparison : phase  policy  intakes/s  checks");
    for (i, p) in c.phases.iter().enumerate() {
        println!(
            "comparison : {:>5}  {:<6}  {:>9.0}  {}",
            i + 1,
            p.policy.as_str(),
            p.intakes_per_s,
            if p.ok { "ok" } else { "FAILED" }
        );
    }
    println!(
        "comparison : mean off {off:.0}/s, mean flag {flag:.0}/s, flag/off {:.3}",
        c.ratio
    );
    if json {
        println!("{}", serde_json::json!({ "comparison": c }));
    }
    Ok(())
}

/// Measures, stops the workers, runs the checks (of this phase's keys and `prior`'s) and
/// prints the report; adds this phase's keys to `prior`.
pub async fn measure_and_report(
    ctx: &Ctx<'_>,
    phase: &Phase,
    settings: &Settings,
    workers: &mut Workers,
    prior: &mut Vec<Owed>,
) -> Result<Report> {
    let measured = measure(ctx, phase, workers).await;
    let rss = workers.peak_rss_kib();
    eprintln!("stopping workers");
    let stopped = workers.stop().await;
    let report = evaluate(ctx, phase, settings, measured?, rss, stopped, prior).await?;
    print_report(&report);
    if ctx.args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(report)
}
