-- Outpost's PostgreSQL schema, version 1: accounts and what they own in the directory
-- (rosters, subscription requests, the offline queue, vCards, block lists).
--
-- The PostgreSQL schema has numbered migrations of its own (`postgres/mod.rs` applies
-- them); it holds what the SQLite schema holds, less replication, which this backend does
-- not do. Text that is sorted or compared as a key is `COLLATE "C"`: byte order, as in
-- SQLite, whatever the database's locale. Every table a user owns references
-- accounts(jid) with ON DELETE CASCADE.

CREATE TABLE accounts (
    jid               TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    sha1_salt         BYTEA  NOT NULL,
    sha1_iterations   BIGINT NOT NULL,
    sha1_stored_key   BYTEA  NOT NULL,
    sha1_server_key   BYTEA  NOT NULL,
    sha256_salt       BYTEA  NOT NULL,
    sha256_iterations BIGINT NOT NULL,
    sha256_stored_key BYTEA  NOT NULL,
    sha256_server_key BYTEA  NOT NULL
);

-- XEP-0237 roster version per owner; absent means 0.
CREATE TABLE roster_versions (
    owner   TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES accounts (jid) ON DELETE CASCADE,
    version BIGINT NOT NULL
);

CREATE TABLE roster_items (
    owner        TEXT COLLATE "C" NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    contact      TEXT COLLATE "C" NOT NULL,
    name         TEXT,
    subscription TEXT    NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
    ask          BOOLEAN NOT NULL,
    approved     BOOLEAN NOT NULL,
    PRIMARY KEY (owner, contact)
);

-- One row per (item, group), as in SQLite.
CREATE TABLE roster_groups (
    owner   TEXT COLLATE "C" NOT NULL,
    contact TEXT COLLATE "C" NOT NULL,
    name    TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (owner, contact, name),
    FOREIGN KEY (owner, contact) REFERENCES roster_items (owner, contact) ON DELETE CASCADE
);

-- Pending subscription requests (RFC 6121 §3.1.3). `id` keeps arrival order; a replaced
-- request keeps its place.
CREATE TABLE subscription_requests (
    id       BIGSERIAL NOT NULL PRIMARY KEY,
    owner    TEXT COLLATE "C" NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    from_jid TEXT COLLATE "C" NOT NULL,
    stanza   TEXT NOT NULL,
    UNIQUE (owner, from_jid)
);

CREATE INDEX subscription_requests_by_owner ON subscription_requests (owner, id);

-- The offline queue (XEP-0160). A sequence never gives an id twice, even after the highest
-- row was deleted; writers take ids under a lock held until they commit (see
-- `postgres/mod.rs`), so ids also become visible in the order they grow.
CREATE TABLE offline (
    id     BIGSERIAL NOT NULL PRIMARY KEY,
    owner  TEXT COLLATE "C" NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    stanza TEXT NOT NULL
);

CREATE INDEX offline_by_owner ON offline (owner, id);

CREATE TABLE vcards (
    owner TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES accounts (jid) ON DELETE CASCADE,
    vcard TEXT NOT NULL
);

CREATE TABLE blocklist (
    owner TEXT COLLATE "C" NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    jid   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (owner, jid)
);
