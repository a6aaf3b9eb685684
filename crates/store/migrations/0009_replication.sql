-- Replication of a site's directory to its hub (see ARCHITECTURE.md, "Sites and hub").
--
-- While replication is active, a trigger on every directory table and on the archive logs
-- the key of each row written or deleted, in the same transaction as the write: the log can
-- never miss a change and never names one that did not commit. The triggers exist only
-- while replication is on (`sqlite/replication.rs` makes and drops them), so a server that
-- does not replicate pays nothing. Each entry carries a hybrid logical clock stamp
-- (milliseconds since the epoch, shifted left 16 bits, plus a counter), taken from
-- `repl_settings.clock` so that stamps grow with the log even across restarts or a clock
-- that steps back. A record shipped to the hub carries the key's current value (or its
-- absence), so replaying an entry twice changes nothing.

CREATE TABLE repl_settings (
    id        INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    -- Whether the log is kept (a site with a hub to replicate to).
    active    INTEGER NOT NULL CHECK (active IN (0, 1)),
    -- Names this log: a new one (replication turned on again, a restored store) means
    -- the hub's position in the old one is meaningless and it needs a snapshot.
    epoch     TEXT    NOT NULL,
    -- The last stamp given out.
    clock     INTEGER NOT NULL,
    -- The last position the hub acknowledged, and when (for operators).
    acked     INTEGER NOT NULL,
    synced_ms INTEGER NOT NULL
) STRICT;

INSERT INTO repl_settings (id, active, epoch, clock, acked, synced_ms) VALUES (1, 0, '', 0, 0, 0);

CREATE TABLE repl_log (
    seq   INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    kind  TEXT    NOT NULL,
    owner TEXT    NOT NULL,
    key   TEXT    NOT NULL,
    sub   TEXT    NOT NULL,
    stamp INTEGER NOT NULL
) STRICT;

-- On a hub: where each site's replication stands.
CREATE TABLE repl_origins (
    domain    TEXT    NOT NULL PRIMARY KEY,
    epoch     TEXT    NOT NULL,
    position  INTEGER NOT NULL,
    -- The site's last log position, as it last said.
    head      INTEGER NOT NULL,
    records   INTEGER NOT NULL,
    snapshots INTEGER NOT NULL,
    synced_ms INTEGER NOT NULL,
    -- The newest stamp in the last batch applied: with synced_ms, how far behind it was.
    stamp     INTEGER NOT NULL
) STRICT;
