-- Outpost schema, version 6: push registrations (XEP-0357): the app servers a user's
-- clients asked to be woken through, with the publish options they gave.

CREATE TABLE push_registrations (
    owner   TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    service TEXT NOT NULL,
    node    TEXT NOT NULL,
    options TEXT NOT NULL,
    PRIMARY KEY (owner, service, node)
) STRICT, WITHOUT ROWID;
