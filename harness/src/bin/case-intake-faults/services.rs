//! The shared services from outside: bounded shell commands for PostgreSQL (pg_ctlcluster,
//! pg_isready) and RabbitMQ (rabbitmqctl), and healing them after a fault.

use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use crate::Res;
use crate::amqp::CLUSTER;

pub async fn run_cmd(program: &str, args: &[&str], limit: Duration) -> Result<String, String> {
    let mut cmd = Command::new("timeout");
    cmd.arg("-k")
        .arg("5")
        .arg(limit.as_secs().max(1).to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    let shown = format!("{program} {}", args.join(" "));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| format!("{shown}: {e}"))?
        .map_err(|e| format!("{shown}: {e}"))?;
    case_intake_harness::command::output_text(&shown, &out)
}

/// The PostgreSQL major version directory under /etc/postgresql (e.g. `15`).
pub fn pg_version() -> Res<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    versions
        .pop()
        .ok_or_else(|| "no cluster under /etc/postgresql".into())
}

pub async fn pg_ctl(action: &str) -> Result<String, String> {
    let version = pg_version().map_err(|e| e.to_string())?;
    let mut args = vec![
        "--skip-systemctl-redirect",
        version.as_str(),
        "main",
        action,
    ];
    if action != "start" {
        args.extend(["-m", "fast"]);
    }
    run_cmd("pg_ctlcluster", &args, Duration::from_secs(120)).await
}

pub async fn pg_ready() -> bool {
    run_cmd(
        "pg_isready",
        &["-h", "127.0.0.1", "-p", "5432", "-q"],
        Duration::from_secs(10),
    )
    .await
    .is_ok()
}

/// Waits up to `limit` for PostgreSQL to accept connections.
pub async fn await_pg(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if pg_ready().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

pub async fn rabbitmqctl(args: &[&str], limit: Duration) -> Result<String, String> {
    run_cmd("rabbitmqctl", args, limit).await
}

/// Makes sure PostgreSQL and RabbitMQ run and the RabbitMQ app is started.
pub async fn ensure_services() {
    if let Some(c) = CLUSTER.get()
        && let Err(e) = c.heal().await
    {
        say!("heal: cluster: {e}");
    }
    if !pg_ready().await {
        say!("heal: starting PostgreSQL");
        if let Err(e) = pg_ctl("start").await {
            say!("heal: {e}");
        }
    }
    if !await_pg(Duration::from_secs(90)).await {
        say!("heal: PostgreSQL still not ready after 90 s");
    }
    if let Err(e) = rabbitmqctl(&["-q", "start_app"], Duration::from_secs(120)).await {
        say!("heal: rabbitmqctl start_app: {e}");
    }
    if let Err(e) = rabbitmqctl(
        &["-q", "await_startup", "--timeout", "120"],
        Duration::from_secs(150),
    )
    .await
    {
        say!("heal: rabbitmqctl await_startup: {e}");
    }
}
