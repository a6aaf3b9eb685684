-- Outpost schema, version 11: bearer tokens of the HTTP API. A token is handed to the
-- client once, at login; only its SHA-256 is kept. `id` (the first bytes of that hash, in
-- hex) names it in listings and revocations without being usable as a token. Tokens are
-- the account's: they go with it, and with a password change. They are not replicated: a
-- user standing in at a hub logs in there.

CREATE TABLE api_tokens (
    id         TEXT    NOT NULL PRIMARY KEY,
    hash       BLOB    NOT NULL UNIQUE,
    owner      TEXT    NOT NULL,
    label      TEXT,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
) STRICT;

CREATE INDEX api_tokens_by_owner ON api_tokens (owner);
CREATE INDEX api_tokens_by_expiry ON api_tokens (expires_ms);
