-- Households and cases. The household invariant lives in the schema itself:
--   * households.head_case_id is NOT NULL: a household exists only with a head;
--   * the composite FK (head_case_id, id, head_flag) -> cases(id, household_id, head_of_household)
--     makes the head one of the household's own cases, and one whose head_of_household is true;
--   * the partial unique index allows at most one case with head_of_household per household.
-- Together: every household has exactly one head, one of its own cases. The FKs are deferred
-- because a new household and its first case reference each other.

CREATE TABLE households (
    id            bigserial PRIMARY KEY,
    network_id    bigint NOT NULL REFERENCES networks(id),
    head_case_id  bigint NOT NULL,
    head_flag     boolean NOT NULL DEFAULT true CHECK (head_flag),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, network_id)
);

CREATE TABLE cases (
    id                  bigserial PRIMARY KEY,
    network_id          bigint NOT NULL,
    household_id        bigint NOT NULL,
    first_name          text NOT NULL,
    middle_name         text,
    last_name           text NOT NULL,
    suffix              text,
    nickname            text,
    date_of_birth       date,
    email               text,
    head_of_household   boolean NOT NULL,
    mailing_address     text,
    mailing_apt_number  text,
    mailing_city        text,
    mailing_state       text,
    mailing_zip_code    text,
    ss_number           text CHECK (ss_number ~ '^[0-9]{9}$'),
    street_address      text,
    street_apt_number   text,
    street_city         text,
    street_state        text,
    street_zip_code     text,
    street_county       bigint,
    yearly_expenses     numeric(14, 2) CHECK (yearly_expenses >= 0),
    yearly_income       numeric(14, 2) CHECK (yearly_income >= 0),
    deceased            boolean NOT NULL DEFAULT false,
    private             boolean NOT NULL DEFAULT false,
    roi_exp_date        date,
    entry_agent         bigint NOT NULL,
    mod_agent           bigint NOT NULL,
    "group"             bigint NOT NULL,
    import_id           text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (household_id, network_id) REFERENCES households(id, network_id)
        DEFERRABLE INITIALLY DEFERRED,
    FOREIGN KEY (street_county, network_id) REFERENCES counties(id, network_id),
    FOREIGN KEY (entry_agent, network_id) REFERENCES agents(id, network_id),
    FOREIGN KEY (mod_agent, network_id) REFERENCES agents(id, network_id),
    FOREIGN KEY ("group", network_id) REFERENCES groups(id, network_id),
    UNIQUE (id, household_id, head_of_household)
);

CREATE UNIQUE INDEX cases_one_head_per_household
    ON cases (household_id) WHERE head_of_household;
CREATE INDEX cases_household ON cases (household_id);

ALTER TABLE households
    ADD CONSTRAINT households_head_is_own_case
    FOREIGN KEY (head_case_id, id, head_flag)
    REFERENCES cases (id, household_id, head_of_household)
    ON UPDATE NO ACTION
    DEFERRABLE INITIALLY DEFERRED;
