//! Rows bound column by column: the store's set-based statements bind one array per column
//! and read the rows back with `unnest`, so that a window's rows cost one round trip per table.

use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;

use crate::store::ids::InNetwork;

/// One column of `rows`: `pick` applied to each row, in row order.
pub(super) fn column<'a, R, T>(rows: &'a [R], pick: impl FnMut(&'a R) -> T) -> Vec<T> {
    rows.iter().map(pick).collect()
}

/// Binds the id and network columns of references as `$1` and `$2`, for a join with
/// `unnest($1::bigint[], $2::bigint[]) AS u(id, n)`.
pub(super) fn bind_references<'q, O>(
    query: QueryAs<'q, Postgres, O, PgArguments>,
    refs: &[InNetwork],
) -> QueryAs<'q, Postgres, O, PgArguments> {
    query
        .bind(column(refs, |r| r.id))
        .bind(column(refs, |r| r.network))
}
