-- The outbox stops copying the event body when it is already stored: an event that is the
-- recorded outcome of a message key (every created event, every keyed failure, in-window
-- duplicates) is referenced by (outcome_network_id, outcome_key, event_id) and read from
-- intake_outcomes.event when published. Only events with no outcome row of their own (keyless
-- failures, idempotency_key_reused, re-publications of an earlier transaction's outcome) keep
-- their body inline. Each event is then written once instead of twice, and the relay's lease
-- and published_at updates rewrite a small row instead of the whole body (docs/benchmarks.md).
--
-- Rows written before this migration keep their body and are published as before. An outcome
-- row that an unpublished outbox row still needs is never deleted without first copying its
-- event into that row (replay's forget-failed, retention).

ALTER TABLE outbox
    ALTER COLUMN body DROP NOT NULL,
    ADD COLUMN outcome_network_id bigint,
    ADD COLUMN outcome_key text,
    ADD CONSTRAINT outbox_body_or_outcome CHECK (
        (body IS NULL) = (outcome_key IS NOT NULL)
        AND (outcome_key IS NULL) = (outcome_network_id IS NULL));

-- What each outbox row publishes, whichever way its body is stored: for operators and tests.
CREATE VIEW outbox_events AS
SELECT o.id, o.event_id, o.routing_key,
       COALESCE(o.body, i.event) AS body,
       o.correlation_id, o.created_at, o.lease_until, o.attempts, o.published_at
  FROM outbox o
  LEFT JOIN intake_outcomes i
         ON i.network_id = o.outcome_network_id
        AND i.message_key = o.outcome_key
        AND i.event_id = o.event_id;
