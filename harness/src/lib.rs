//! The harness of case-intake: what its integration tests, the benchmark and the fault suite
//! share, kept out of the service crate's public API. Everything here talks to the real local
//! PostgreSQL and RabbitMQ under names of its own.

pub mod fixtures;
pub mod support;
pub mod testkit;
