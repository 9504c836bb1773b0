//! Measuring one phase: the pre-phase households, then the measured publishes and the wait for
//! their outcome events, with a progress line and a CPU sample at each end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use case_intake_harness::broker;
use case_intake_harness::kinds::Kind;
use case_intake_harness::ledger::lock;
use case_intake_harness::publisher::{PipelinedPublisher, Progress};
use case_intake_harness::sampler::{self, CpuSample};
use lapin::types::FieldTable;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::task::JoinHandle;

use crate::database::{db_size, wal_lsn};
use crate::fleet::Workers;
use crate::phases::Phase;
use crate::plan::{Msg, Source, body_of, msg, plan};
use crate::preload::reserve_people;
use crate::{Ctx, Result};

/// Why waiting for events cannot go on.
pub fn wait_broken(ctx: &Ctx<'_>, workers: &mut Workers) -> Result<(), String> {
    if ctx.stop.is_cancelled() {
        return Err("interrupted".into());
    }
    if lock(ctx.ledger).closed {
        return Err(
            "the events tap lost its broker connection (closed by someone else?): \
                    the run is void"
                .into(),
        );
    }
    workers.check_alive()
}

/// What the measured phase produced.
pub struct Measured {
    pub prephase: Vec<Msg>,
    pub msgs: Vec<Msg>,
    pub sent: Vec<Instant>,
    pub cpu: BTreeMap<String, f64>,
    pub timed_out: bool,
    pub interrupted: bool,
    pub db_bytes_before: i64,
    pub wal_before: String,
}

/// Creates the household pool (not measured), then publishes and waits for the measured phase.
pub async fn measure(ctx: &Ctx<'_>, phase: &Phase, workers: &mut Workers) -> Result<Measured> {
    let args = ctx.args;
    // Every phase draws the same mix: phases of an alternating run differ by policy only.
    let seed = ctx.seed;
    let mut rng = StdRng::seed_from_u64(seed);
    let headers = broker::token_headers(&ctx.net.token);
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let people0 = reserve_people(ctx.pool, (args.households + args.count) as u64).await?;
    let (prephase, households) = prephase(ctx, phase, workers, &headers, people0, deadline).await?;
    let base_total = lock(ctx.ledger).total;

    let mut source = Source {
        households: &households,
        people0: people0 + args.households as u64,
        on_file: Vec::new(),
    };
    let msgs = Arc::new(plan(ctx, phase, &mut rng, &mut source));
    let db_bytes_before = db_size(ctx.pool).await?;
    let wal_before = wal_lsn(ctx.pool).await?;
    eprintln!(
        "measuring: {} intakes {}",
        msgs.len(),
        args.rate
            .map_or("at full speed".to_owned(), |r| format!("at {r}/s"))
    );
    let progress = Arc::new(Progress::default());
    let pids = workers.pids();
    let cpu_start = CpuSample::take(&pids);
    let publisher = publisher(ctx, headers, args.rate, progress.clone());
    let publishing = msgs.clone();
    let publisher = tokio::spawn(async move { publisher.publish(&publishing).await });
    let watched = Watch {
        base_total,
        expected: msgs.len(),
        deadline,
        progress: &progress,
    };
    let end = watch(ctx, workers, publisher, &watched).await?;
    let cpu_end = CpuSample::take(&pids);
    // Late or extra events (a re-published outbox row) would show up here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Measured {
        prephase,
        msgs: Arc::unwrap_or_clone(msgs),
        sent: end.sent,
        cpu: sampler::cores_used(&cpu_start, &cpu_end, "bench"),
        timed_out: end.timed_out,
        interrupted: end.interrupted,
        db_bytes_before,
        wal_before,
    })
}

/// The run's confirming publisher into the intake queue, at `rate` if given.
fn publisher(
    ctx: &Ctx<'_>,
    headers: FieldTable,
    rate: Option<f64>,
    progress: Arc<Progress>,
) -> PipelinedPublisher {
    PipelinedPublisher {
        channel: ctx.publish.clone(),
        queue: ctx.names.intake.clone(),
        headers,
        rate,
        outstanding: ctx.args.outstanding,
        progress,
    }
}

