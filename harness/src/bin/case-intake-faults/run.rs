//! The run: warm-up and the fault phases, each a burst of intakes with a fault injected in the
//! middle of it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use case_intake_harness::cluster;
use case_intake_harness::cluster::ClusterFault;
use case_intake_harness::ledger::EventLog;
use case_intake_harness::ledger::lock;
use case_intake_harness::pgpair::PgPair;
use case_intake_harness::retry_race::Operator;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::amqp::CLUSTER;
use crate::args::{Fault, Plan};
use crate::fleet::{Workers, await_workers};
use crate::ledger::Ledger;
use crate::publisher::{Cmd, HOT_HOUSEHOLDS, Mix};
use crate::setup::Setup;

/// Weight of one node fault's burst (as [`Fault::weight`]).
pub const CLUSTER_WEIGHT: usize = 2;

pub struct Run {
    pub plan: Plan,
    pub setup: Setup,
    pub workers: Arc<Mutex<Workers>>,
    pub ledger: Arc<Mutex<Ledger>>,
    pub seen: Arc<Mutex<EventLog>>,
    pub commands: mpsc::Sender<Cmd>,
    pub injected: BTreeMap<&'static str, u32>,
    pub fault_errors: Vec<String>,
    /// The publisher's operator (shared results): what its staged retries came to.
    pub operator: Operator,
    /// `--db-failover`: the PostgreSQL pair the workers' database is on.
    pub pair: Option<Arc<PgPair>>,
    /// `--cluster`: per node fault, the longest time without an outcome it caused.
    pub gaps: Vec<(&'static str, Duration)>,
}

impl Run {
    /// Starts a burst of `n` intakes; the receiver fires when all are confirmed or decided.
    pub async fn burst(&self, n: usize, rate: f64, mix: Mix) -> oneshot::Receiver<()> {
        let (done, rx) = oneshot::channel();
        let cmd = Cmd::Burst {
            n,
            rate: rate.max(1.0),
            mix,
            done,
        };
        if self.commands.send(cmd).await.is_err() {
            say!("publisher gone");
        }
        rx
    }

    pub async fn await_burst(rx: oneshot::Receiver<()>) {
        if tokio::time::timeout(Duration::from_secs(600), rx)
            .await
            .is_err()
        {
            say!("a burst did not finish within 600 s");
        }
    }

    pub fn note(&mut self, fault: Fault, result: Result<String, String>) {
        *self.injected.entry(fault.name()).or_insert(0) += 1;
        if let Err(e) = result {
            say!("fault {}: {e}", fault.name());
            self.fault_errors.push(format!("{}: {e}", fault.name()));
        }
    }

    pub async fn warm_up(&self, n: usize) {
        say!("warm-up: {n} intakes, no fault");
        let rx = self.burst(n, self.plan.rate, Mix::Normal).await;
        Self::await_burst(rx).await;
        // Let the first households come back as events, so joins have targets.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && lock(&self.seen).households_created.len() < HOT_HOUSEHOLDS
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn phase(&mut self, fault: Fault, reps: u32, per_burst: usize) {
        say!(
            "phase {}: {reps} time(s), {per_burst} intakes per burst",
            fault.name()
        );
        for rep in 0..reps {
            match fault {
                Fault::Lock => self.lock_fault(per_burst).await,
                Fault::Outage => {
                    let spread = (self.plan.outage.as_secs_f64() / 2.0).max(1.0);
                    let rx = self
                        .burst(per_burst, per_burst as f64 / spread, Mix::Normal)
                        .await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let r = self.outage().await;
                    self.note(fault, r);
                    Self::await_burst(rx).await;
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                _ => {
                    if fault == Fault::Kill
                        && !await_workers(&self.workers, Duration::from_secs(20)).await
                    {
                        say!("kill: both workers were not running before kill {rep}");
                    }
                    // rabbitmqctl needs about a second to act: start it early in the burst so
                    // that the broker goes away with publishes and confirms in flight.
                    let lead = match fault {
                        Fault::Broker | Fault::Close => 0.1,
                        _ => 1.0,
                    };
                    let rate = match fault {
                        // Long enough to overlap the moment the broker acts.
                        Fault::Broker | Fault::Close => self.plan.rate.min(per_burst as f64 / 2.5),
                        _ => self.plan.rate,
                    };
                    let burst_secs = per_burst as f64 / rate;
                    let rx = self.burst(per_burst, rate, Mix::Normal).await;
                    tokio::time::sleep(Duration::from_secs_f64((burst_secs / 2.0).min(lead))).await;
                    let r = self.inject(fault, rep).await;
                    self.note(fault, r);
                    Self::await_burst(rx).await;
                    self.recover(fault).await;
                }
            }
        }
    }

    /// One node fault of `--cluster`, `reps` times: a burst spread over the fault, then the
    /// longest gap in outcome events from the fault's start to the burst's end.
    pub async fn cluster_phase(&mut self, fault: ClusterFault, reps: u32, per_burst: usize) {
        let Some(c) = CLUSTER.get() else { return };
        say!(
            "phase {}: {reps} time(s), {per_burst} intakes per burst",
            fault.name()
        );
        for _ in 0..reps {
            let spread = if fault == ClusterFault::Rolling {
                60.0
            } else {
                20.0
            };
            let rx = self
                .burst(per_burst, per_burst as f64 / spread, Mix::Normal)
                .await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let from = Instant::now();
            let r = c
                .inject(fault, &self.setup.intake_queue, "case-intake consumer")
                .await;
            if let Ok(what) = &r {
                say!("{what}");
            }
            *self.injected.entry(fault.name()).or_insert(0) += 1;
            if let Err(e) = &r {
                say!("fault {}: {e}", fault.name());
                self.fault_errors.push(format!("{}: {e}", fault.name()));
            }
            Self::await_burst(rx).await;
            // Up to the burst's last confirm: later there is nothing left to come out.
            let to = Instant::now();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let gap = {
                let seen = lock(&self.seen);
                let times = seen.by_key.values().flatten().map(|a| a.at);
                cluster::longest_gap(times, from, to)
            };
            say!(
                "{}: longest gap in outcomes {:.1} s",
                fault.name(),
                gap.as_secs_f64()
            );
            self.gaps.push((fault.name(), gap));
        }
    }
}
