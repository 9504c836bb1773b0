//! After the faults: healing the services, re-publishing what was never confirmed, and
//! waiting until the queue, the outbox and the outcome events have drained.

use crate::amqp::queue_ready;
use crate::fleet::await_workers;
use crate::publisher::Cmd;
use crate::run::Run;
use crate::services::ensure_services;
use case_intake::outbox::topology;
use case_intake_harness::checks;
use case_intake_harness::checks::Expected;
use case_intake_harness::ledger::lock;
use std::time::Duration;
use std::time::Instant;
use tokio::sync::oneshot;

impl Run {
    /// Heals, re-publishes what was not confirmed and waits for the drain.
    pub async fn heal_and_drain(&self) -> (usize, bool) {
        say!("heal: making sure PostgreSQL, RabbitMQ and both workers run");
        ensure_services().await;
        if !await_workers(&self.workers, Duration::from_secs(30)).await {
            say!("heal: both workers are not running");
        }
        let (done, rx) = oneshot::channel();
        let _ = self.commands.send(Cmd::Republish { done }).await;
        let unconfirmed = tokio::time::timeout(Duration::from_secs(900), rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(usize::MAX);
        say!("drain: waiting for the intake queue and every outcome event");
        let deadline = Instant::now() + self.plan.drain;
        let mut last_report = Instant::now();
        while Instant::now() < deadline {
            // Intakes waiting out a delayed retry come back to the intake queue later.
            let retrying = queue_ready(&topology::retry_queue(&self.setup.intake_queue))
                .await
                .unwrap_or(0);
            let ready = queue_ready(&self.setup.intake_queue)
                .await
                .ok()
                .map(|n| n + retrying);
            let missing = self.keys_without_event();
            let unpublished = checks::unpublished_outbox(&self.setup.pool)
                .await
                .ok()
                .map(|rows| rows.len());
            if ready == Some(0) && missing == 0 && unpublished == Some(0) {
                say!("drained");
                return (unconfirmed, true);
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                say!(
                    "drain: queued {ready:?}, keys without event {missing}, outbox unpublished {unpublished:?}"
                );
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        say!("drain: timed out after {:?}", self.plan.drain);
        (unconfirmed, false)
    }

    /// Confirmed keys that no outcome event arrived for yet, and keys of several bodies that
    /// deserve a case and have no `case.created` yet.
    pub fn keys_without_event(&self) -> usize {
        let ledger = lock(&self.ledger);
        let seen = lock(&self.seen);
        let expected: Vec<Expected<'_>> = ledger
            .entries
            .iter()
            .filter(|e| e.confirmed())
            .map(|e| Expected {
                key: &e.key,
                valid: e.deserves_case(),
                owed: 1,
            })
            .collect();
        let uncreated = ledger
            .entries
            .iter()
            .filter(|e| e.kind.several_bodies() && e.deserves_case())
            .filter(|e| seen.arrivals(&e.key).iter().all(|a| a.failure().is_some()))
            .count();
        checks::short_of_events(&expected, &seen).len() + uncreated
    }
}
