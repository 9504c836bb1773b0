//! case-intake: consumes "create a case" messages from RabbitMQ, applies the CT/OI household
//! rules in PostgreSQL exactly once per message key, and publishes `case.created` /
//! `case.failed` events through a transactional outbox.
//!
//! The folders are layers, each using only the ones below it (ARCHITECTURE.md):
//! `cli` (the command line) on top; `app` (supervisor, HTTP, telemetry) and `admin` (operator
//! commands) below it; then `intake` (the pipeline) and `outbox` (relay, topology); then
//! `store` (SQL, authentication, sealing); `domain` (the value types the store and the pipeline
//! share); `infra` (settings, metrics, database connections, error classes, small utilities) at
//! the bottom. `tests/it/architecture.rs` checks the layering and that no file imports one that
//! imports it back.
// `unsafe` is denied everywhere but `infra::nodelay`, which must borrow a raw socket
// descriptor.
#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod domain;
pub mod infra;
pub mod intake;
pub mod outbox;
pub mod store;
