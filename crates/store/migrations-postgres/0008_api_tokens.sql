-- Outpost's PostgreSQL schema, version 8: bearer tokens of the HTTP API, kept as their
-- SHA-256 only. They go with their account and with a password change.

CREATE TABLE api_tokens (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    hash       BYTEA  NOT NULL UNIQUE,
    owner      TEXT COLLATE "C" NOT NULL,
    label      TEXT,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);

CREATE INDEX api_tokens_by_owner ON api_tokens (owner);
CREATE INDEX api_tokens_by_expiry ON api_tokens (expires_ms);
