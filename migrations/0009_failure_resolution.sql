-- How each failed intake ended, failures grouped by cause, and the audit of operators' edits.
--
-- A failed intake is resolved by a later attempt under its key (an operator's replay or edit,
-- or the upstream system re-publishing a corrected body: "resent") or by an operator
-- dismissing it. resolved_event_id is the outcome event of the attempt that resolved it (NULL
-- for a dismissal); resolved_by the operator (NULL when the upstream system resent);
-- resolution_reason the dismissal's reason. Rows resolved before this migration were replays.
ALTER TABLE failed_intakes
    ADD COLUMN resolution text CHECK (resolution IN ('replayed', 'resent', 'edited', 'dismissed')),
    ADD COLUMN resolved_by text,
    ADD COLUMN resolution_reason text,
    ADD COLUMN resolved_event_id uuid,
    -- The failing fields, sorted and comma-separated ('' when the error names none): with the
    -- error code, the cause a failure is grouped by.
    ADD COLUMN error_fields text NOT NULL DEFAULT '';

UPDATE failed_intakes SET resolution = 'replayed' WHERE resolved_at IS NOT NULL;
UPDATE failed_intakes
   SET error_fields = COALESCE(
       (SELECT string_agg(k, ',' ORDER BY k)
          FROM jsonb_object_keys(CASE WHEN jsonb_typeof(error -> 'fields') = 'object'
                                      THEN error -> 'fields' ELSE '{}'::jsonb END) AS k), '')
 WHERE error ? 'fields';

ALTER TABLE failed_intakes
    ADD CONSTRAINT failed_intakes_resolution CHECK ((resolved_at IS NULL) = (resolution IS NULL));

-- A key's current failure is the row holding its outcome's event: found by event id.
CREATE INDEX failed_intakes_event ON failed_intakes (event_id);
-- `failed groups` and group selection read open failures by cause.
CREATE INDEX failed_intakes_groups ON failed_intakes (error_code, error_fields, network_id)
    WHERE resolved_at IS NULL;

-- Every operator edit of a failed intake: who, when, which fields (names only, never values:
-- a value may be an SSN), and what the corrected attempt came to. Kept when retention deletes
-- the failed intake it edited.
CREATE TABLE failed_intake_edits (
    id                bigserial PRIMARY KEY,
    failed_intake_id  bigint REFERENCES failed_intakes(id) ON DELETE SET NULL,
    network_id        bigint,
    message_key       text NOT NULL,
    operator          text NOT NULL CHECK (length(operator) BETWEEN 1 AND 200),
    edited_at         timestamptz NOT NULL DEFAULT now(),
    fields_set        text[] NOT NULL,
    fields_unset      text[] NOT NULL,
    body_replaced     boolean NOT NULL,
    outcome           text NOT NULL CHECK (outcome IN ('created', 'failed', 'duplicate')),
    event_id          uuid NOT NULL
);
CREATE INDEX failed_intake_edits_key ON failed_intake_edits (network_id, message_key);
