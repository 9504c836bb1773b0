//! case-intake: consumes "create a case" messages from RabbitMQ, applies the CT/OI household
//! rules in PostgreSQL exactly once per message key, and publishes `case.created` /
//! `case.failed` events through a transactional outbox.
// `unsafe` is denied everywhere but `nodelay`, which must borrow a raw socket descriptor.
#![deny(unsafe_code)]

pub mod auth;
pub mod classify;
pub mod consumer;
pub mod crypto;
pub mod db;
pub mod decode;
pub mod delivery;
pub mod envelope;
pub mod error;
pub mod event;
pub mod failed;
pub mod household;
pub mod http;
pub mod metrics;
pub mod nodelay;
pub mod parked;
pub mod provision;
pub mod redact;
pub mod relay;
pub mod retention;
pub mod rotate;
pub mod settings;
pub mod stack;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod topology;
pub mod validate;
pub mod window;
pub mod worker;
