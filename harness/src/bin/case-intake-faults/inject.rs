//! Injecting the faults of a phase into the running system, and letting it come back
//! before the next repetition.

use crate::args::Fault;
use crate::fleet::await_workers;
use crate::publisher::Mix;
use crate::run::Run;
use crate::services::{await_pg, pg_ctl, rabbitmqctl};
use case_intake_harness::ledger::lock;
use std::time::Duration;

/// How long the table lock of the `lock` fault is held (the worker's lock_timeout is 2 s).
pub const LOCK_HOLD: Duration = Duration::from_secs(5);

impl Run {
    pub async fn inject(&self, fault: Fault, rep: u32) -> Result<String, String> {
        match fault {
            Fault::Kill => {
                let slot = (rep % 2) as usize;
                match lock(&self.workers).kill9(slot) {
                    Some(pid) => {
                        say!("kill -9 worker {slot} (pid {pid})");
                        Ok(String::new())
                    }
                    None => Err(format!("worker {slot} was not running")),
                }
            }
            Fault::Broker => {
                say!("rabbitmqctl stop_app");
                let stopped = rabbitmqctl(&["-q", "stop_app"], Duration::from_secs(120)).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                say!("rabbitmqctl start_app");
                let started = rabbitmqctl(&["-q", "start_app"], Duration::from_secs(120)).await;
                let ready = rabbitmqctl(
                    &["-q", "await_startup", "--timeout", "120"],
                    Duration::from_secs(150),
                )
                .await;
                stopped.and(started).and(ready)
            }
            Fault::Close => {
                say!("rabbitmqctl close_all_connections");
                rabbitmqctl(
                    &["-q", "close_all_connections", "fault test"],
                    Duration::from_secs(60),
                )
                .await
            }
            Fault::Pgrestart => {
                say!("PostgreSQL restart -m fast");
                pg_ctl("restart").await
            }
            Fault::Terminate => {
                let r = sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                      WHERE application_name = 'case-intake' AND datname = current_database()
                        AND pid <> pg_backend_pid()) t",
                )
                .fetch_one(&self.setup.pool)
                .await;
                match r {
                    Ok(n) => {
                        say!("pg_terminate_backend: {n} worker session(s)");
                        Ok(String::new())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Fault::Failover => self.fail_over().await,
            Fault::Outage | Fault::Lock => Ok(String::new()),
        }
    }

    /// The `failover` fault on the pair (see `pgpair`).
    pub async fn fail_over(&self) -> Result<String, String> {
        let (Some(pair), Some((_, read_only))) = (&self.pair, self.plan.db_failover) else {
            return Err("the failover fault needs --db-failover".into());
        };
        say!("kill -9 of the primary; address on the standby {read_only:?} before its promotion");
        let took = pair.fail_over(read_only).await?;
        say!("failover done in {:.1} s", took.as_secs_f64());
        Ok(String::new())
    }

    /// Lets the system come back before the next repetition.
    pub async fn recover(&self, fault: Fault) {
        match fault {
            Fault::Kill => {
                if !await_workers(&self.workers, Duration::from_secs(20)).await {
                    say!("kill: the worker was not restarted within 20 s");
                }
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            Fault::Pgrestart => {
                await_pg(Duration::from_secs(60)).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Fault::Failover => {
                if let Some(pair) = &self.pair {
                    say!("rebuilding the dead node as the new standby");
                    if let Err(e) = pair.rebuild().await {
                        say!("failover: {e}");
                    }
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            _ => tokio::time::sleep(Duration::from_secs(3)).await,
        }
    }

    pub async fn outage(&self) -> Result<String, String> {
        say!("PostgreSQL stop -m fast (outage of {:?})", self.plan.outage);
        let stopped = pg_ctl("stop").await;
        tokio::time::sleep(self.plan.outage).await;
        say!("PostgreSQL start");
        let started = pg_ctl("start").await;
        if !await_pg(Duration::from_secs(60)).await {
            return Err("PostgreSQL not ready 60 s after start".into());
        }
        stopped.and(started)
    }

    /// Holds an ACCESS EXCLUSIVE lock on households for LOCK_HOLD while joins flow.
    pub async fn lock_fault(&mut self, n: usize) {
        let held = async {
            let mut conn = self.setup.pool.acquire().await?;
            sqlx::raw_sql(
                "BEGIN; SET LOCAL lock_timeout = '20s';
                 LOCK TABLE households IN ACCESS EXCLUSIVE MODE;",
            )
            .execute(&mut *conn)
            .await?;
            Ok::<_, sqlx::Error>(conn)
        }
        .await;
        let mut conn = match held {
            Ok(c) => c,
            Err(e) => {
                self.note(Fault::Lock, Err(format!("could not take the lock: {e}")));
                return;
            }
        };
        say!("LOCK TABLE households IN ACCESS EXCLUSIVE MODE (held {LOCK_HOLD:?})");
        let spread = LOCK_HOLD.as_secs_f64() - 1.0;
        let rx = self.burst(n, n as f64 / spread, Mix::Joins).await;
        tokio::time::sleep(LOCK_HOLD).await;
        let r = sqlx::raw_sql("COMMIT").execute(&mut *conn).await;
        say!("households lock released");
        self.note(
            Fault::Lock,
            r.map(|_| String::new()).map_err(|e| e.to_string()),
        );
        Self::await_burst(rx).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}
