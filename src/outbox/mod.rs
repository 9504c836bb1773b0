//! Getting events out and the broker's shape: the relay publishes the outbox with confirms,
//! and `topology` declares the queues (intake, retry, dead-letter, parking) and the events
//! exchange. May call `store` and `infra`; never the pipeline.

pub mod relay;
pub mod topology;
