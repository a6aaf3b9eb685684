-- Outpost's PostgreSQL schema, version 5: multi-user chat rooms (XEP-0045): each room's
-- configuration as key-value pairs, and its users' affiliations.

CREATE TABLE muc_rooms (
    jid        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    created_ms BIGINT NOT NULL
);

CREATE TABLE muc_room_config (
    room  TEXT COLLATE "C" NOT NULL REFERENCES muc_rooms (jid) ON DELETE CASCADE,
    key   TEXT COLLATE "C" NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (room, key)
);

CREATE TABLE muc_affiliations (
    room        TEXT COLLATE "C" NOT NULL REFERENCES muc_rooms (jid) ON DELETE CASCADE,
    jid         TEXT COLLATE "C" NOT NULL,
    affiliation TEXT NOT NULL CHECK (affiliation IN ('owner', 'admin', 'member', 'outcast')),
    PRIMARY KEY (room, jid)
);
