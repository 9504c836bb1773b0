//! The window's events built from their parts: `case.failed`, `case.intake_resolved`, and the
//! field setter the others use.

use chrono::Utc;
use serde_json::Value;

use crate::domain::error::IntakeError;
use crate::intake::envelope::Envelope;
use crate::intake::event::{self, Event, ReplayInfo};

use super::context::WindowContext;

pub(super) fn failed_event(
    ctx: &WindowContext,
    key: Option<&str>,
    error: &IntakeError,
    env: &Envelope,
    retry: Option<ReplayInfo>,
    now: chrono::DateTime<Utc>,
) -> Event {
    let mut ev = event::cloud_event(
        &ctx.source,
        event::CASE_FAILED,
        &ctx.failed_routing_key,
        key,
        now,
        event::failed_data(key, error, retry),
    );
    event::add_trace(&mut ev, env.trace.as_ref());
    ev
}

/// The `case.intake_resolved` event of a failure resolved by intake `env`'s attempt.
pub(super) fn resolved_event(
    ctx: &WindowContext,
    resolved: &event::Resolved<'_>,
    env: &Envelope,
    now: chrono::DateTime<Utc>,
) -> Event {
    let mut ev = event::cloud_event(
        &ctx.source,
        event::INTAKE_RESOLVED,
        &ctx.resolved_routing_key,
        resolved.message_key,
        now,
        event::resolved_data(resolved),
    );
    event::add_trace(&mut ev, env.trace.as_ref());
    ev
}

/// Sets `field` of an event's `data` object.
pub(super) fn data_obj_insert(data: &mut Value, field: &str, value: impl serde::Serialize) {
    if let Some(obj) = data.as_object_mut() {
        obj.insert(
            field.into(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }
}
