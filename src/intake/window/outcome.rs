//! What became of each intake of a window: the outcome the consumer logs and acknowledges by,
//! and, from a preview, the event it would publish.

use serde_json::Value;
use uuid::Uuid;

use crate::domain::error::ErrorCode;

/// What became of one intake; the consumer logs it, tests assert on it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Created {
        case_id: i64,
        household_id: i64,
        event_id: Uuid,
    },
    Failed {
        code: ErrorCode,
        event_id: Uuid,
    },
    /// The key was seen before with the same body: its original event was queued again.
    Duplicate {
        event_id: Uuid,
    },
    /// The person already has a case and the network's policy is `link`: no case was
    /// created; the key's outcome is that case (`case.matched`).
    Matched {
        case_id: i64,
        household_id: i64,
        event_id: Uuid,
    },
    /// An operator's retry (replay, edit) of a failed intake that was resolved after it was
    /// selected (its sender's corrected body committed first, another replay, a dismissal):
    /// nothing was done to the key, nothing published, no failed intake opened. `event_id` is
    /// the event of the failure it would have retried, no longer the key's outcome.
    AlreadyResolved {
        event_id: Uuid,
    },
}

impl Outcome {
    pub fn event_id(&self) -> Uuid {
        match self {
            Outcome::Created { event_id, .. }
            | Outcome::Failed { event_id, .. }
            | Outcome::Duplicate { event_id }
            | Outcome::Matched { event_id, .. }
            | Outcome::AlreadyResolved { event_id } => *event_id,
        }
    }

    /// The case and household a created or linked intake came to.
    pub fn case(&self) -> Option<(i64, i64)> {
        match self {
            Outcome::Created {
                case_id,
                household_id,
                ..
            }
            | Outcome::Matched {
                case_id,
                household_id,
                ..
            } => Some((*case_id, *household_id)),
            Outcome::Failed { .. }
            | Outcome::Duplicate { .. }
            | Outcome::AlreadyResolved { .. } => None,
        }
    }
}

/// One intake's outcome with, from [`preview`], the body of the event it would publish.
#[derive(Debug, Clone)]
pub struct Decided {
    pub outcome: Outcome,
    pub event: Option<Value>,
}
