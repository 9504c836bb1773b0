//! The intake pipeline and its contract: a delivery is read into an envelope (`delivery`,
//! `envelope`), its body decoded and validated (`decode`, `validate`), a window of them decided
//! and written in one transaction (`window`, with the household rules of `household`), and the
//! consumer acks, retries or hands back each delivery as `disposition` decides (`consumer`,
//! with `infra::classify`); `trace` reads the W3C trace context an intake carries to its
//! event. `event` (with `domain::error`) is what upstream systems see. May call `outbox` (to
//! hand committed events to the relay), `store`, `domain` and `infra`.

pub mod consumer;
pub mod decode;
pub mod delivery;
pub mod disposition;
pub mod duplicates;
pub mod envelope;
pub mod event;
pub mod household;
pub mod matching;
pub mod trace;
pub mod validate;
pub mod window;
