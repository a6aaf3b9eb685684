-- Outpost schema, version 5: multi-user chat rooms (XEP-0045): each room's configuration
-- (and subject) as key-value pairs, and its users' affiliations. A room's messages are in
-- the archive, under the room's JID.

CREATE TABLE muc_rooms (
    jid        TEXT    NOT NULL PRIMARY KEY,
    created_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE muc_room_config (
    room  TEXT NOT NULL REFERENCES muc_rooms (jid) ON DELETE CASCADE,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (room, key)
) STRICT, WITHOUT ROWID;

CREATE TABLE muc_affiliations (
    room        TEXT NOT NULL REFERENCES muc_rooms (jid) ON DELETE CASCADE,
    jid         TEXT NOT NULL,
    affiliation TEXT NOT NULL CHECK (affiliation IN ('owner', 'admin', 'member', 'outcast')),
    PRIMARY KEY (room, jid)
) STRICT, WITHOUT ROWID;
