-- Networks, their agencies (groups), agents, API keys and counties.
-- Every row below a network carries network_id so that queries are scoped by it directly
-- and composite foreign keys keep a row from pointing into another network.

CREATE TABLE networks (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE groups (
    id          bigserial PRIMARY KEY,
    network_id  bigint NOT NULL REFERENCES networks(id),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (network_id, name),
    UNIQUE (id, network_id)
);

CREATE TABLE agents (
    id          bigserial PRIMARY KEY,
    network_id  bigint NOT NULL,
    group_id    bigint NOT NULL,
    name        text NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (group_id, network_id) REFERENCES groups(id, network_id),
    UNIQUE (id, network_id)
);

-- Only the SHA-256 of a token is stored: a database leak does not yield usable tokens.
CREATE TABLE api_keys (
    id          bigserial PRIMARY KEY,
    agent_id    bigint NOT NULL,
    network_id  bigint NOT NULL,
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    label       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    FOREIGN KEY (agent_id, network_id) REFERENCES agents(id, network_id)
);

CREATE TABLE counties (
    id          bigserial PRIMARY KEY,
    network_id  bigint NOT NULL REFERENCES networks(id),
    name        text NOT NULL,
    state       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (network_id, name, state),
    UNIQUE (id, network_id)
);
