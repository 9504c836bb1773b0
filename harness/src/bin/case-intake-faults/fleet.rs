//! The two worker processes (a harness fleet), their logs, and the suite's stand-in for an
//! orchestrator that restarts a worker that died.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use case_intake_harness::ledger::lock;
use case_intake_harness::workers;
use case_intake_harness::workers::End;
use case_intake_harness::workers::{Fleet, Reaped, WorkerCommand};
use tokio_util::sync::CancellationToken;

use crate::amqp::CLUSTER;
use crate::elapsed;
use crate::setup::Setup;

/// The suite's two workers: a harness fleet, with the worker logs and the supervisor's counts.
pub struct Workers {
    pub fleet: Fleet,
    pub dir: PathBuf,
    pub starts: u32,
    pub kills: u32,
    /// Exits that the suite did not cause (crash, non-zero exit).
    pub unexpected_exits: Vec<String>,
    /// Off during the final SIGTERM: no restarts.
    pub supervise: bool,
}

impl Workers {
    /// Two workers of `command`, none started yet, logging into `dir`.
    pub fn new(command: WorkerCommand, dir: PathBuf) -> Self {
        Workers {
            fleet: Fleet::new(command, 2),
            dir,
            starts: 0,
            kills: 0,
            unexpected_exits: Vec::new(),
            supervise: true,
        }
    }

    pub fn log_path(&self, slot: usize) -> PathBuf {
        self.dir.join(format!("worker-{slot}.log"))
    }

    /// The log of every slot.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        (0..self.fleet.slots()).map(|i| self.log_path(i)).collect()
    }

    /// Starts the worker of `slot`, appending to its log (a restart keeps what came before).
    pub fn start(&mut self, slot: usize) -> std::io::Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(slot))?;
        self.starts += 1;
        writeln!(
            log,
            "==== case-intake-faults: start #{} (worker {slot}) at {:.1}s",
            self.starts,
            elapsed()
        )?;
        self.fleet
            .start(slot, Stdio::from(log.try_clone()?), Stdio::from(log))
    }

    /// Notices exited workers and restarts them (the orchestrator's job).
    pub fn reap(&mut self) {
        if !self.supervise {
            return;
        }
        for slot in 0..self.fleet.slots() {
            match self.fleet.reap(slot) {
                Reaped::Running => continue,
                Reaped::Empty => {}
                Reaped::Exited { pid, status } => {
                    let msg = format!(
                        "worker {slot} (pid {pid}) exited by itself at {:.1}s: {status}",
                        elapsed()
                    );
                    say!("{msg}");
                    self.unexpected_exits.push(msg);
                }
                Reaped::Unknown(e) => say!("worker {slot}: try_wait: {e}"),
            }
            if let Err(e) = self.start(slot) {
                say!("worker {slot}: cannot start: {e}");
            }
        }
    }

    pub fn alive(&mut self) -> usize {
        self.fleet.alive()
    }

    /// SIGKILL by pid; returns the pid. The supervisor restarts the slot.
    pub fn kill9(&mut self, slot: usize) -> Option<u32> {
        let pid = self.fleet.kill9(slot)?;
        self.kills += 1;
        Some(pid)
    }
}

/// Restarts exited workers every 250 ms until `stop`.
pub async fn supervise(workers: Arc<Mutex<Workers>>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        lock(&workers).reap();
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Waits up to `limit` until both workers run.
pub async fn await_workers(workers: &Mutex<Workers>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if lock(workers).alive() == 2 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// SIGTERM to every worker, then waits for them (bounded), then SIGKILL.
pub async fn stop_workers(workers: &Mutex<Workers>) -> Vec<(u32, String)> {
    // No restarts from here on; the lock is not held while the workers stop.
    let mut children = {
        let mut w = lock(workers);
        w.supervise = false;
        w.fleet.take_all()
    };
    let stopped = workers::stop_processes(&mut children, Duration::from_secs(45)).await;
    stopped
        .into_iter()
        .map(|s| {
            let status = match s.end {
                End::Exited(status) => status.to_string(),
                End::Killed(status) => format!("killed after the grace period ({status:?})"),
            };
            (s.pid, status)
        })
        .collect()
}

/// The worker processes' settings: the suite's database, queue and exchange.
pub fn worker_command(setup: &Setup, exe: PathBuf) -> WorkerCommand {
    let mut env = vec![
        ("database", "url", setup.db_url.clone()),
        ("amqp", "intake_queue", setup.intake_queue.clone()),
        ("amqp", "events_exchange", setup.events_exchange.clone()),
        ("log", "filter", "warn".into()),
        ("log", "format", "text".into()),
        // Two workers on one machine: their HTTP servers would fight over one port.
        ("http", "address", String::new()),
    ];
    if let Some(c) = CLUSTER.get() {
        env.push(("amqp", "urls", c.urls().join(",")));
    }
    // The log summary reads the `warn` filter's lines only.
    WorkerCommand::new(exe, env, false)
}