/// Pre-phase: households that joins and head replacements refer to; returns their messages
/// and ids.
pub async fn prephase(
    ctx: &Ctx<'_>,
    phase: &Phase,
    workers: &mut Workers,
    headers: &FieldTable,
    people0: u64,
    deadline: Instant,
) -> Result<(Vec<Msg>, Vec<i64>)> {
    let counties = &ctx.net.county_ids;
    let prephase: Vec<Msg> = (0..ctx.args.households)
        .map(|j| {
            let county = counties[j % counties.len()];
            let person = people0 + j as u64;
            let body = body_of(person, county, None, true);
            let key = format!("bench-{}-{}-h{j}", ctx.id, phase.index);
            msg(key, &body, Kind::NewHousehold, Some(person))
        })
        .collect();
    eprintln!(
        "pre-phase: creating {} households (seed {})",
        prephase.len(),
        ctx.seed
    );
    // Events of earlier phases are in the ledger too.
    let before = lock(ctx.ledger).total;
    publisher(ctx, headers.clone(), None, Arc::default())
        .publish(&prephase)
        .await?;
    await_events(ctx, workers, before + prephase.len(), deadline).await?;
    let households: Vec<i64> = {
        let l = lock(ctx.ledger);
        prephase
            .iter()
            .filter_map(|m| l.arrivals(&m.key).first().and_then(|a| a.household_id))
            .collect()
    };
    if households.len() != prephase.len() {
        return Err(format!(
            "only {} of {} pre-phase households were created",
            households.len(),
            prephase.len()
        )
        .into());
    }
    Ok((prephase, households))
}

/// Waits until `n` events arrived.
pub async fn await_events(
    ctx: &Ctx<'_>,
    workers: &mut Workers,
    n: usize,
    deadline: Instant,
) -> Result<()> {
    loop {
        wait_broken(ctx, workers)?;
        if lock(ctx.ledger).total >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(
                "timed out waiting for the pre-phase events (is the worker running?)".into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the watch of the measured phase goes by.
pub struct Watch<'a> {
    /// Events received before the measured phase.
    pub base_total: usize,
    /// Outcome events the measured phase is owed.
    pub expected: usize,
    pub deadline: Instant,
    pub progress: &'a Progress,
}

/// How the measured phase ended.
pub struct WatchEnd {
    pub sent: Vec<Instant>,
    pub timed_out: bool,
    pub interrupted: bool,
}

/// Watches the measured phase until every outcome arrived (or the deadline, or a signal),
/// printing a progress line every second.
pub async fn watch(
    ctx: &Ctx<'_>,
    workers: &mut Workers,
    publisher: JoinHandle<Result<Vec<Instant>, String>>,
    w: &Watch<'_>,
) -> Result<WatchEnd> {
    let mut publisher = Some(publisher);
    let mut end = WatchEnd {
        sent: Vec::new(),
        timed_out: false,
        interrupted: false,
    };
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ticks = 0u64;
    let mut last = (t0, 0usize);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.stop.cancelled() => end.interrupted = true,
        }
        ticks += 1;
        let outcomes = lock(ctx.ledger).total - w.base_total;
        if ticks.is_multiple_of(10) {
            print_progress(t0, &mut last, outcomes, w);
        }
        if publisher.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(handle) = publisher.take()
        {
            end.sent = handle.await??;
        }
        if end.interrupted || (publisher.is_none() && outcomes >= w.expected) {
            break;
        }
        if Instant::now() > w.deadline {
            end.timed_out = true;
            break;
        }
        if let Err(e) = wait_broken(ctx, workers) {
            if let Some(handle) = publisher.take() {
                handle.abort();
            }
            return Err(e.into());
        }
    }
    match publisher {
        None => Ok(end),
        Some(handle) => {
            handle.abort();
            Err(cut_short(&end, ctx.args.timeout, w.progress).into())
        }
    }
}

/// Why the measured phase ended before its publisher did.
pub fn cut_short(end: &WatchEnd, timeout: u64, progress: &Progress) -> String {
    if end.interrupted {
        "interrupted while publishing".into()
    } else {
        format!(
            "timed out after {timeout} s while publishing ({} published)",
            progress.published.load(Ordering::Relaxed)
        )
    }
}

pub fn print_progress(t0: Instant, last: &mut (Instant, usize), outcomes: usize, w: &Watch<'_>) {
    let now = Instant::now();
    let rate = (outcomes - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
    *last = (now, outcomes);
    eprintln!(
        "[{:>4.0} s] published {:>7}/{} confirmed {:>7} outcomes {:>7} ({:>6.0}/s)",
        t0.elapsed().as_secs_f64(),
        w.progress.published.load(Ordering::Relaxed),
        w.expected,
        w.progress.confirmed.load(Ordering::Relaxed),
        outcomes,
        rate
    );
}
