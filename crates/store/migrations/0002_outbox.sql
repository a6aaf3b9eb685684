-- Outpost schema, version 2: the server-to-server outbox and the stanza ids already
-- received from other servers.
--
-- None of these rows belongs to an account: a stanza for a remote domain stays queued
-- when its sender's account is removed, so nothing here references accounts(jid).

-- Stanzas waiting for a remote domain's acknowledgement (XEP-0198), one queue per link
-- (local_domain, remote_domain). AUTOINCREMENT so that an id is never reused, as for the
-- offline queue: an acknowledgement "up to id N" must never remove a later stanza.
CREATE TABLE outbox (
    id            INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    local_domain  TEXT    NOT NULL,
    remote_domain TEXT    NOT NULL,
    stanza        TEXT    NOT NULL,
    queued_at_ms  INTEGER NOT NULL
) STRICT;

-- Peeking, acknowledging and the quota all read one link in id order.
CREATE INDEX outbox_by_link ON outbox (remote_domain, local_domain, id);
-- Expiry looks for the oldest stanzas on any link.
CREATE INDEX outbox_by_age ON outbox (queued_at_ms);

-- When each link's peer last acknowledged a stanza, kept after its queue empties so that
-- operators can see it.
CREATE TABLE outbox_deliveries (
    remote_domain    TEXT    NOT NULL,
    local_domain     TEXT    NOT NULL,
    last_delivery_ms INTEGER NOT NULL,
    PRIMARY KEY (remote_domain, local_domain)
) STRICT, WITHOUT ROWID;

-- Stanza ids already received (XEP-0359), so that a stanza a peer sends again after a
-- lost acknowledgement is recognised. `origin` is the scope the id is unique in.
CREATE TABLE seen_stanza_ids (
    origin     TEXT    NOT NULL,
    stanza_id  TEXT    NOT NULL,
    seen_at_ms INTEGER NOT NULL,
    PRIMARY KEY (origin, stanza_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX seen_stanza_ids_by_age ON seen_stanza_ids (seen_at_ms);
