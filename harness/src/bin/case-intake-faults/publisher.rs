//! The publisher: builds the intake mix and publishes with confirms into the ledger, re-connecting
//! after broker faults, sending corrections and staging operator retries.

use case_intake_harness::broker::Confirmed;
use case_intake_harness::publisher::Pacer;
use rand::Rng;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use case_intake_harness::broker;
use case_intake_harness::kinds;
use case_intake_harness::kinds::Flaw;
use case_intake_harness::kinds::Kind;
use case_intake_harness::ledger::EventLog;
use case_intake_harness::ledger::lock;
use case_intake_harness::retry_race::Operator;
use lapin::Channel;
use lapin::Connection;
use rand::rngs::SmallRng;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Res;
use crate::amqp::amqp_connect;
use crate::ledger::{Attempt, Entry, Ledger, unconfirmed_bodies};

/// How long a publish waits for its confirm before it is recorded as indeterminate.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes awaiting a confirm at once.
pub const MAX_IN_FLIGHT: usize = 500;

/// Households that receive head replacements over and over.
pub const HOT_HOUSEHOLDS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    Normal,
    /// Mostly joins of existing households (while the households table is locked).
    Joins,
}

pub enum Cmd {
    Burst {
        n: usize,
        rate: f64,
        mix: Mix,
        done: oneshot::Sender<()>,
    },
    /// Re-publishes every key without a confirmed attempt, in rounds; answers how many remain
    /// unconfirmed.
    Republish { done: oneshot::Sender<usize> },
}

pub struct Publisher {
    pub ledger: Arc<Mutex<Ledger>>,
    pub seen: Arc<Mutex<EventLog>>,
    pub queue: String,
    pub token: String,
    pub county: i64,
    pub run_id: String,
    pub rng: SmallRng,
    pub conn: Option<(Connection, Channel)>,
    pub inflight: JoinSet<()>,
    pub permits: Arc<Semaphore>,
    pub stop: CancellationToken,
    /// Resent keys whose corrected body waits for the suite to see their failure.
    pub corrections: Vec<usize>,
    /// Stages the operator's retries of `ReplayRace`/`EditRace` keys; `retries` runs them.
    pub operator: Operator,
    pub retries: JoinSet<()>,
}

impl Publisher {
    pub async fn run(mut self, mut commands: mpsc::Receiver<Cmd>) {
        while let Some(cmd) = tokio::select! {
            _ = self.stop.cancelled() => None,
            c = commands.recv() => c,
        } {
            match cmd {
                Cmd::Burst { n, rate, mix, done } => {
                    self.burst(n, rate, mix).await;
                    let _ = done.send(());
                }
                Cmd::Republish { done } => {
                    self.republish().await;
                    self.finish_corrections().await;
                    let left = self.republish().await;
                    let _ = done.send(left);
                }
            }
        }
        if let Some((conn, _)) = self.conn.take() {
            let _ = conn.close(200, "OK".into()).await;
        }
    }

    /// `n` new keys at `rate` per second, then every confirm settled; duplicates ride on top
    /// (bounded: at most 2n + 10 publishes).
    async fn burst(&mut self, n: usize, rate: f64, mix: Mix) {
        let pacer = Pacer::new(Some(rate));
        let mut fresh = 0;
        for i in 0..(2 * n + 10) {
            if fresh >= n || self.stop.is_cancelled() {
                break;
            }
            pacer.wait(i).await;
            self.send_corrections().await;
            let (idx, body, new) = self.next_intake(mix);
            fresh += usize::from(new);
            self.publish(idx, body).await;
            if new {
                self.second_body(idx).await;
            }
        }
        self.settle().await;
    }

    /// Waits for every pending confirm (each bounded by CONFIRM_TIMEOUT).
    pub async fn settle(&mut self) {
        let bound = CONFIRM_TIMEOUT + Duration::from_secs(20);
        let _ = tokio::time::timeout(bound, async {
            while self.inflight.join_next().await.is_some() {}
        })
        .await;
    }

    /// A new key's second body: a race publishes it at once; a resent key's correction waits
    /// until the suite has seen the failure of its first body (see docs/faults.md).
    pub async fn second_body(&mut self, idx: usize) {
        let kind = lock(&self.ledger).entries[idx].kind;
        match kind {
            Kind::Race => self.publish(idx, 1).await,
            Kind::Resent | Kind::ReplayRace | Kind::EditRace => self.corrections.push(idx),
            _ => {}
        }
    }

