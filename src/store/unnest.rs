//! Rows bound column by column: the store's set-based statements bind one array per column
//! and read the rows back with `unnest`, so that a window's rows cost one round trip per table.

/// One column of `rows`: `pick` applied to each row, in row order.
pub(super) fn column<'a, R, T>(rows: &'a [R], pick: impl FnMut(&'a R) -> T) -> Vec<T> {
    rows.iter().map(pick).collect()
}
