-- Outpost schema, version 1.
--
-- Every table a user owns references accounts(jid) with ON DELETE CASCADE, so the
-- database itself refuses rows for unknown users; remove_account still deletes each
-- table explicitly so that it does not depend on the foreign_keys pragma being on.
-- Tables are STRICT so that a wrong bind type is an error, not a silent conversion.

CREATE TABLE accounts (
    jid              TEXT    NOT NULL PRIMARY KEY,
    sha1_salt        BLOB    NOT NULL,
    sha1_iterations  INTEGER NOT NULL,
    sha1_stored_key  BLOB    NOT NULL,
    sha1_server_key  BLOB    NOT NULL,
    sha256_salt       BLOB    NOT NULL,
    sha256_iterations INTEGER NOT NULL,
    sha256_stored_key BLOB    NOT NULL,
    sha256_server_key BLOB    NOT NULL
) STRICT;

-- XEP-0237 roster version per owner; absent means 0.
CREATE TABLE roster_versions (
    owner   TEXT    NOT NULL PRIMARY KEY REFERENCES accounts (jid) ON DELETE CASCADE,
    version INTEGER NOT NULL
) STRICT;

CREATE TABLE roster_items (
    owner        TEXT    NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    contact      TEXT    NOT NULL,
    name         TEXT,
    subscription TEXT    NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
    ask          INTEGER NOT NULL CHECK (ask IN (0, 1)),
    approved     INTEGER NOT NULL CHECK (approved IN (0, 1)),
    PRIMARY KEY (owner, contact)
) STRICT, WITHOUT ROWID;

-- One row per (item, group): group names may hold any character, so they get rows of
-- their own rather than a joined string that would need escaping.
CREATE TABLE roster_groups (
    owner   TEXT NOT NULL,
    contact TEXT NOT NULL,
    name    TEXT NOT NULL,
    PRIMARY KEY (owner, contact, name),
    FOREIGN KEY (owner, contact) REFERENCES roster_items (owner, contact) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;

-- Pending subscription requests (RFC 6121 §3.1.3). The rowid keeps arrival order; a
-- replaced request keeps its place.
CREATE TABLE subscription_requests (
    id       INTEGER NOT NULL PRIMARY KEY,
    owner    TEXT    NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    from_jid TEXT    NOT NULL,
    stanza   TEXT    NOT NULL,
    UNIQUE (owner, from_jid)
) STRICT;

CREATE INDEX subscription_requests_by_owner ON subscription_requests (owner, id);

-- The offline queue (XEP-0160). AUTOINCREMENT so that an id is never reused, even after
-- the highest one was deleted: a session acknowledging "up to id N" must never delete a
-- message that arrived later.
CREATE TABLE offline (
    id     INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    owner  TEXT    NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    stanza TEXT    NOT NULL
) STRICT;

CREATE INDEX offline_by_owner ON offline (owner, id);

CREATE TABLE vcards (
    owner TEXT NOT NULL PRIMARY KEY REFERENCES accounts (jid) ON DELETE CASCADE,
    vcard TEXT NOT NULL
) STRICT;

CREATE TABLE blocklist (
    owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    jid   TEXT NOT NULL,
    PRIMARY KEY (owner, jid)
) STRICT, WITHOUT ROWID;
