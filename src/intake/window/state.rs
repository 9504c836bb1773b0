//! The state the decide and place steps share: the window-wide inputs (`Phase`), what has
//! been decided and planned so far (`Written`), and what a retry or a key seen before is.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use uuid::Uuid;

use crate::intake::duplicates::{self, InWindow};
use crate::intake::event::{Event, ReplayInfo, Resolution};
use crate::store;
use crate::store::ids::InNetwork;

use super::authenticate::Callers;
use super::claim::Slot;
use super::context::WindowContext;
use super::outcome::Outcome;
use super::plan::Plan;
use super::prepare::Prepared;

/// What a window has decided and planned so far.
pub(super) struct Written {
    /// Locked households by id (second phase), with the head each has now.
    pub(super) heads: HashMap<i64, store::HouseholdState>,
    pub(super) plan: Plan,
    pub(super) outcomes: Vec<Option<Outcome>>,
    /// The cases planned so far, as later intakes of the window may match them.
    pub(super) in_window: InWindow,
}

impl Written {
    pub(super) fn new(n: usize) -> Self {
        Self {
            heads: HashMap::new(),
            plan: Plan::default(),
            outcomes: vec![None; n],
            in_window: InWindow::default(),
        }
    }
}

/// The window-wide inputs of the decide and place steps.
pub(super) struct Phase<'a, 'p> {
    pub(super) ctx: &'a WindowContext,
    pub(super) prepared: &'a [Prepared<'p>],
    pub(super) slots: &'a [Slot],
    pub(super) callers: &'a Callers,
    pub(super) counties: &'a HashSet<InNetwork>,
    /// The stored candidates of each intake that was matched.
    pub(super) matches: &'a duplicates::Stored,
    pub(super) now: chrono::DateTime<Utc>,
}

impl Phase<'_, '_> {
    /// Which attempt intake `i` is when it retries a failure: an operator's replay or edit
    /// (set on its envelope), or its sender's corrected body (a resend slot).
    pub(super) fn retry_of(&self, i: usize) -> Option<ReplayInfo> {
        let p = &self.prepared[i];
        match &self.slots[i] {
            Slot::Resend(s) => Some(ReplayInfo {
                attempt: s.failed.map_or(2, |(_, attempts)| attempts + 1),
                failed_intake_id: s.failed.map(|(id, _)| id),
                supersedes: Some(s.event.id),
                how: Resolution::Resent,
            }),
            _ => p.env.replay(),
        }
    }

    /// The failure event a resent intake's outcome replaces.
    pub(super) fn replaces(&self, i: usize) -> Option<Uuid> {
        match &self.slots[i] {
            Slot::Resend(s) => Some(s.event.id),
            _ => None,
        }
    }

    /// The stored outcome event that intake `i` (a key seen before) answered with.
    pub(super) fn stored_event(&self, i: usize, id: Uuid) -> Option<Event> {
        let slot = match &self.slots[i] {
            Slot::Follower { first } => &self.slots[*first],
            s => s,
        };
        match slot {
            Slot::Existing(s) | Slot::Resend(s) if s.event.id == id => Some(s.event.clone()),
            _ => None,
        }
    }
}
