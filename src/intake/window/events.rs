//! The window's events from their parts: each built by `intake::event` with the head the
//! window gives it (its source and routing key, the intake's key, the window's time and the
//! intake's trace context).

use chrono::Utc;

use crate::domain::error::IntakeError;
use crate::intake::envelope::Envelope;
use crate::intake::event::{self, Event, FailedData, Head, ReplayInfo};

use super::context::WindowContext;

/// The head of an event about intake `env` on `routing_key`.
pub(super) fn head<'a>(
    ctx: &'a WindowContext,
    routing_key: &'a str,
    env: &'a Envelope,
    now: chrono::DateTime<Utc>,
) -> Head<'a> {
    Head {
        source: &ctx.source,
        routing_key,
        subject: env.message_key.as_deref(),
        time: now,
        trace: env.trace.as_ref(),
    }
}

/// The `case.failed` event of intake `env`.
pub(super) fn failed_event(
    ctx: &WindowContext,
    error: &IntakeError,
    env: &Envelope,
    retry: Option<ReplayInfo>,
    now: chrono::DateTime<Utc>,
) -> Event {
    let data = FailedData {
        message_key: env.message_key.as_deref(),
        error,
        replay: retry.map(Into::into),
    };
    event::failed(head(ctx, &ctx.failed_routing_key, env, now), &data)
}

/// The `case.intake_resolved` event of a failure resolved by intake `env`'s attempt.
pub(super) fn resolved_event(
    ctx: &WindowContext,
    resolved: &event::Resolved<'_>,
    env: &Envelope,
    now: chrono::DateTime<Utc>,
) -> Event {
    event::resolved(head(ctx, &ctx.resolved_routing_key, env, now), resolved)
}
