//! What a window needs besides its intakes: names, limits, the vault, where committed events
//! go, and what an operator's command adds.

use crate::intake::decode::BodyLimits;
use crate::store;

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
    /// The operator on whose behalf a command-line replay or edit runs (recorded as
    /// `resolved_by`); `None` in the worker.
    pub operator: Option<String>,
    /// Set by `case-intake failed edit`: the audit of each operator's edit, by the id of the
    /// failed intake it corrects, written in the window's transaction for the intake whose
    /// replay is [`Resolution::Edited`] and retries that failed intake, once its outcome is
    /// known: an edit is never applied without its audit row nor audited without being
    /// applied. Keyed, as a bulk edit runs many edited intakes in one window. Empty elsewhere.
    pub edit_audits: std::collections::HashMap<i64, store::edits::EditAudit>,
}
