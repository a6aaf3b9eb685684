-- Outpost's PostgreSQL schema, version 3: the message archive (XEP-0313) and its
-- preferences (XEP-0441). One row per message, shared by the archives of its two ends
-- (`in_sender`, `in_recipient`); `id` is given by the server (see the SQLite schema's
-- 0003_archive.sql for the whole story).
CREATE TABLE archive (
    id           BIGINT  NOT NULL PRIMARY KEY,
    sender       TEXT COLLATE "C" NOT NULL,
    recipient    TEXT COLLATE "C" NOT NULL,
    in_sender    BOOLEAN NOT NULL,
    in_recipient BOOLEAN NOT NULL,
    stanza       TEXT    NOT NULL
);

-- Each archive is read in id order from one of these partial indexes.
CREATE INDEX archive_by_sender ON archive (sender, id) WHERE in_sender;
CREATE INDEX archive_by_recipient ON archive (recipient, id) WHERE in_recipient;

-- Archiving preferences (XEP-0441): absent means the server's default ('always').
CREATE TABLE archive_prefs (
    owner        TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES accounts (jid) ON DELETE CASCADE,
    default_mode TEXT NOT NULL CHECK (default_mode IN ('always', 'never', 'roster'))
);

CREATE TABLE archive_prefs_jids (
    owner  TEXT COLLATE "C" NOT NULL REFERENCES archive_prefs (owner) ON DELETE CASCADE,
    jid    TEXT COLLATE "C" NOT NULL,
    always BOOLEAN NOT NULL,
    PRIMARY KEY (owner, jid)
);
