//! Test harness: each test gets its own database and its own queue and exchange names on the
//! real local PostgreSQL and RabbitMQ, so tests run in parallel and leave nothing behind.

use case_intake::admin::provision::{self, Provisioned};
use case_intake::app::supervisor;
use case_intake::infra::classify::{self, ErrorClass};
use case_intake::infra::db as service_db;
use case_intake::infra::settings::Settings;
use case_intake::intake::envelope::{Attempt, Envelope, MessageKey};
use case_intake::intake::window::{self, Outcome};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use serde_json::Value;
use sqlx::PgPool;

use crate::broker::{self, LOCAL_BROKER};
use crate::checks;
use crate::db::{self, LOCAL_SERVER};

/// A valid intake body: the seed's example.
pub use crate::fixtures::seed_body;
/// A running in-process worker.
pub use crate::workers::RunningWorker;

pub struct TestEnv {
    pub settings: Settings,
    pub pool: PgPool,
    pub db_name: String,
    pub a: Provisioned,
    pub b: Provisioned,
    /// Set by [`TestEnv::cleanup`]; otherwise (a test that panicked) `Drop` removes what the
    /// test made, so no run leaves databases or queues behind.
    cleaned: bool,
}

/// Network `name` ("network A", with "Agency A" and "agent a") with two counties.
async fn provision_network(pool: &PgPool, name: &str, counties: [&str; 2]) -> Provisioned {
    let counties = counties.map(String::from);
    let agent = format!("agent {}", name.to_lowercase());
    let (network, agency) = (format!("network {name}"), format!("Agency {name}"));
    provision::provision(pool, &network, &agency, &agent, &counties)
        .await
        .unwrap_or_else(|e| panic!("provision {name}: {e}"))
}

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

impl TestEnv {
    /// A fresh database with two networks (A and B, each with two counties) and unique
    /// broker names.
    pub async fn new() -> Self {
        let id = suffix();
        let db_name = format!("case_intake_test_{id}");
        let mut settings = Settings::load(None).expect("default settings load");
        settings.database.url = db::database_url(LOCAL_SERVER, &db_name).into();
        settings.database.max_connections = 8;
        settings.amqp.intake_queue = format!("test.{id}.intake");
        settings.amqp.events_exchange = format!("test.{id}.events");
        settings.outbox.poll_interval_ms = 100;
        settings.intake.window_wait_ms = 2;
        settings.http.address = String::new();
        let pool = service_db::migrate(&settings.database)
            .await
            .expect("migrate");
        let a = provision_network(&pool, "A", ["Kings", "Queens"]).await;
        let b = provision_network(&pool, "B", ["Travis", "Bexar"]).await;
        Self {
            settings,
            pool,
            db_name,
            a,
            b,
            cleaned: false,
        }
    }

    /// An envelope as the consumer would build it.
    pub fn envelope(&self, key: &str, token: Option<&str>, body: &Value) -> Envelope {
        Envelope {
            message_key: Some(MessageKey::parse(key).expect("a test's key is a message key")),
            correlation_id: Some(format!("corr-{key}")),
            token: token.map(case_intake::store::auth::hash_token),
            body: serde_json::to_vec(body).unwrap(),
            oversize: None,
            attempt: Attempt::Delivered,
            trace: None,
            duplicate_override: false,
        }
    }

    /// Processes envelopes as one window, directly against PostgreSQL.
    pub async fn process(&self, envelopes: &[Envelope]) -> Vec<Outcome> {
        window::run(
            &self.pool,
            &supervisor::window_context(&self.settings),
            envelopes,
        )
        .await
        .expect("window processed")
    }

    /// [`TestEnv::process`] for a window that may wait for another's locks: a transient error
    /// (a lock timeout, a serialization failure) runs it again, as the consumer does.
    pub async fn process_retrying(&self, envelopes: &[Envelope]) -> Vec<Outcome> {
        let ctx = supervisor::window_context(&self.settings);
        loop {
            match window::run(&self.pool, &ctx, envelopes).await {
                Ok(outcomes) => return outcomes,
                Err(e) => assert_eq!(classify::classify(&e), ErrorClass::Transient, "{e}"),
            }
        }
    }

