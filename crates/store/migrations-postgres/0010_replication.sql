-- Outpost's PostgreSQL schema, version 10: replication between a site and its hub, as in
-- SQLite's `0009_replication.sql` and `0010_replication_merge.sql` (see ARCHITECTURE.md,
-- "Sites and hub"). The log's triggers exist only while replication is on
-- (`postgres/replication.rs` makes and drops them); each takes the replication lock (an
-- advisory lock every write transaction of a replicating store takes first), so log
-- positions and clock stamps are given out in commit order, as under SQLite's one writer.

CREATE TABLE repl_settings (
    id        INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    -- Whether the site's log is kept, and whether this is a hub logging its own writes
    -- for its sites' users.
    active    BOOLEAN NOT NULL,
    hub       BOOLEAN NOT NULL,
    -- Names the site's log: a new one means the hub needs a snapshot.
    epoch     TEXT    NOT NULL,
    -- The last hybrid logical clock stamp given out (ms << 16 | counter).
    clock     BIGINT  NOT NULL,
    -- The last position the hub acknowledged, and when.
    acked     BIGINT  NOT NULL,
    synced_ms BIGINT  NOT NULL,
    -- Records from the other side that lost to a later write here.
    conflicts BIGINT  NOT NULL
);

INSERT INTO repl_settings (id, active, hub, epoch, clock, acked, synced_ms, conflicts)
VALUES (1, false, false, '', 0, 0, 0, 0);

CREATE TABLE repl_log (
    seq   BIGSERIAL NOT NULL PRIMARY KEY,
    kind  TEXT COLLATE "C" NOT NULL,
    owner TEXT COLLATE "C" NOT NULL,
    key   TEXT COLLATE "C" NOT NULL,
    sub   TEXT COLLATE "C" NOT NULL,
    stamp BIGINT NOT NULL
);

-- On a hub: where each site's replication stands.
CREATE TABLE repl_origins (
    domain    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    epoch     TEXT   NOT NULL,
    position  BIGINT NOT NULL,
    head      BIGINT NOT NULL,
    records   BIGINT NOT NULL,
    snapshots BIGINT NOT NULL,
    synced_ms BIGINT NOT NULL,
    stamp     BIGINT NOT NULL,
    conflicts BIGINT NOT NULL
);

-- The stamp of each key's last write, kept after the key is deleted (a tombstone).
CREATE TABLE repl_versions (
    kind  TEXT COLLATE "C" NOT NULL,
    owner TEXT COLLATE "C" NOT NULL,
    key   TEXT COLLATE "C" NOT NULL,
    sub   TEXT COLLATE "C" NOT NULL,
    stamp BIGINT NOT NULL,
    PRIMARY KEY (kind, owner, key, sub)
);

-- On a hub: a site's offline message kept for its user, under the site's id (NULL for the
-- hub's own).
ALTER TABLE offline ADD COLUMN origin_key TEXT COLLATE "C";
CREATE UNIQUE INDEX offline_by_origin ON offline (owner, origin_key) WHERE origin_key IS NOT NULL;

-- Applying a batch may write what an account owns before the account itself (one removed
-- and made again within the batch), as SQLite's deferred foreign keys allow: the foreign
-- keys become deferrable, still checked at once everywhere else (INITIALLY IMMEDIATE);
-- applying defers them to the commit. Their ON DELETE CASCADE actions stay immediate.
DO $$
DECLARE c RECORD;
BEGIN
    FOR c IN SELECT conrelid::regclass AS tab, conname FROM pg_constraint
             WHERE contype = 'f' AND connamespace = current_schema()::regnamespace LOOP
        EXECUTE format('ALTER TABLE %s ALTER CONSTRAINT %I DEFERRABLE INITIALLY IMMEDIATE',
                       c.tab, c.conname);
    END LOOP;
END $$;
