//! What a window needs besides its intakes: names, limits, the vault and where committed
//! events go; the same for every window of a process. What one intake brings (an operator's
//! name, an edit's audit) travels on its envelope's `Attempt`.

use crate::intake::decode::BodyLimits;

/// What the pipeline needs besides the intakes.
#[derive(Debug, Clone)]
pub struct WindowContext {
    pub source: String,
    pub created_routing_key: String,
    pub failed_routing_key: String,
    pub resolved_routing_key: String,
    pub matched_routing_key: String,
    pub limits: BodyLimits,
    /// Seals SSNs and failed payloads before they are written.
    pub vault: std::sync::Arc<crate::store::crypto::Vault>,
    /// Where a committed window hands its outbox rows to this process's relay (`None` where
    /// no relay runs, as in a command-line replay: a worker's sweep publishes those rows).
    pub handoff: Option<std::sync::Arc<crate::outbox::relay::Handoff>>,
}
