-- Possible-duplicate clients (docs/duplicates.md).
--
-- Each network chooses what an intake that matches an existing client does:
--   off     no matching;
--   flag    the case is created and the pairs are recorded for an administrator (default);
--   reject  the intake fails `possible_duplicate` unless its sender overrides;
--   link    no new case: the key's outcome is the existing case (`case.matched`).
ALTER TABLE networks
    ADD COLUMN duplicate_policy text NOT NULL DEFAULT 'flag'
        CHECK (duplicate_policy IN ('off', 'flag', 'reject', 'link'));

-- The matching keys of a case, computed by the service from the normalized names, date of
-- birth and street address (src/intake/matching): 64-bit digests, so that the indexes stay
-- small; exact SSN matching uses the existing ss_number_hmac. NULL when the case has no usable
-- value (no date of birth, a placeholder date, no street address). Cases written before this
-- migration have none until `case-intake duplicates reindex` computes them.
ALTER TABLE cases
    ADD COLUMN match_name    bigint,
    ADD COLUMN match_address bigint;
-- Each index ends with the id, so that a lookup reads a key's oldest cases in order and stops
-- after a few (`store::matching::candidates`), however many cases share the key. The SSN's
-- index is rebuilt the same way.
CREATE INDEX cases_match_name ON cases (network_id, match_name, id) WHERE match_name IS NOT NULL;
CREATE INDEX cases_match_address ON cases (network_id, match_address, id)
    WHERE match_address IS NOT NULL;
DROP INDEX IF EXISTS cases_ss_number_hmac;
CREATE INDEX cases_ss_number_hmac ON cases (network_id, ss_number_hmac, id)
    WHERE ss_number_hmac IS NOT NULL;

-- A key linked to an existing case has the outcome 'matched', with that case's id.
ALTER TABLE intake_outcomes DROP CONSTRAINT IF EXISTS intake_outcomes_outcome_check;
ALTER TABLE intake_outcomes DROP CONSTRAINT IF EXISTS intake_outcomes_check;
ALTER TABLE intake_outcomes
    ADD CONSTRAINT intake_outcomes_outcome_kind
        CHECK (outcome IN ('created', 'failed', 'matched')),
    ADD CONSTRAINT intake_outcomes_case_iff_success
        CHECK (outcome IS NULL OR (outcome IN ('created', 'matched')) = (case_id IS NOT NULL));

-- An operator's edit whose attempt was linked to an existing case is audited as such.
ALTER TABLE failed_intake_edits DROP CONSTRAINT IF EXISTS failed_intake_edits_outcome_check;
ALTER TABLE failed_intake_edits
    ADD CONSTRAINT failed_intake_edits_outcome_kind
        CHECK (outcome IN ('created', 'failed', 'duplicate', 'matched'));

-- Pairs flagged at intake: the case an intake created and an existing case it may duplicate,
-- with the rules that matched and their score. Resolved by an administrator
-- (`case-intake duplicates dismiss`); `overridden` marks a case its sender created anyway
-- past a `reject` policy (CharityTracker flags such ignored warnings for administrators).
CREATE TABLE possible_duplicates (
    id                 bigserial PRIMARY KEY,
    network_id         bigint NOT NULL REFERENCES networks(id),
    case_id            bigint NOT NULL REFERENCES cases(id),
    candidate_case_id  bigint NOT NULL REFERENCES cases(id),
    rules              text[] NOT NULL CHECK (cardinality(rules) > 0),
    score              real NOT NULL CHECK (score > 0 AND score <= 1),
    overridden         boolean NOT NULL DEFAULT false,
    message_key        text,
    event_id           uuid NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    resolution         text CHECK (resolution IN ('dismissed')),
    resolved_at        timestamptz,
    resolved_by        text,
    resolution_reason  text,
    UNIQUE (case_id, candidate_case_id),
    CHECK (case_id <> candidate_case_id),
    CHECK ((resolved_at IS NULL) = (resolution IS NULL))
);
CREATE INDEX possible_duplicates_open ON possible_duplicates (network_id, id)
    WHERE resolved_at IS NULL;
CREATE INDEX possible_duplicates_candidate ON possible_duplicates (candidate_case_id);
