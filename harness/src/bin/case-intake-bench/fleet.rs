//! The workers under test: worker processes (a harness [`Fleet`]) or in-process workers,
//! started, watched and stopped alike, so that the measuring code need not care which.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use case_intake::infra::settings::Settings;
use case_intake_harness::procfs;
use case_intake_harness::workers::{self, End, Fleet, RunningWorker, WorkerCommand};

use crate::Result;
use crate::args::Args;

/// How long a stopping worker gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(60);

/// The workers under test.
pub enum Workers {
    Processes(Fleet),
    InProcess(Vec<RunningWorker>),
}

impl Workers {
    pub fn start(
        args: &Args,
        settings: &Settings,
        overrides: &[(String, String, String)],
        bin: &Path,
    ) -> Result<Self> {
        if args.in_process {
            case_intake::app::telemetry::init(&settings.log);
            let workers = (0..args.workers)
                .map(|_| RunningWorker::start(settings))
                .collect();
            return Ok(Workers::InProcess(workers));
        }
        let command = WorkerCommand::new(bin.to_owned(), overrides.iter().cloned(), true);
        let mut fleet = Fleet::new(command, args.workers);
        for slot in 0..args.workers {
            if let Err(e) = fleet.start(slot, Stdio::null(), Stdio::inherit()) {
                // A run that cannot start all its workers must not leave some behind.
                fleet.kill_running();
                return Err(format!("starting {}: {e}", bin.display()).into());
            }
        }
        Ok(Workers::Processes(fleet))
    }

    pub fn pids(&self) -> Vec<u32> {
        match self {
            Workers::Processes(f) => f.pids(),
            Workers::InProcess(_) => Vec::new(),
        }
    }

    /// An error if a worker has exited before being asked to.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self {
            Workers::Processes(f) => {
                if let Some((pid, status)) = f.first_exit() {
                    return Err(format!("worker {pid} exited early: {status}"));
                }
            }
            Workers::InProcess(workers) => {
                if workers.iter().any(|w| w.handle.is_finished()) {
                    return Err("an in-process worker stopped early".into());
                }
            }
        }
        Ok(())
    }

    /// Peak resident set (VmHWM) of each worker process, or of this process when in-process.
    pub fn peak_rss_kib(&self) -> Vec<u64> {
        match self {
            Workers::Processes(f) => f
                .pids()
                .into_iter()
                .filter_map(procfs::peak_rss_kib)
                .collect(),
            Workers::InProcess(_) => procfs::peak_rss_kib(std::process::id())
                .into_iter()
                .collect(),
        }
    }

    /// SIGTERM, then waits up to 60 s (SIGKILL after that); describes any unclean exit.
    pub async fn stop(&mut self) -> Vec<String> {
        match self {
            Workers::Processes(f) => {
                let stopped = f.stop(GRACE).await;
                stopped.iter().flat_map(unclean_stop).collect()
            }
            Workers::InProcess(running) => workers::stop_in_process(std::mem::take(running)).await,
        }
    }
}

/// What was unclean about how a worker process stopped.
fn unclean_stop(s: &workers::Stopped) -> Vec<String> {
    let mut problems = Vec::new();
    if !s.signalled {
        problems.push(format!("could not signal worker {}", s.pid));
    }
    match &s.end {
        End::Exited(status) if !status.success() => {
            problems.push(format!("worker {} exited: {status}", s.pid));
        }
        End::Exited(_) => {}
        End::Killed(_) => problems.push(format!("worker {} killed after 60 s", s.pid)),
    }
    problems
}

impl Drop for Workers {
    fn drop(&mut self) {
        if let Workers::Processes(f) = self {
            f.kill_running();
        }
    }
}
