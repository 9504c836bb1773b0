//! The ground every layer stands on: settings, metrics (with the process's own in `process`),
//! broker endpoints (`endpoints`), PostgreSQL connections (`db`, `nodelay`), the classes of
//! database and broker errors (`classify`), retry backoff, thread stack sizes, log throttling
//! and redaction. Calls nothing above it.

pub mod backoff;
pub mod classify;
pub mod db;
pub mod endpoints;
pub mod metrics;
pub mod nodelay;
pub mod process;
pub mod redact;
pub mod settings;
pub mod stack;
pub mod throttle;
