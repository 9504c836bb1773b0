//! What happens to each delivery after its window: the one place that turns a window's result
//! for a message, and the retry count its delivery carries, into ack, retry queue, exhausted
//! failure or hand-back. Pure; the consumer carries the decision out.

use crate::infra::classify::ErrorClass;
use crate::intake::window::Outcome;

/// What happens to one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Committed: ack.
    Done(Outcome),
    /// Transient errors outlasted the in-process retries: go through the delayed retry queue,
    /// published with this retry count (the delivery's, read once here, plus one).
    Retry { count: u32 },
    /// Transient errors outlasted every trip through the retry queue: record the intake as
    /// failed `retries_exhausted` (a window of its own), then ack.
    Exhausted,
    /// Unknown error: hand back to the broker, whose delivery limit bounds this and
    /// dead-letters a message that keeps failing.
    Requeue,
}

/// Decides a delivery's disposition from its window result. `retries` gives the count its
/// delivery carries (trips through the retry queue so far; read only for a transient error,
/// so that a committed window verifies no retry tag), `max_attempts` the bound on them.
/// An outage never reaches here: the consumer holds or hands back the whole window.
pub fn decide(
    result: Result<Outcome, ErrorClass>,
    retries: impl FnOnce() -> u32,
    max_attempts: u32,
) -> Disposition {
    match result {
        Ok(outcome) => Disposition::Done(outcome),
        Err(ErrorClass::Transient) => match retries().saturating_add(1) {
            count if count >= max_attempts => Disposition::Exhausted,
            count => Disposition::Retry { count },
        },
        Err(ErrorClass::Outage | ErrorClass::Unknown) => Disposition::Requeue,
    }
}

/// The disposition of a delivery whose `retries_exhausted` failure could not be recorded:
/// back to the broker, so that its delivery limit, not another trip through the retry queue,
/// bounds what happens next.
pub fn after_exhausted(result: Result<Outcome, ErrorClass>) -> Disposition {
    match result {
        Ok(outcome) => Disposition::Done(outcome),
        Err(_) => Disposition::Requeue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::error::ErrorCode;
    use uuid::Uuid;

    fn created() -> Outcome {
        Outcome::Created {
            case_id: 1,
            household_id: 2,
            event_id: Uuid::nil(),
        }
    }

    #[test]
    fn a_committed_outcome_is_acked_whatever_the_retry_count() {
        for retries in [0, 4, 99] {
            assert_eq!(
                decide(Ok(created()), || retries, 5),
                Disposition::Done(created())
            );
        }
    }

    #[test]
    fn transient_errors_go_through_the_retry_queue_until_the_last_attempt() {
        // (retry count so far, disposition) with 5 attempts in all; a count at the top of its
        // range does not overflow into a fresh retry.
        let cases = [
            (0, Disposition::Retry { count: 1 }),
            (3, Disposition::Retry { count: 4 }),
            (4, Disposition::Exhausted),
            (9, Disposition::Exhausted),
            (u32::MAX, Disposition::Exhausted),
        ];
        for (retries, expected) in cases {
            let got = decide(Err(ErrorClass::Transient), || retries, 5);
            assert_eq!(got, expected, "after {retries} retries");
        }
    }

    #[test]
    fn unknown_errors_are_handed_back_to_the_broker() {
        for class in [ErrorClass::Unknown, ErrorClass::Outage] {
            assert_eq!(
                decide(Err(class), || 0, 5),
                Disposition::Requeue,
                "{class:?}"
            );
        }
    }

    #[test]
    fn an_exhausted_failure_that_cannot_be_recorded_goes_back_to_the_broker() {
        let failed = Outcome::Failed {
            code: ErrorCode::RetriesExhausted,
            event_id: Uuid::nil(),
        };
        assert_eq!(
            after_exhausted(Ok(failed.clone())),
            Disposition::Done(failed)
        );
        for class in [
            ErrorClass::Transient,
            ErrorClass::Outage,
            ErrorClass::Unknown,
        ] {
            assert_eq!(after_exhausted(Err(class)), Disposition::Requeue);
        }
    }
}
