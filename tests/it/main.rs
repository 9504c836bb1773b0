//! The integration tests, as one test binary: each module is one area of the service, tested
//! through the real PostgreSQL and RabbitMQ (and the built `case-intake` binary where an
//! operator or a worker process is what is under test). One binary links the service, sqlx,
//! lapin and axum once instead of once per file; `cargo test --test it MODULE::` runs one area.

mod admin_cli;
mod architecture;
mod backlog;
mod cli;
mod contract;
mod db_socket;
mod decode_props;
mod deploy_files;
mod duplicates;
mod duplicates_cli;
mod end_to_end;
mod endpoint_failover;
mod endpoints;
mod envelope;
mod failed_cli;
mod failed_edit;
mod failed_groups;
mod failover_errors;
mod failures;
mod http;
mod hygiene;
mod observability;
mod parked;
mod parking;
mod pipeline;
mod privacy;
mod publish;
mod quorum;
mod relay;
mod replay_race;
mod resend;
mod status;
