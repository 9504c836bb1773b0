-- The outbox holds only events still to publish. The relay deletes a row in the same
-- transaction that publishes it: it deletes the rows it takes (their row locks keep other
-- relays off them), publishes with confirms, and commits only after the confirms, so a crash
-- or a lost connection rolls the delete back and the rows are published again (at least
-- once; consumers dedup by event id). One write and one commit per batch, where the lease
-- update and the published_at update were two of each, and no published rows for every scan
-- to step over (docs/benchmarks.md).
--
-- An event that a broker nacks, returns or does not confirm is put back in the same
-- transaction with `retry_at` (the column that was `lease_until`) set to a growing pause.
-- Published events stay readable where they were always kept: created and keyed failed
-- events in intake_outcomes, failures in failed_intakes.
--
-- Workers of an earlier version use published_at: stop them before this migration runs.

DELETE FROM outbox WHERE published_at IS NOT NULL;

DROP VIEW outbox_events;
DROP INDEX outbox_published;
DROP INDEX outbox_pending;
ALTER TABLE outbox DROP COLUMN published_at;
ALTER TABLE outbox RENAME COLUMN lease_until TO retry_at;
COMMENT ON COLUMN outbox.retry_at IS
    'not published before this time: set after a nack, return or missing confirm';
COMMENT ON COLUMN outbox.attempts IS 'publications that were not confirmed';

-- What each outbox row publishes, whichever way its body is stored: for operators and tests.
CREATE VIEW outbox_events AS
SELECT o.id, o.event_id, o.routing_key,
       COALESCE(o.body, i.event) AS body,
       o.correlation_id, o.created_at, o.retry_at, o.attempts
  FROM outbox o
  LEFT JOIN intake_outcomes i
         ON i.network_id = o.outcome_network_id
        AND i.message_key = o.outcome_key
        AND i.event_id = o.event_id;
