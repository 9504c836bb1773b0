//! The worker's PostgreSQL connections run with TCP_NODELAY, which sqlx 0.9.0 leaves off
//! (a 40 ms delayed-ACK stall on every large statement otherwise: docs/benchmarks.md).
//! Alone in its test binary, so no other test's connections are counted.

#[tokio::test]
async fn pool_connections_have_tcp_nodelay() {
    let env = case_intake_harness::support::TestEnv::new().await;
    let port = case_intake::infra::db::connect_options(&env.settings.database)
        .unwrap()
        .get_port();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = env.pool.acquire().await.unwrap();
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(one, 1);
        held.push(conn);
    }

    let (with, without) = case_intake::infra::nodelay::census(port);

    assert!(
        with >= 3,
        "{with} sockets with TCP_NODELAY, expected the 3 held"
    );
    assert_eq!(without, 0, "sockets to PostgreSQL without TCP_NODELAY");
}
