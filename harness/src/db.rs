//! Private databases on the local PostgreSQL: the server every run uses and the one way a
//! run's database is dropped (its connections closed first), whatever made it.

use sqlx::Connection as _;

/// The local PostgreSQL server, without a database name.
pub const LOCAL_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// The URL of database `name` on `server` (given without a database name).
pub fn database_url(server: &str, name: &str) -> String {
    format!("{}/{name}", server.trim_end_matches('/'))
}

/// Drops database `name` on `server`, closing the sessions still on it, if it exists.
pub async fn drop_database(server: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut admin = sqlx::PgConnection::connect(&database_url(server, "postgres")).await?;
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin)
        .await?;
    admin.close().await
}

/// Runs `cleanup` to completion from a place that cannot await (a `Drop`, possibly inside a
/// runtime): on a thread with a runtime of its own.
pub fn run_detached<F>(cleanup: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the cleanup");
        rt.block_on(cleanup);
    })
    .join();
}
