-- Outpost's PostgreSQL schema, version 6: push registrations (XEP-0357).

CREATE TABLE push_registrations (
    owner   TEXT COLLATE "C" NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    service TEXT COLLATE "C" NOT NULL,
    node    TEXT COLLATE "C" NOT NULL,
    options TEXT NOT NULL,
    PRIMARY KEY (owner, service, node)
);
