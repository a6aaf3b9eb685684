-- Both sides of a site and its hub may write a user's directory during a partition (the
-- user logged in at the hub); the merge on heal keeps, per key, the write with the later
-- hybrid logical clock stamp (see ARCHITECTURE.md, "Sites and hub", the merge table).
--
-- The stamp of each key's last write, kept after the key is deleted (a tombstone), so that
-- an older write arriving later can neither overwrite a newer one nor bring a deleted key
-- back. A site keeps one for every key of its directory (written by the log's triggers);
-- a hub only for what it wrote itself for a site's users while it stood in for the site.
CREATE TABLE repl_versions (
    kind  TEXT    NOT NULL,
    owner TEXT    NOT NULL,
    key   TEXT    NOT NULL,
    sub   TEXT    NOT NULL,
    stamp INTEGER NOT NULL,
    PRIMARY KEY (kind, owner, key, sub)
) STRICT, WITHOUT ROWID;

-- Set for the length of a transaction that applies records from the other side, so that
-- the triggers do not log them as this side's own writes.
ALTER TABLE repl_settings ADD COLUMN applying INTEGER NOT NULL DEFAULT 0;
-- On a hub: log the writes made for the sites' users (the triggers' hub form).
ALTER TABLE repl_settings ADD COLUMN hub INTEGER NOT NULL DEFAULT 0;
-- Records from the other side that lost to a later write here (for operators).
ALTER TABLE repl_settings ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE repl_origins ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0;

-- On a hub: a site's offline message kept for its user, under the site's id (NULL for the
-- hub's own), so that the site's deletion (delivered there) removes it here, and the hub's
-- (delivered here) can be merged back.
ALTER TABLE offline ADD COLUMN origin_key TEXT;
CREATE UNIQUE INDEX offline_by_origin ON offline (owner, origin_key) WHERE origin_key IS NOT NULL;
