//! The events ledger: every outcome event a run received, by message key, as the checks read
//! it. The benchmark's tap and the fault suite's collector both record into it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Deserialize;
use uuid::Uuid;

/// One outcome event as received.
pub struct Arrival {
    pub id: Uuid,
    pub at: Instant,
    pub event_type: String,
    /// The failure code of a `case.failed` event.
    pub code: Option<String>,
    pub household_id: Option<i64>,
    /// The failure event a later attempt of the key replaces (`data.replay.supersedes_event_id`).
    pub supersedes: Option<Uuid>,
    /// The failure a `case.intake_resolved` event ends (`data.failed_event_id`).
    pub resolves: Option<Uuid>,
    /// Existing cases a `case.created` event says the case may duplicate
    /// (`data.possible_duplicates`; none when the network does not match).
    pub possible_duplicates: usize,
}

impl Arrival {
    /// What the event says went wrong: nothing for `case.created`, the code of a
    /// `case.failed` (its type when it has none), the type of anything else.
    pub fn failure(&self) -> Option<&str> {
        match self.event_type.as_str() {
            "case.created" => None,
            "case.failed" => Some(self.code.as_deref().unwrap_or("case.failed")),
            other => Some(other),
        }
    }
}

/// Every outcome event received, by subject (the message key).
#[derive(Default)]
pub struct EventLog {
    pub by_key: HashMap<String, Vec<Arrival>>,
    pub event_ids: HashSet<Uuid>,
    /// Households in the order their creation was first seen.
    pub households_created: Vec<i64>,
    /// Deliveries, parsable or not.
    pub total: usize,
    pub unparsable: usize,
    /// The consumer stream ended (its connection was closed by someone else).
    pub closed: bool,
    /// Times the collector had to reconnect.
    pub reconnects: u32,
}

#[derive(Deserialize)]
struct EventBody {
    id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    subject: Option<String>,
    #[serde(default)]
    data: EventData,
}

#[derive(Deserialize, Default)]
struct EventData {
    message_key: Option<String>,
    household_id: Option<i64>,
    household_created: Option<bool>,
    error: Option<EventError>,
    replay: Option<EventReplay>,
    failed_event_id: Option<Uuid>,
    /// Any JSON: the shape of this newer field must not make whole events unparsable.
    possible_duplicates: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct EventReplay {
    supersedes_event_id: Option<Uuid>,
}

#[derive(Deserialize)]
struct EventError {
    code: String,
}

impl EventLog {
    /// Records one delivery of the events exchange, received at `at`.
    pub fn record(&mut self, data: &[u8], at: Instant) {
        self.total += 1;
        let Ok(body) = serde_json::from_slice::<EventBody>(data) else {
            self.unparsable += 1;
            return;
        };
        let Some(key) = body.subject.or(body.data.message_key) else {
            self.unparsable += 1;
            return;
        };
        let fresh = self.event_ids.insert(body.id);
        if fresh
            && body.event_type == "case.created"
            && body.data.household_created == Some(true)
            && let Some(h) = body.data.household_id
        {
            self.households_created.push(h);
        }
        self.by_key.entry(key).or_default().push(Arrival {
            id: body.id,
            at,
            event_type: body.event_type,
            code: body.data.error.map(|e| e.code),
            household_id: body.data.household_id,
            supersedes: body.data.replay.and_then(|r| r.supersedes_event_id),
            resolves: body.data.failed_event_id,
            possible_duplicates: body
                .data
                .possible_duplicates
                .as_ref()
                .and_then(serde_json::Value::as_array)
                .map_or(0, Vec::len),
        });
    }

    /// The events received for `key`, in arrival order.
    pub fn arrivals(&self, key: &str) -> &[Arrival] {
        self.by_key.get(key).map_or(&[], Vec::as_slice)
    }
}

/// The ledger as the recording task and the checks share it.
pub type SharedLog = Arc<Mutex<EventLog>>;

/// Locks `m` even if a task panicked holding it: the figures stay usable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
