//! Operator commands run by the binary: provisioning networks, publishing an intake, inspecting
//! and replaying failed intakes, key rotation, retention, and the parking queue's tools. May call `intake` (a replay
//! runs the pipeline), `outbox`, `store` and `infra`; the worker's runtime (`app`) does not
//! depend on them except for the retention janitor.

pub mod failed;
pub mod parked;
pub mod provision;
pub mod publish;
pub mod retention;
pub mod rotate;
