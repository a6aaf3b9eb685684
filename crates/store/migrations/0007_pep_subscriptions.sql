-- Outpost schema, version 7: explicit subscriptions to personal eventing nodes (XEP-0163
-- §8, XEP-0060 §6.1): who follows a node without a presence subscription to its owner
-- (an OMEMO correspondent, say). `jid` is the subscriber's address as it subscribed, bare
-- or full, here or on another server.

CREATE TABLE pep_subscriptions (
    owner TEXT NOT NULL,
    node  TEXT NOT NULL,
    jid   TEXT NOT NULL,
    PRIMARY KEY (owner, node, jid),
    FOREIGN KEY (owner, node) REFERENCES pep_nodes (owner, node) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;
