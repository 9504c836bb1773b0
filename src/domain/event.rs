//! An event as the store keeps it (its id, routing key and CloudEvents body) and how a failed
//! intake was resolved: what the window writes, the outbox publishes and operators read.

use serde_json::Value;
use uuid::Uuid;

/// An event ready for the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Uuid,
    /// The AMQP routing key on the events exchange.
    pub routing_key: String,
    pub body: Value,
}

/// How a failed intake was resolved (`failed_intakes.resolution`, and the `resolution` of a
/// `case.intake_resolved` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// An operator replayed it unchanged (`case-intake replay`).
    Replayed,
    /// The upstream system re-published its key with a corrected body.
    Resent,
    /// An operator corrected its body (`case-intake failed edit`).
    Edited,
    /// An operator dismissed it (`case-intake failed dismiss`): no operator retries it. Its
    /// sender's corrected body may still create the case, without a second resolution.
    Dismissed,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replayed => "replayed",
            Self::Resent => "resent",
            Self::Edited => "edited",
            Self::Dismissed => "dismissed",
        }
    }
}
