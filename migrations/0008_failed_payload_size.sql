-- An oversized body is not stored whole: failed_intakes keeps a bounded prefix (sealed), the
-- size and the SHA-256 of the body as published. payload_bytes is NULL for rows written before.
ALTER TABLE failed_intakes
    ADD COLUMN payload_bytes bigint,
    ADD COLUMN payload_sha256 bytea,
    ADD COLUMN payload_truncated boolean NOT NULL DEFAULT false;