    /// Publishes the corrected body of every resent key whose failure event has arrived.
    pub async fn send_corrections(&mut self) {
        if self.corrections.is_empty() {
            return;
        }
        let ready: Vec<usize> = {
            let (seen, ledger) = (lock(&self.seen), lock(&self.ledger));
            let failed = |idx: &usize| {
                let arrivals = seen.arrivals(&ledger.entries[*idx].key);
                arrivals
                    .iter()
                    .any(|a| a.failure() == Some("validation_failed"))
            };
            self.corrections.iter().copied().filter(failed).collect()
        };
        self.corrections.retain(|i| !ready.contains(i));
        lock(&self.ledger).corrections += ready.len();
        for idx in ready {
            self.stage_retry(idx).await;
            self.publish(idx, 1).await;
        }
    }

    /// For a `ReplayRace`/`EditRace` key whose correction is about to be published: the
    /// operator's retry selects the failure now and runs once the workers committed the
    /// correction (see docs/faults.md). A retry that cannot be staged (a fault keeps the
    /// database away) leaves the key an ordinary resent one.
    pub async fn stage_retry(&mut self, idx: usize) {
        let (kind, key) = {
            let ledger = lock(&self.ledger);
            let e = &ledger.entries[idx];
            (e.kind, e.key.clone())
        };
        if !matches!(kind, Kind::ReplayRace | Kind::EditRace) {
            return;
        }
        match self.operator.stage(kind, &key).await {
            Ok(staged) => {
                let operator = self.operator.clone();
                self.retries
                    .spawn(async move { operator.finish(kind, key, staged).await });
            }
            Err(e) => say!("{key}: retry not staged: {e}"),
        }
    }

