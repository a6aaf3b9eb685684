-- Outpost's PostgreSQL schema, version 4: personal eventing (XEP-0163) nodes, items and
-- explicit subscriptions, and private XML storage (XEP-0049), per account.

CREATE TABLE pep_nodes (
    owner          TEXT COLLATE "C" NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    node           TEXT COLLATE "C" NOT NULL,
    access_model   TEXT    NOT NULL
        CHECK (access_model IN ('presence', 'open', 'roster', 'whitelist')),
    max_items      BIGINT  NOT NULL CHECK (max_items >= 1),
    send_last      TEXT    NOT NULL CHECK (send_last IN ('on_sub_and_presence', 'on_sub', 'never')),
    notify_retract BOOLEAN NOT NULL,
    title          TEXT,
    PRIMARY KEY (owner, node)
);

-- Items in the order they were (last) published: `seq` only grows.
CREATE TABLE pep_items (
    seq     BIGSERIAL NOT NULL PRIMARY KEY,
    owner   TEXT COLLATE "C" NOT NULL,
    node    TEXT COLLATE "C" NOT NULL,
    item_id TEXT COLLATE "C" NOT NULL,
    payload TEXT NOT NULL,
    UNIQUE (owner, node, item_id),
    FOREIGN KEY (owner, node) REFERENCES pep_nodes (owner, node) ON DELETE CASCADE
);

CREATE INDEX pep_items_by_node ON pep_items (owner, node, seq);

-- Who follows a node without a presence subscription to its owner (XEP-0060 §6.1).
CREATE TABLE pep_subscriptions (
    owner TEXT COLLATE "C" NOT NULL,
    node  TEXT COLLATE "C" NOT NULL,
    jid   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (owner, node, jid),
    FOREIGN KEY (owner, node) REFERENCES pep_nodes (owner, node) ON DELETE CASCADE
);

CREATE TABLE private_xml (
    owner TEXT COLLATE "C" NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    ns    TEXT COLLATE "C" NOT NULL,
    xml   TEXT NOT NULL,
    PRIMARY KEY (owner, ns)
);
