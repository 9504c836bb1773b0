//! A PostgreSQL primary with a streaming standby behind one haproxy address
//! (`harness/pg-pair.sh`), for the fault suite's database-failover run: started on loopback
//! ports of its own, failed over (kill -9 of the primary, promotion, the address moved), the
//! dead node rebuilt as the new standby, and always removed — by [`PgPair::stop`] or, whatever
//! happened, when it is dropped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The script that does the work, in the harness crate's folder.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pg-pair.sh");

/// Whether the primary waits for the standby before it acknowledges a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// `synchronous_standby_names` = the standby, `synchronous_commit = on`: an acknowledged
    /// commit is on the standby too, so a failover loses none.
    Sync,
    /// The standby follows as fast as it can; a failover can lose the last commits.
    Async,
}

impl Replication {
    pub fn name(self) -> &'static str {
        match self {
            Replication::Sync => "sync",
            Replication::Async => "async",
        }
    }
}

/// A running pair; `server` is the stable address (no database name).
pub struct PgPair {
    dir: PathBuf,
    pub server: String,
    pub replication: Replication,
    stopped: bool,
}

/// Runs the script with `args`, bounded by `limit`; its output, or why it failed.
fn script(args: &[&str], limit: Duration) -> Result<String, String> {
    let out = Command::new("timeout")
        .args([
            "-k",
            "5",
            &limit.as_secs().max(1).to_string(),
            "bash",
            SCRIPT,
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("pg-pair.sh {}: {e}", args.join(" ")))?;
    crate::command::output_text(&format!("pg-pair.sh {}", args.join(" ")), &out)
}

impl PgPair {
    /// Starts the pair in a new temporary folder; on failure nothing is left running.
    pub fn start(replication: Replication) -> Result<PgPair, String> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("case-intake-pg-pair-{}", &suffix[..10]));
        let shown = dir.display().to_string();
        let mut pair = PgPair {
            dir,
            server: String::new(),
            replication,
            stopped: false,
        };
        let out = script(
            &["start", &shown, replication.name()],
            Duration::from_secs(180),
        )?;
        pair.server = out
            .lines()
            .rev()
            .find(|l| l.starts_with("postgres://"))
            .ok_or_else(|| format!("pg-pair.sh start printed no address: {out}"))?
            .to_owned();
        Ok(pair)
    }

    /// `kill -9` of the primary and the promotion of the standby; the address moves to it
    /// `read_only` before the promotion (so that writes meet a server in recovery), or just
    /// after it when `read_only` is zero. Returns how long it took, from the kill to the
    /// address on a writable server.
    pub async fn fail_over(&self, read_only: Duration) -> Result<Duration, String> {
        let dir = self.dir.display().to_string();
        let secs = read_only.as_secs().to_string();
        let started = Instant::now();
        let args: Vec<String> = if read_only.is_zero() {
            vec!["failover".into(), dir]
        } else {
            vec!["failover".into(), dir, secs]
        };
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            script(&args, Duration::from_secs(120))
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok(started.elapsed())
    }

    /// Makes the dead node a standby of the new primary again (a fresh base backup), so that
    /// the next failover has somewhere to go.
    pub async fn rebuild(&self) -> Result<(), String> {
        let dir = self.dir.display().to_string();
        tokio::task::spawn_blocking(move || script(&["rebuild", &dir], Duration::from_secs(180)))
            .await
            .map_err(|e| e.to_string())?
            .map(|_| ())
    }

    /// Stops haproxy and both servers and removes the folder.
    pub fn stop(&mut self) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let dir = self.dir.display().to_string();
        script(&["stop", &dir], Duration::from_secs(90)).map(|_| ())
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("{e}");
        }
    }
}
