//! Operator commands run by the binary: provisioning networks and managing their counties,
//! agents and API keys, publishing an intake, inspecting, grouping, replaying and dismissing
//! failed intakes (bulk work paced by `pacing`), what became of a message key (`status`), key
//! rotation, retention, the parking queue's tools and the container healthcheck. May call
//! `intake` (a replay runs the pipeline), `outbox`, `store` and `infra`; the worker's runtime
//! (`app`) does not depend on them except for the retention janitor and the status endpoint
//! (which answers with `status`'s form).

pub mod bulk_edit;
pub mod dismiss;
pub mod duplicates;
pub mod edit;
pub mod failed;
pub mod groups;
pub mod healthcheck;
pub mod pacing;
pub mod parked;
pub mod provision;
pub mod publish;
pub mod retention;
pub mod rotate;
pub mod status;
pub mod tenancy;
