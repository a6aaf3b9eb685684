-- Outpost schema, version 4: personal eventing (XEP-0163) nodes and items, and private
-- XML storage (XEP-0049), per account.

CREATE TABLE pep_nodes (
    owner          TEXT    NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    node           TEXT    NOT NULL,
    access_model   TEXT    NOT NULL
        CHECK (access_model IN ('presence', 'open', 'roster', 'whitelist')),
    max_items      INTEGER NOT NULL CHECK (max_items >= 1),
    send_last      TEXT    NOT NULL CHECK (send_last IN ('on_sub_and_presence', 'on_sub', 'never')),
    notify_retract INTEGER NOT NULL CHECK (notify_retract IN (0, 1)),
    title          TEXT,
    PRIMARY KEY (owner, node)
) STRICT, WITHOUT ROWID;

-- Items of a node, in the order they were (last) published: `seq` only grows, so the
-- newest is the highest and the oldest goes first when the node is over max_items.
CREATE TABLE pep_items (
    seq     INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    owner   TEXT    NOT NULL,
    node    TEXT    NOT NULL,
    item_id TEXT    NOT NULL,
    payload TEXT    NOT NULL,
    UNIQUE (owner, node, item_id),
    FOREIGN KEY (owner, node) REFERENCES pep_nodes (owner, node) ON DELETE CASCADE
) STRICT;

CREATE INDEX pep_items_by_node ON pep_items (owner, node, seq);

CREATE TABLE private_xml (
    owner TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    ns    TEXT NOT NULL,
    xml   TEXT NOT NULL,
    PRIMARY KEY (owner, ns)
) STRICT, WITHOUT ROWID;
