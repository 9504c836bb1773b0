-- Outcomes of intakes (the dedup table), failed intakes kept for retry, and the event outbox.

-- One row per (network, message key): the key is claimed first in the transaction that writes
-- the case and the outbox event, and the outcome columns are filled before that transaction
-- commits, so a committed row always carries its outcome. network_id 0 is the namespace of
-- intakes whose caller could not be authenticated (there is no network to scope them to).
CREATE TABLE intake_outcomes (
    network_id    bigint NOT NULL,
    message_key   text NOT NULL CHECK (length(message_key) BETWEEN 1 AND 255),
    payload_hash  bytea NOT NULL,
    outcome       text CHECK (outcome IN ('created', 'failed')),
    case_id       bigint REFERENCES cases(id),
    error_code    text,
    event_id      uuid,
    event         jsonb,
    routing_key   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (network_id, message_key),
    CHECK (outcome IS NULL OR (outcome = 'created') = (case_id IS NOT NULL)),
    CHECK (outcome IS NULL OR (outcome = 'failed') = (error_code IS NOT NULL)),
    CHECK (outcome IS NULL OR (event_id IS NOT NULL AND event IS NOT NULL AND routing_key IS NOT NULL))
);
CREATE INDEX intake_outcomes_created_at ON intake_outcomes (created_at);

-- Permanently failed intakes, kept with their payload and error so they can be inspected and
-- replayed. token_hash (never the token) lets a replay authenticate as the original caller.
CREATE TABLE failed_intakes (
    id              bigserial PRIMARY KEY,
    network_id      bigint REFERENCES networks(id),
    message_key     text,
    correlation_id  text,
    token_hash      bytea,
    payload         bytea NOT NULL,
    error_code      text NOT NULL,
    error           jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 1,
    event_id        uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz
);
CREATE INDEX failed_intakes_open ON failed_intakes (error_code, created_at) WHERE resolved_at IS NULL;
CREATE INDEX failed_intakes_key ON failed_intakes (network_id, message_key);

-- Events waiting to be published. A row is leased by one relay at a time (lease_until), published
-- with confirms, then stamped published_at and purged after the retention time.
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    event_id        uuid NOT NULL,
    routing_key     text NOT NULL,
    body            jsonb NOT NULL,
    correlation_id  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    published_at    timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
