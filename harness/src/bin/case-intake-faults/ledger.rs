//! The ledger: every intake the suite made and every publish attempt of it, with what its confirm
//! said; what the checks hold the database and the events to.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use case_intake_harness::kinds::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Published; the confirm has not been decided yet.
    Pending,
    Ok,
    /// Nacked, returned as unroutable, or refused before it was sent.
    Failed,
    /// The confirm did not arrive (timeout, connection lost): the intake may or may not be in
    /// the queue.
    Indeterminate,
}

/// One publish attempt of one of a key's bodies.
#[derive(Debug, Clone, Copy)]
pub struct Try {
    pub body: usize,
    pub status: Attempt,
}

pub struct Entry {
    pub key: String,
    /// The bodies published under the key: one, or two for a resent key (the invalid one,
    /// then the correction) and a race (two valid ones).
    pub bodies: Vec<Arc<Vec<u8>>>,
    pub kind: Kind,
    pub attempts: Vec<Try>,
    /// When the key was first published: where its gap to its first event starts.
    pub first_sent: Option<Instant>,
}

impl Entry {
    pub fn confirmed(&self) -> bool {
        self.attempts.iter().any(|t| t.status == Attempt::Ok)
    }
    pub fn published(&self, body: usize) -> bool {
        self.attempts.iter().any(|t| t.body == body)
    }
    pub fn body_confirmed(&self, body: usize) -> bool {
        self.attempts
            .iter()
            .any(|t| t.body == body && t.status == Attempt::Ok)
    }
    /// Whether the key must end in a case: a valid body of it was confirmed (for a key of
    /// one body, its kind says).
    pub fn deserves_case(&self) -> bool {
        if !self.kind.several_bodies() {
            return self.kind.valid();
        }
        self.attempts
            .iter()
            .any(|t| t.status == Attempt::Ok && self.kind.body_valid(t.body))
    }
    /// Publications that may have reached the queue (confirmed or indeterminate).
    pub fn publications(&self) -> usize {
        let may = |t: &&Try| matches!(t.status, Attempt::Ok | Attempt::Indeterminate);
        self.attempts.iter().filter(may).count()
    }
}

#[derive(Default)]
pub struct Ledger {
    pub entries: Vec<Entry>,
    /// Publishes of a key that was published before (same key, same body).
    pub duplicates: usize,
    pub republished: usize,
    /// Corrected bodies published under resent keys.
    pub corrections: usize,
}

impl Ledger {
    pub fn begin(&mut self, idx: usize, body: usize) -> usize {
        self.entries[idx]
            .first_sent
            .get_or_insert_with(Instant::now);
        let attempts = &mut self.entries[idx].attempts;
        attempts.push(Try {
            body,
            status: Attempt::Pending,
        });
        attempts.len() - 1
    }
    pub fn settle(&mut self, idx: usize, attempt: usize, status: Attempt) {
        self.entries[idx].attempts[attempt].status = status;
    }
    pub fn attempt_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for t in self.entries.iter().flat_map(|e| &e.attempts) {
            let name = match t.status {
                Attempt::Pending => "pending",
                Attempt::Ok => "ok",
                Attempt::Failed => "failed",
                Attempt::Indeterminate => "indeterminate",
            };
            *m.entry(name).or_insert(0) += 1;
        }
        m
    }
}

/// Every (key, body) published and never confirmed.
pub fn unconfirmed_bodies(ledger: &Ledger) -> Vec<(usize, usize)> {
    let mut todo = Vec::new();
    for (i, e) in ledger.entries.iter().enumerate() {
        for b in 0..e.bodies.len() {
            if e.published(b) && !e.body_confirmed(b) {
                todo.push((i, b));
            }
        }
    }
    todo
}
