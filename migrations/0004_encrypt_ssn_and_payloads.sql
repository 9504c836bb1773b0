-- SSNs and failed-intake payloads are stored sealed (AES-256-GCM, nonce || ciphertext || tag)
-- with the id of the key that sealed them, so keys can rotate (`case-intake rotate-key`).
-- The HMAC of the SSN's digits allows an exact-SSN match without decryption; the last four
-- digits are kept in clear for display, as events show them.

ALTER TABLE cases DROP COLUMN ss_number;
ALTER TABLE cases
    ADD COLUMN ss_number_sealed bytea,
    ADD COLUMN ss_number_key_id text,
    ADD COLUMN ss_number_hmac   bytea CHECK (length(ss_number_hmac) = 32),
    ADD COLUMN ss_number_last4  text CHECK (ss_number_last4 ~ '^[0-9]{4}$'),
    ADD CONSTRAINT cases_ssn_complete CHECK (
        (ss_number_sealed IS NULL) = (ss_number_key_id IS NULL)
        AND (ss_number_sealed IS NULL) = (ss_number_hmac IS NULL)
        AND (ss_number_sealed IS NULL) = (ss_number_last4 IS NULL));
CREATE INDEX cases_ss_number_hmac ON cases (network_id, ss_number_hmac)
    WHERE ss_number_hmac IS NOT NULL;
CREATE INDEX cases_ss_number_key ON cases (ss_number_key_id) WHERE ss_number_key_id IS NOT NULL;

ALTER TABLE failed_intakes DROP COLUMN payload;
ALTER TABLE failed_intakes
    ADD COLUMN payload_sealed bytea NOT NULL,
    ADD COLUMN payload_key_id text NOT NULL;
CREATE INDEX failed_intakes_payload_key ON failed_intakes (payload_key_id);
