//! Whether the database answers: the readiness probe's and the supervisor's check.

use sqlx::PgPool;

/// Whether PostgreSQL answers.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}
