//! The errors a PostgreSQL failover produces, against the real server: a read-only server
//! (SQLSTATE 25006) and a terminated session (57P01) are outages, never the intake's fault; the
//! pool hands out no session made before a recycle; `/readyz` says when the database is
//! read-only; and a worker whose database turns read-only holds its intakes and creates them
//! once writes are back, failing none.

use case_intake_harness::wait::{SETTLE, until};
use std::sync::Arc;
use std::time::Duration;

use case_intake::app::http::{HttpState, serve};
use case_intake::app::supervisor;
use case_intake::infra::classify::{ErrorClass, classify};
use case_intake::infra::db;
use case_intake::infra::metrics::{ConsumerState, Metrics};
use case_intake::intake::window::{self, Outcome};
use case_intake_harness::db::{LOCAL_SERVER, database_url};
use case_intake_harness::support::{Broker, TestEnv, seed_body, token_header};
use case_intake_harness::testkit::seed_envelope;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// The SQLSTATE of a database error, if it is one.
fn code_of(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// A worker-settings pool of one connection, so that the session a test changes is the one
/// the next window gets.
fn one_session_pool(env: &TestEnv) -> PgPool {
    let mut settings = env.settings.database.clone();
    settings.max_connections = 1;
    db::pool(&settings).unwrap()
}

/// Makes the pool's one session read-only, as a session on a standby or on a server whose
/// `default_transaction_read_only` is on is.
async fn make_session_read_only(pool: &PgPool) {
    sqlx::query("SET default_transaction_read_only = on")
        .execute(pool)
        .await
        .unwrap();
}

/// A session on the server's `postgres` database: changes to the test's database are made
/// from outside it, where they cannot make the session that makes them read-only.
async fn admin() -> PgConnection {
    PgConnection::connect(&database_url(LOCAL_SERVER, "postgres"))
        .await
        .unwrap()
}

/// `ALTER DATABASE … SET default_transaction_read_only` (or `RESET`) on the test's database:
/// every session made afterwards is read-only (or not).
async fn set_database_read_only(env: &TestEnv, on: bool) {
    let change = if on {
        "SET default_transaction_read_only = on"
    } else {
        "RESET default_transaction_read_only"
    };
    let sql = format!("ALTER DATABASE \"{}\" {change}", env.db_name);
    let mut admin = admin().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
}

#[tokio::test]
async fn a_write_on_a_read_only_server_is_an_outage() {
    let env = TestEnv::new().await;
    let pool = one_session_pool(&env);
    make_session_read_only(&pool).await;
    let ctx = supervisor::window_context(&env.settings);
    let envelope = seed_envelope(&env, "ro-1", &env.a);
    let e = window::run(&pool, &ctx, &[envelope]).await.unwrap_err();
    assert_eq!(code_of(&e).as_deref(), Some("25006"), "{e}");
    assert_eq!(classify(&e), ErrorClass::Outage);
    // Nothing was recorded for the key, failed or not.
    let outcomes = env.scalar_i64("SELECT count(*) FROM intake_outcomes").await;
    assert_eq!(outcomes, 0);
    pool.close().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_session_terminated_mid_transaction_is_an_outage() {
    let env = TestEnv::new().await;
    let url = db::connect_options(&env.settings.database).unwrap();
    let mut victim = PgConnection::connect_with(&url).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut victim).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut victim)
        .await
        .unwrap();
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(terminated);
    let e = sqlx::query("SELECT count(*) FROM households")
        .execute(&mut victim)
        .await
        .unwrap_err();
    // The server says 57P01 (admin shutdown) before it closes the socket; a client that reads
    // the closed socket first sees an I/O error. Both are outages.
    assert!(
        code_of(&e).as_deref() == Some("57P01") || matches!(e, sqlx::Error::Io(_)),
        "{e:?}"
    );
    assert_eq!(classify(&e), ErrorClass::Outage);
    env.cleanup().await;
}

#[tokio::test]
async fn a_pool_hands_out_no_session_made_before_a_recycle() {
    let env = TestEnv::new().await;
    let pool = one_session_pool(&env);
    make_session_read_only(&pool).await;
    let ctx = supervisor::window_context(&env.settings);
    let e = window::run(&pool, &ctx, &[seed_envelope(&env, "rc-1", &env.a)])
        .await
        .unwrap_err();
    assert_eq!(classify(&e), ErrorClass::Outage);
    // What the consumer does on an outage: the read-only session is closed, not reused.
    db::recycle();
    let out = window::run(&pool, &ctx, &[seed_envelope(&env, "rc-1", &env.a)])
        .await
        .unwrap();
    assert!(matches!(out[0], Outcome::Created { .. }), "{:?}", out[0]);
    pool.close().await;
    env.cleanup().await;
}

#[tokio::test]
async fn readiness_fails_while_the_database_is_read_only() {
    let env = TestEnv::new().await;
    set_database_read_only(&env, true).await;
    let metrics = Metrics::shared();
    metrics.set_state(ConsumerState::Consuming);
    // A pool of its own: its sessions are made after the change, so they are read-only.
    let pool = one_session_pool(&env);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/readyz", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let state = HttpState {
        pool: pool.clone(),
        metrics,
        stall_limit: Duration::from_secs(120),
    };
    tokio::spawn(serve(listener, state, stop.clone()));
    let res = reqwest::get(&url).await.unwrap();
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["reason"], "database read-only");

    set_database_read_only(&env, false).await;
    db::recycle();
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    stop.cancel();
    pool.close().await;
    env.cleanup().await;
}

/// Waits until the consumers are in `state`.
async fn await_state(metrics: &Metrics, state: ConsumerState) {
    until(format!("the consumers {state:?}"), SETTLE, || async {
        metrics.state() == state
    })
    .await;
}

#[tokio::test]
async fn a_worker_holds_intakes_while_the_database_is_read_only_and_fails_none() {
    let env = TestEnv::new().await;
    let metrics = Metrics::shared();
    let mut broker = Broker::connect(&env).await;
    broker.declare_topology(&env).await;
    let stop = CancellationToken::new();
    let worker = tokio::spawn(supervisor::run_with(
        env.settings.clone(),
        stop.clone(),
        Arc::clone(&metrics),
    ));
    let (h, v) = token_header(&env.a.token);
    let body = serde_json::to_vec(&seed_body(env.a.county_ids[0])).unwrap();
    broker
        .publish(Some("before"), &[(h, &v)], None, &body)
        .await;
    let (routing_key, _, _) = broker.next_event_for("before").await;
    assert_eq!(routing_key, env.settings.amqp.created_routing_key);

    // The server turns read-only under the worker, as an old primary seen through an address
    // not yet moved does: its sessions are ended and every new one is read-only.
    set_database_read_only(&env, true).await;
    let terminate = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = '{}' AND application_name = 'case-intake'",
        env.db_name
    );
    let mut admin = admin().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(terminate))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    broker
        .publish(Some("during"), &[(h, &v)], None, &body)
        .await;
    await_state(&metrics, ConsumerState::DatabaseOutage).await;

    // Writes are back; the worker's read-only sessions must not be reused.
    set_database_read_only(&env, false).await;
    let (routing_key, _, event) = broker.next_event_for("during").await;
    assert_eq!(
        routing_key, env.settings.amqp.created_routing_key,
        "{event}"
    );
    await_state(&metrics, ConsumerState::Consuming).await;
    let failed = env.scalar_i64("SELECT count(*) FROM failed_intakes").await;
    assert_eq!(failed, 0);

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}
