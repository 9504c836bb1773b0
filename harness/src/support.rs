//! Test harness: each test gets its own database and its own queue and exchange names on the
//! real local PostgreSQL and RabbitMQ, so tests run in parallel and leave nothing behind.

use std::time::Duration;

use case_intake::admin::provision::{self, Provisioned};
use case_intake::app::supervisor;
use case_intake::infra::db;
use case_intake::infra::settings::Settings;
use case_intake::intake::envelope::Envelope;
use case_intake::intake::window::{self, Outcome};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A valid intake body: the seed's example.
pub use crate::fixtures::seed_body;

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
        settings.database.url = format!("postgres://postgres@127.0.0.1:5432/{db_name}").into();
        settings.database.max_connections = 8;
        settings.amqp.intake_queue = format!("test.{id}.intake");
        settings.amqp.events_exchange = format!("test.{id}.events");
        settings.outbox.poll_interval_ms = 100;
        settings.intake.window_wait_ms = 2;
        settings.http.address = String::new();
        let pool = db::migrate(&settings.database).await.expect("migrate");
        let a = provision::provision(
            &pool,
            "network A",
            "Agency A",
            "agent a",
            &["Kings".into(), "Queens".into()],
        )
        .await
        .expect("provision A");
        let b = provision::provision(
            &pool,
            "network B",
            "Agency B",
            "agent b",
            &["Travis".into(), "Bexar".into()],
        )
        .await
        .expect("provision B");
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
            message_key: Some(key.to_owned()),
            correlation_id: Some(format!("corr-{key}")),
            token: token.map(case_intake::store::auth::hash_token),
            body: serde_json::to_vec(body).unwrap(),
            replay: None,
            oversize: None,
            forced_failure: None,
        }
    }

    /// Processes envelopes as one window, directly against PostgreSQL.
    pub async fn process(&self, envelopes: &[Envelope]) -> Vec<Outcome> {
        window::process(
            &self.pool,
            &supervisor::window_context(&self.settings),
            envelopes,
        )
        .await
        .expect("window processed")
    }

    pub async fn scalar_i64(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// Checks the household invariant over the whole database: every household has exactly
    /// one head, and it is one of its own cases.
    pub async fn assert_household_invariant(&self) {
        let bad: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM households h
              WHERE (SELECT count(*) FROM cases c WHERE c.household_id = h.id AND c.head_of_household) <> 1
                 OR NOT EXISTS (SELECT 1 FROM cases c WHERE c.id = h.head_case_id AND c.household_id = h.id AND c.head_of_household)",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap();
        assert_eq!(bad, 0, "households without exactly one own head");
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
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the cleanup");
            rt.block_on(remove_test_objects(&db_name, &settings));
        })
        .join();
    }
}

/// Drops a test's database (closing its connections) and deletes its queues and exchange.
async fn remove_test_objects(db_name: &str, settings: &Settings) {
    if let Ok(admin) = PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await {
        let sql = format!("DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)");
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await;
        admin.close().await;
    }
    let Ok(conn) = amqp_connect().await else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        let intake = &settings.amqp.intake_queue;
        for q in [
            intake.clone(),
            case_intake::outbox::topology::dead_letter_queue(intake),
            case_intake::outbox::topology::retry_queue(intake),
            case_intake::outbox::topology::parked_queue(intake),
        ] {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = ch
            .exchange_delete(
                settings.amqp.events_exchange.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = conn.close(200, "OK".into()).await;
}

pub async fn amqp_connect() -> lapin::Result<Connection> {
    Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        ConnectionProperties::default(),
    )
    .await
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
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("worker stops")
            .expect("worker task")
            .expect("worker result");
    }
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
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
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
        let publish = conn.create_channel().await.unwrap();
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            conn,
            publish,
            events,
            intake_queue: env.settings.amqp.intake_queue.clone(),
        }
    }

    /// Declares the intake queue exactly as the worker does (idempotent).
    pub async fn declare_topology(&self, env: &TestEnv) {
        let ch = self.conn.create_channel().await.unwrap();
        case_intake::outbox::topology::declare(&ch, &env.settings.amqp)
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
            table.insert(
                (*k).into(),
                AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
            );
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
        let confirm = self
            .publish
            .basic_publish(
                "".into(),
                self.intake_queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "intake confirmed");
        assert!(confirm.take_message().is_none(), "intake routed");
    }

    /// The next event: (routing key, AMQP properties, CloudEvent body). Waits up to 60 s.
    pub async fn next_event(&mut self) -> (String, BasicProperties, Value) {
        let delivery = tokio::time::timeout(Duration::from_secs(60), self.events.next())
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
    ch.queue_bind(
        queue.into(),
        env.settings.amqp.events_exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// `Token <token>` header pair.
pub fn token_header(token: &str) -> (&'static str, String) {
    ("authorization", format!("Token {token}"))
}
