//! The harness of case-intake: what its integration tests, the benchmark and the fault suite
//! share, kept out of the service crate's public API. Everything here talks to the real local
//! PostgreSQL and RabbitMQ under names of its own.

pub mod broker;
pub mod checks;
pub mod cli;
pub mod cluster;
pub mod command;
pub mod db;
pub mod fixtures;
pub mod kinds;
pub mod latency;
pub mod ledger;
pub mod people;
pub mod pgpair;
pub mod procfs;
pub mod publisher;
pub mod retry_race;
pub mod sampler;
pub mod support;
pub mod testkit;
pub mod wait;
pub mod workers;
