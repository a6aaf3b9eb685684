-- Outpost's PostgreSQL schema, version 9: the nodes of a cluster serving the same domains,
-- each registered under its node id with a lease it renews, and the leases on what one
-- node at a time owns (a federation link, a domain's rooms). A lease that ends frees its
-- name for another node; times are the nodes' clocks, in Unix milliseconds.

CREATE TABLE cluster_nodes (
    node_id        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    epoch          TEXT NOT NULL,
    address        TEXT NOT NULL,
    started_ms     BIGINT NOT NULL,
    lease_until_ms BIGINT NOT NULL,
    sessions       BIGINT NOT NULL
);

CREATE TABLE cluster_leases (
    name     TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    node_id  TEXT COLLATE "C" NOT NULL,
    epoch    TEXT NOT NULL,
    until_ms BIGINT NOT NULL
);
