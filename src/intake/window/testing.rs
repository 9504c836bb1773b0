//! What the window's unit tests share: envelopes, the seed body, and the real `prepare` run
//! with the default settings' context.

use chrono::NaiveDate;
use serde_json::Value;

use super::context::WindowContext;
use super::prepare::{Prepared, prepare};
use crate::infra::settings::Settings;
use crate::intake::envelope::{Attempt, Envelope, MessageKey};

pub(super) const NETWORK: i64 = 7;
pub(super) const COUNTY: i64 = 3;

pub(super) fn envelope(key: Option<&str>, body: Value) -> Envelope {
    Envelope {
        message_key: key.map(|k| MessageKey::parse(k).expect("a test's key is a message key")),
        correlation_id: None,
        token: None,
        body: serde_json::to_vec(&body).unwrap(),
        oversize: None,
        attempt: Attempt::Delivered,
        trace: None,
        duplicate_override: false,
    }
}

/// The seed's example body, its county one of [`NETWORK`]'s.
pub(super) fn seed() -> Value {
    let mut v: Value =
        serde_json::from_str(include_str!("../../../harness/fixtures/seed-body.json")).unwrap();
    v["street_county"] = COUNTY.into();
    v
}

/// The context a worker builds from the default settings.
pub(super) fn context() -> WindowContext {
    crate::app::supervisor::window_context(&Settings::load(None).unwrap())
}

/// `env` prepared as a window prepares it, on a fixed day.
pub(super) fn prepared<'a>(env: &'a Envelope, ctx: &WindowContext) -> Prepared<'a> {
    prepare(env, ctx, NaiveDate::from_ymd_opt(2026, 6, 1).unwrap())
}
