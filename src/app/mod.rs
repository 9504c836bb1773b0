//! The running service on top of everything else: the supervisor that keeps broker sessions
//! (intake consumers, outbox relay, dead-letter consumer) alive through faults, the HTTP
//! surface (probes, metrics, counties) and the tracing subscriber. May call every other layer;
//! nothing but `main.rs` calls it.

pub mod http;
pub mod supervisor;
pub mod telemetry;
