//! Distinct ids in one order: the order every window takes its row locks in, so that
//! concurrent windows cannot deadlock.

use std::collections::HashSet;

/// Distinct `items`, sorted, so that concurrent windows lock rows in the same order and cannot
/// deadlock.
pub(super) fn unique<T: std::hash::Hash + Eq + Ord + Copy>(
    items: impl IntoIterator<Item = T>,
) -> Vec<T> {
    let mut v: Vec<T> = items
        .into_iter()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    v.sort_unstable();
    v
}