    /// After healing: the corrections still waiting, as their failures arrive (bounded).
    pub async fn finish_corrections(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.corrections.is_empty() && Instant::now() < deadline {
            self.send_corrections().await;
            if self.stop.is_cancelled() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.settle().await;
        let bound = Duration::from_secs(180);
        let _ = tokio::time::timeout(bound, async {
            while self.retries.join_next().await.is_some() {}
        })
        .await;
        if !self.corrections.is_empty() {
            say!(
                "{} resent keys never saw their failure: corrections not sent",
                self.corrections.len()
            );
        }
    }

    /// Re-publishes, in rounds, every body published under a key and never confirmed; answers
    /// how many remain.
    pub async fn republish(&mut self) -> usize {
        for round in 0..6 {
            let todo: Vec<(usize, usize)> = unconfirmed_bodies(&lock(&self.ledger));
            if todo.is_empty() || self.stop.is_cancelled() {
                return todo.len();
            }
            say!(
                "re-publishing {} unconfirmed intakes (round {})",
                todo.len(),
                round + 1
            );
            lock(&self.ledger).republished += todo.len();
            let pacer = Pacer::new(Some(500.0));
            for (i, (idx, body)) in todo.into_iter().enumerate() {
                pacer.wait(i).await;
                self.publish(idx, body).await;
            }
            self.settle().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        unconfirmed_bodies(&lock(&self.ledger)).len()
    }

    /// Picks the next intake: a duplicate of an earlier key (one of the bodies published
    /// under it), or a new key (then `true`); with the body to publish.
    pub fn next_intake(&mut self, mix: Mix) -> (usize, usize, bool) {
        let roll: f64 = self.rng.random();
        let (known, hot) = {
            let seen = lock(&self.seen);
            let hot = seen.households_created.len().min(HOT_HOUSEHOLDS);
            let household = if seen.households_created.is_empty() {
                None
            } else {
                Some(
                    seen.households_created
                        [self.rng.random_range(0..seen.households_created.len())],
                )
            };
            let hot_household =
                (hot > 0).then(|| seen.households_created[self.rng.random_range(0..hot)]);
            (household, hot_household)
        };
        let mut ledger = lock(&self.ledger);
        if roll < 0.05 && !ledger.entries.is_empty() {
            ledger.duplicates += 1;
            let idx = self.rng.random_range(0..ledger.entries.len());
            let e = &ledger.entries[idx];
            let sent: Vec<usize> = (0..e.bodies.len()).filter(|b| e.published(*b)).collect();
            let body = sent.get(self.rng.random_range(0..sent.len().max(1)));
            return (idx, body.copied().unwrap_or(0), false);
        }
        let (kind, household) = match (mix, roll) {
            (_, r) if r < 0.10 => (Kind::Invalid, None),
            (_, r) if r < 0.13 => (Kind::Resent, None),
            (_, r) if r < 0.145 => (Kind::Race, None),
            (_, r) if r < 0.16 => (Kind::ReplayRace, None),
            (_, r) if r < 0.175 => (Kind::EditRace, None),
            (_, r) if r < 0.215 && hot.is_some() => (Kind::ReplaceHead, hot),
            (Mix::Normal, r) if r < 0.50 && known.is_some() => (Kind::Join, known),
            (Mix::Joins, _) if known.is_some() => (Kind::Join, known),
            _ => (Kind::NewHousehold, None),
        };
        let seq = ledger.entries.len();
        let key = format!("{}-{seq:06}", self.run_id);
        let bodies = (0..if kind.several_bodies() { 2 } else { 1 })
            .map(|n| Arc::new(intake_body(kind, n, seq, self.county, household)))
            .collect();
        ledger.entries.push(Entry {
            key,
            bodies,
            kind,
            attempts: Vec::new(),
            first_sent: None,
        });
        (seq, 0, true)
    }

    /// A channel in confirm mode, reconnecting (bounded) when the broker went away.
    pub async fn channel(&mut self) -> Option<Channel> {
        if let Some((conn, ch)) = &self.conn
            && conn.status().connected()
            && ch.status().connected()
        {
            return Some(ch.clone());
        }
        self.conn = None;
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut delay = Duration::from_millis(200);
        while Instant::now() < deadline && !self.stop.is_cancelled() {
            match open_publisher().await {
                Ok((conn, ch)) => {
                    self.conn = Some((conn, ch.clone()));
                    return Some(ch);
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        None
    }

    pub async fn publish(&mut self, idx: usize, n: usize) {
        let (key, body) = {
            let ledger = lock(&self.ledger);
            let e = &ledger.entries[idx];
            (e.key.clone(), e.bodies[n].clone())
        };
        let Some(channel) = self.channel().await else {
            let mut ledger = lock(&self.ledger);
            let a = ledger.begin(idx, n);
            ledger.settle(idx, a, Attempt::Failed);
            return;
        };
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        let props = broker::keyed_intake(&key, broker::token_headers(&self.token));
        let attempt = lock(&self.ledger).begin(idx, n);
        let published = broker::publish_intake(&channel, &self.queue, &body, props).await;
        match published {
            Err(_) => {
                // It may have left before the channel broke: not known to be absent.
                lock(&self.ledger).settle(idx, attempt, Attempt::Indeterminate);
                self.conn = None;
            }
            Ok(confirm) => {
                let ledger = self.ledger.clone();
                self.inflight.spawn(async move {
                    let status = match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
                        Ok(Ok(c)) => match broker::classify(c) {
                            Confirmed::Queued => Attempt::Ok,
                            Confirmed::Returned | Confirmed::Nacked => Attempt::Failed,
                            // Not in confirm mode: whether it is queued is not known.
                            Confirmed::NotRequested => Attempt::Indeterminate,
                        },
                        // The confirm was lost or late: the intake may be in the queue.
                        Ok(Err(_)) | Err(_) => Attempt::Indeterminate,
                    };
                    lock(&ledger).settle(idx, attempt, status);
                    drop(permit);
                });
            }
        }
    }
}

pub async fn open_publisher() -> Res<(Connection, Channel)> {
    let conn = amqp_connect("case-intake-faults publisher").await?;
    let ch = broker::confirming_channel(&conn).await?;
    Ok((conn, ch))
}

/// Body `n` of an intake: the seed's example with a distinct first name and e-mail address
/// (a race's second body has another first name), without `last_name` when invalid.
pub fn intake_body(
    kind: Kind,
    n: usize,
    seq: usize,
    county: i64,
    household: Option<i64>,
) -> Vec<u8> {
    let head = kind == Kind::ReplaceHead;
    let name = format!(
        "Fault{seq}{}",
        if kind == Kind::Race && n > 0 { "b" } else { "" }
    );
    let mut body = kinds::intake_body(county, &name, head, household);
    body["email"] = json!(format!("fault{seq}@example.org"));
    if !kind.body_valid(n) {
        kinds::spoil(&mut body, Flaw::MissingLastName);
    }
    serde_json::to_vec(&body).unwrap_or_default()
}
