//! Worker processes and in-process workers: where the `case-intake` binary is, how a worker is
//! started with settings of its own (environment overrides), a fleet of worker processes in
//! numbered slots, and how they are stopped the way an orchestrator stops them (SIGTERM, a
//! grace period, then SIGKILL).

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
    /// The command of `bin` with setting overrides given as (section, key, value).
    pub fn new<S, K>(
        bin: PathBuf,
        overrides: impl IntoIterator<Item = (S, K, String)>,
        inherit_rust_log: bool,
    ) -> Self
    where
        S: AsRef<str>,
        K: AsRef<str>,
    {
        let env = overrides
            .into_iter()
            .map(|(s, k, v)| (setting_env(s.as_ref(), k.as_ref()), v))
            .collect();
        WorkerCommand {
            bin,
            env,
            inherit_rust_log,
        }
    }

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

/// Worker processes of one command in numbered slots; an empty slot is a worker that is not
/// running (not started yet, killed, or reaped after it exited).
pub struct Fleet {
    command: WorkerCommand,
    slots: Vec<Option<Child>>,
}

/// What [`Fleet::reap`] found in a slot.
pub enum Reaped {
    Empty,
    Running,
    /// The worker had exited (its slot is now empty).
    Exited {
        pid: u32,
        status: ExitStatus,
    },
    /// Its state could not be read (its slot is now empty).
    Unknown(std::io::Error),
}

impl Fleet {
    /// `slots` empty slots of `command`.
    pub fn new(command: WorkerCommand, slots: usize) -> Self {
        Fleet {
            command,
            slots: (0..slots).map(|_| None).collect(),
        }
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Starts a worker in `slot` (which should be empty) with its output where given.
    pub fn start(&mut self, slot: usize, stdout: Stdio, stderr: Stdio) -> std::io::Result<()> {
        self.slots[slot] = Some(self.command.spawn(stdout, stderr)?);
        Ok(())
    }

    /// The ids of the workers in their slots.
    pub fn pids(&self) -> Vec<u32> {
        self.slots.iter().flatten().map(Child::id).collect()
    }

    /// The first worker found to have exited, with its status (its slot is left as it is).
    pub fn first_exit(&mut self) -> Option<(u32, ExitStatus)> {
        self.slots
            .iter_mut()
            .flatten()
            .find_map(|c| Some((c.id(), c.try_wait().ok()??)))
    }

    /// Empties `slot` if its worker is no longer running; says what it found.
    pub fn reap(&mut self, slot: usize) -> Reaped {
        let Some(child) = &mut self.slots[slot] else {
            return Reaped::Empty;
        };
        let found = match child.try_wait() {
            Ok(None) => return Reaped::Running,
            Ok(Some(status)) => Reaped::Exited {
                pid: child.id(),
                status,
            },
            Err(e) => Reaped::Unknown(e),
        };
        self.slots[slot] = None;
        found
    }

    /// How many workers are running.
    pub fn alive(&mut self) -> usize {
        let mut n = 0;
        for c in self.slots.iter_mut().flatten() {
            if matches!(c.try_wait(), Ok(None)) {
                n += 1;
            }
        }
        n
    }

    /// SIGKILL of the worker in `slot`, reaped; its pid. The slot is left empty.
    pub fn kill9(&mut self, slot: usize) -> Option<u32> {
        let mut child = self.slots[slot].take()?;
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        Some(pid)
    }

    /// Takes every worker out of its slot.
    pub fn take_all(&mut self) -> Vec<Child> {
        self.slots.iter_mut().filter_map(Option::take).collect()
    }

    /// Stops every worker (see [`stop_processes`]); the slots are left empty.
    pub async fn stop(&mut self, grace: Duration) -> Vec<Stopped> {
        let mut children = self.take_all();
        stop_processes(&mut children, grace).await
    }

    /// Kills the workers still running (a run that ends early must not leave any behind).
    pub fn kill_running(&mut self) {
        let mut children = self.take_all();
        kill_running(&mut children);
    }
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
