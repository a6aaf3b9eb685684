-- Outpost's PostgreSQL schema, version 2: the server-to-server outbox and the stanza ids
-- already received from other servers. None of these rows belongs to an account.

-- Stanzas waiting for a remote domain's acknowledgement (XEP-0198), one queue per link.
-- Ids come from a sequence, taken under the outbox lock (see `postgres/mod.rs`): never
-- reused, and visible in the order they grow, so "acknowledged up to id N" never covers a
-- stanza that was not yet sent.
CREATE TABLE outbox (
    id            BIGSERIAL NOT NULL PRIMARY KEY,
    local_domain  TEXT COLLATE "C" NOT NULL,
    remote_domain TEXT COLLATE "C" NOT NULL,
    stanza        TEXT   NOT NULL,
    queued_at_ms  BIGINT NOT NULL
);

CREATE INDEX outbox_by_link ON outbox (remote_domain, local_domain, id);
CREATE INDEX outbox_by_age ON outbox (queued_at_ms);

-- When each link's peer last acknowledged a stanza, kept after its queue empties.
CREATE TABLE outbox_deliveries (
    remote_domain    TEXT COLLATE "C" NOT NULL,
    local_domain     TEXT COLLATE "C" NOT NULL,
    last_delivery_ms BIGINT NOT NULL,
    PRIMARY KEY (remote_domain, local_domain)
);

-- Stanza ids already received (XEP-0359); `origin` is the scope the id is unique in.
CREATE TABLE seen_stanza_ids (
    origin     TEXT COLLATE "C" NOT NULL,
    stanza_id  TEXT COLLATE "C" NOT NULL,
    seen_at_ms BIGINT NOT NULL,
    PRIMARY KEY (origin, stanza_id)
);

CREATE INDEX seen_stanza_ids_by_age ON seen_stanza_ids (seen_at_ms);
