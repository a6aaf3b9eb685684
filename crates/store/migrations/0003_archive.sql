-- Outpost schema, version 3: the message archive (XEP-0313) and its preferences.
--
-- One row per archived message, shared by the archives of its two ends: a message between
-- two local users is written once and appears in both archives (`in_sender`,
-- `in_recipient`); one to or from another domain is in the local end's archive only. A
-- group chat message is in its room's archive (`recipient` is the room, `sender` the
-- occupant JID). `id` is given by the server before the write: it is the XEP-0359
-- stanza-id of the message in both archives, and it grows with the server's clock (the
-- time of receipt in its high bits), so a time range is an id range.
CREATE TABLE archive (
    id           INTEGER NOT NULL PRIMARY KEY,
    sender       TEXT    NOT NULL,
    recipient    TEXT    NOT NULL,
    in_sender    INTEGER NOT NULL CHECK (in_sender IN (0, 1)),
    in_recipient INTEGER NOT NULL CHECK (in_recipient IN (0, 1)),
    stanza       TEXT    NOT NULL
) STRICT;

-- Each archive is read in id order from one of these; a row is indexed only for the ends
-- whose archive holds it. A query `with` a contact reads the owner's rows in id order and
-- keeps the contact's: no third index on every write for a filter clients use seldom.
CREATE INDEX archive_by_sender ON archive (sender, id) WHERE in_sender = 1;
CREATE INDEX archive_by_recipient ON archive (recipient, id) WHERE in_recipient = 1;

-- Archiving preferences (XEP-0441): absent means the server's default ('always').
CREATE TABLE archive_prefs (
    owner        TEXT NOT NULL PRIMARY KEY REFERENCES accounts (jid) ON DELETE CASCADE,
    default_mode TEXT NOT NULL CHECK (default_mode IN ('always', 'never', 'roster'))
) STRICT;

CREATE TABLE archive_prefs_jids (
    owner  TEXT    NOT NULL REFERENCES archive_prefs (owner) ON DELETE CASCADE,
    jid    TEXT    NOT NULL,
    always INTEGER NOT NULL CHECK (always IN (0, 1)),
    PRIMARY KEY (owner, jid)
) STRICT, WITHOUT ROWID;
