//! Worker processes and in-process workers: where the `case-intake` binary is, how a worker is
//! started with settings of its own (environment overrides), and how it is stopped the way an
//! orchestrator stops it (SIGTERM, a grace period, then SIGKILL).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use case_intake::app::supervisor;
use case_intake::infra::settings::{ENV_PREFIX, Settings};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The worker binary: `explicit` if given, else `case-intake` next to the running executable
/// (both are built into the same target directory).
pub fn worker_binary(explicit: Option<&Path>) -> std::io::Result<PathBuf> {
    match explicit {
        Some(p) => Ok(p.to_owned()),
        None => Ok(std::env::current_exe()?.with_file_name("case-intake")),
    }
}

/// The environment variable that overrides setting `section.key`.
pub fn setting_env(section: &str, key: &str) -> String {
    format!(
        "{ENV_PREFIX}__{}__{}",
        section.to_uppercase(),
        key.to_uppercase()
    )
}

/// How worker processes of one run are started.
pub struct WorkerCommand {
    pub bin: PathBuf,
    /// Setting overrides as (variable, value).
    pub env: Vec<(String, String)>,
    /// Whether a `RUST_LOG` of the caller reaches the worker (it overrides `log.filter`).
    pub inherit_rust_log: bool,
}

impl WorkerCommand {
    /// Starts one `case-intake run` with its output where given.
    pub fn spawn(&self, stdout: Stdio, stderr: Stdio) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if !self.inherit_rust_log {
            cmd.env_remove("RUST_LOG");
        }
        cmd.spawn()
    }
}

/// How a stopped worker process ended.
pub enum End {
    Exited(ExitStatus),
    /// Still running after the grace period: killed; the status of the kill.
    Killed(Option<ExitStatus>),
}

/// One worker process after [`stop_processes`].
pub struct Stopped {
    pub pid: u32,
    /// Whether SIGTERM could be sent.
    pub signalled: bool,
    pub end: End,
}

/// Sends SIGTERM to `pid`.
pub fn terminate(pid: u32) -> bool {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// SIGTERM to every child, then waits up to `grace` for them all; SIGKILLs what is left.
pub async fn stop_processes(children: &mut [Child], grace: Duration) -> Vec<Stopped> {
    let signalled: Vec<bool> = children.iter().map(|c| terminate(c.id())).collect();
    let deadline = Instant::now() + grace;
    let mut out = Vec::with_capacity(children.len());
    for (child, signalled) in children.iter_mut().zip(signalled) {
        let end = await_exit(child, deadline).await;
        out.push(Stopped {
            pid: child.id(),
            signalled,
            end,
        });
    }
    out
}

/// Waits for `child` to exit until `deadline`, then kills it.
async fn await_exit(child: &mut Child, deadline: Instant) -> End {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return End::Exited(status),
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => {
                let _ = child.kill();
                return End::Killed(child.wait().ok());
            }
        }
    }
}

/// Kills the children still running (a run that ends early must not leave workers behind).
pub fn kill_running(children: &mut [Child]) {
    for c in children {
        if let Ok(None) = c.try_wait() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Peak resident set (VmHWM) of process `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A running in-process worker.
pub struct RunningWorker {
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), sqlx::Error>>,
}

impl RunningWorker {
    pub fn start(settings: &Settings) -> Self {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(supervisor::run(settings.clone(), shutdown.clone()));
        Self { shutdown, handle }
    }

    /// Asks for a graceful stop and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        if let Err(e) = self.finish().await {
            panic!("{e}");
        }
    }

    /// Waits up to 60 s for the worker to end (after its shutdown was asked for); describes
    /// an unclean end.
    pub async fn finish(self) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(60), self.handle).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("in-process worker: {e}")),
            Ok(Err(e)) => Err(format!("in-process worker: {e}")),
            Err(_) => Err("in-process worker did not stop in 60 s".into()),
        }
    }
}

/// Stops in-process workers together: every shutdown asked first, then each awaited.
pub async fn stop_in_process(workers: Vec<RunningWorker>) -> Vec<String> {
    for w in &workers {
        w.shutdown.cancel();
    }
    let mut problems = Vec::new();
    for w in workers {
        if let Err(e) = w.finish().await {
            problems.push(e);
        }
    }
    problems
}
