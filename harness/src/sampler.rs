//! The resource sampler: CPU time of the processes a run is made of (the harness itself, the
//! worker processes, PostgreSQL, RabbitMQ) and of the whole machine, sampled from /proc (see
//! [`crate::procfs`]) at two moments and turned into cores used in between.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::procfs::{self, MachineTicks};

/// Whose CPU time a process's counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The harness process itself (and in-process workers).
    Harness,
    Workers,
    Postgres,
    Rabbitmq,
}

impl Role {
    /// The role's name in a report; the harness process is named by the caller.
    fn name(self, harness: &str) -> String {
        match self {
            Role::Harness => harness.to_owned(),
            Role::Workers => "workers".into(),
            Role::Postgres => "postgres".into(),
            Role::Rabbitmq => "rabbitmq".into(),
        }
    }
}

/// CPU time (clock ticks) of the processes that matter, and of the whole machine.
#[derive(Default)]
pub struct CpuSample {
    at: Option<Instant>,
    machine: MachineTicks,
    procs: HashMap<u32, (Role, u64)>,
}

impl CpuSample {
    /// Samples now; `workers` are the worker processes' ids.
    pub fn take(workers: &[u32]) -> Self {
        let mut sample = CpuSample {
            at: Some(Instant::now()),
            machine: procfs::machine_ticks().unwrap_or_default(),
            ..Default::default()
        };
        for pid in procfs::pids() {
            if let Some(role) = role_of(pid, workers)
                && let Some(t) = procfs::cpu_ticks(pid)
            {
                sample.procs.insert(pid, (role, t));
            }
        }
        sample
    }
}

/// The role of process `pid`, if it is one that matters.
fn role_of(pid: u32, workers: &[u32]) -> Option<Role> {
    if pid == std::process::id() {
        return Some(Role::Harness);
    }
    if workers.contains(&pid) {
        return Some(Role::Workers);
    }
    match procfs::command_name(pid)?.as_str() {
        "postgres" => Some(Role::Postgres),
        "beam.smp" => Some(Role::Rabbitmq),
        _ => None,
    }
}

/// Cores used by each role between two samples (USER_HZ is 100 on Linux), the harness
/// process named `harness`; with `other` (whatever else ran) and `machine` (all of it).
pub fn cores_used(a: &CpuSample, b: &CpuSample, harness: &str) -> BTreeMap<String, f64> {
    let wall = match (a.at, b.at) {
        (Some(x), Some(y)) => y.duration_since(x).as_secs_f64().max(1e-3),
        _ => return BTreeMap::new(),
    };
    let mut ticks: BTreeMap<Role, u64> = BTreeMap::new();
    for (pid, (role, t)) in &b.procs {
        let before = a.procs.get(pid).map_or(0, |(_, t)| *t);
        *ticks.entry(*role).or_default() += t.saturating_sub(before);
    }
    let mut out: BTreeMap<String, f64> = ticks
        .into_iter()
        .map(|(r, t)| (r.name(harness), t as f64 / 100.0 / wall))
        .collect();
    let total = b.machine.total.saturating_sub(a.machine.total) as f64;
    if total > 0.0 {
        let busy = b.machine.busy.saturating_sub(a.machine.busy) as f64;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let machine = busy / total * cpus;
        // Whatever else ran meanwhile (builds, other services) competes for the same cores.
        let known: f64 = out.values().sum();
        out.insert("other".into(), (machine - known).max(0.0));
        out.insert("machine".into(), machine);
    }
    out
}