    pub async fn scalar_i64(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// Checks the household invariant over the whole database: every household has exactly
    /// one head, and it is one of its own cases.
    pub async fn assert_household_invariant(&self) {
        let bad = checks::households_without_one_head(&self.pool)
            .await
            .unwrap();
        assert!(bad.is_empty(), "households without exactly one own head");
    }

    /// Drops the database and the broker objects of this test.
    pub async fn cleanup(mut self) {
        self.pool.close().await;
        remove_test_objects(&self.db_name, &self.settings).await;
        self.cleaned = true;
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // Drop cannot await and may run inside the test's runtime: remove from a thread with a
        // runtime of its own.
        let (db_name, settings) = (self.db_name.clone(), self.settings.clone());
        db::run_detached(async move { remove_test_objects(&db_name, &settings).await });
    }
}

/// Drops a test's database (closing its connections) and deletes its queues and exchange.
async fn remove_test_objects(db_name: &str, settings: &Settings) {
    let _ = db::drop_database(LOCAL_SERVER, db_name).await;
    let Ok(conn) = amqp_connect().await else {
        return;
    };
    let amqp = &settings.amqp;
    broker::delete_run_objects(&conn, &amqp.intake_queue, &amqp.events_exchange, &[]).await;
    let _ = conn.close(200, "OK".into()).await;
}

pub async fn amqp_connect() -> lapin::Result<Connection> {
    broker::connect(LOCAL_BROKER, None).await
}

/// A publisher with confirms and a subscriber of every event of the test's exchange.
pub struct Broker {
    pub conn: Connection,
    pub publish: Channel,
    pub events: lapin::Consumer,
    pub intake_queue: String,
}

impl Broker {
    /// Declares the events exchange and binds a private queue to it (so no event is
    /// unroutable), then waits for the intake queue to be declared by the worker.
    pub async fn connect(env: &TestEnv) -> Self {
        let conn = amqp_connect().await.expect("broker reachable");
        let ch = conn.create_channel().await.unwrap();
        declare_events_exchange(&ch, env).await;
        let q = broker::declare_private_queue(&ch, "").await.unwrap();
        bind_to_events(&ch, q.name().as_str(), env).await;
        let events = ch
            .basic_consume(
                q.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let publish = broker::confirming_channel(&conn).await.unwrap();
        Self {
            conn,
            publish,
            events,
            intake_queue: env.settings.amqp.intake_queue.clone(),
        }
    }

    /// Declares the intake queue exactly as the worker does (idempotent).
    pub async fn declare_topology(&self, env: &TestEnv) {
        case_intake::outbox::topology::declare(&self.conn, &env.settings.amqp)
            .await
            .unwrap();
    }

    /// Publishes an intake with confirms; `headers` are (name, value) string pairs.
    pub async fn publish(
        &self,
        key: Option<&str>,
        headers: &[(&str, &str)],
        correlation_id: Option<&str>,
        body: &[u8],
    ) {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), broker::text(v));
        }
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(table);
        if let Some(k) = key {
            props = props.with_message_id(k.into());
        }
        if let Some(c) = correlation_id {
            props = props.with_correlation_id(c.into());
        }
        self.publish_props(props, body).await;
    }

    /// Publishes an intake with the given properties, with confirms.
    pub async fn publish_props(&self, props: BasicProperties, body: &[u8]) {
        let confirm = broker::publish_intake(&self.publish, &self.intake_queue, body, props)
            .await
            .unwrap()
            .await
            .unwrap();
        if let Some(problem) = broker::confirm_problem(confirm) {
            panic!("intake not confirmed: {problem}");
        }
    }

    /// The next event: (routing key, AMQP properties, CloudEvent body), waiting at most
    /// [`crate::wait::SETTLE`].
    pub async fn next_event(&mut self) -> (String, BasicProperties, Value) {
        let delivery = tokio::time::timeout(crate::wait::SETTLE, self.events.next())
            .await
            .expect("an event arrives")
            .expect("stream open")
            .expect("delivery ok");
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        let body: Value = serde_json::from_slice(&delivery.data).expect("event is JSON");
        (
            delivery.routing_key.as_str().to_owned(),
            delivery.properties.clone(),
            body,
        )
    }

    /// The next event whose subject is `key`, skipping others (e.g. of setup intakes).
    pub async fn next_event_for(&mut self, key: &str) -> (String, BasicProperties, Value) {
        loop {
            let e = self.next_event().await;
            if e.2["subject"] == key {
                return e;
            }
        }
    }

    /// Collects `n` events.
    pub async fn events(&mut self, n: usize) -> Vec<(String, BasicProperties, Value)> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_event().await);
        }
        out
    }
}

/// Declares the test's events exchange as the worker does (idempotent).
pub async fn declare_events_exchange(ch: &Channel, env: &TestEnv) {
    case_intake::outbox::topology::declare_events_exchange(ch, &env.settings.amqp)
        .await
        .unwrap();
}

/// Binds `queue` to every event of the test's exchange.
pub async fn bind_to_events(ch: &Channel, queue: &str, env: &TestEnv) {
    broker::bind_all_events(ch, queue, &env.settings.amqp.events_exchange)
        .await
        .unwrap();
}

/// `Token <token>` header pair.
pub fn token_header(token: &str) -> (&'static str, String) {
    ("authorization", format!("Token {token}"))
}
