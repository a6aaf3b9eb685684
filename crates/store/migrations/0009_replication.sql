-- Replication of a site's directory to its hub (see ARCHITECTURE.md, "Sites and hub").
--
-- While replication is active, a trigger on every directory table logs the key of each row
-- written or deleted, in the same transaction as the write: the log can never miss a change
-- and never names one that did not commit. Each entry carries a hybrid logical clock stamp
-- (milliseconds since the epoch, shifted left 16 bits, plus a counter), taken from
-- `repl_settings.clock` so that stamps grow with the log even across restarts or a clock
-- that steps back. A record shipped to the hub carries the key's current value (or its
-- absence), so replaying an entry twice changes nothing.

CREATE TABLE repl_settings (
    id        INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    -- Whether the triggers log (a site with a hub to replicate to).
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

CREATE TRIGGER repl_accounts_insert AFTER INSERT ON accounts
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('account', NEW.jid, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_accounts_update AFTER UPDATE ON accounts
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('account', NEW.jid, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_accounts_delete AFTER DELETE ON accounts
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('account', OLD.jid, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_roster_items_insert AFTER INSERT ON roster_items
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('roster', NEW.owner, NEW.contact, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_roster_items_update AFTER UPDATE ON roster_items
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('roster', NEW.owner, NEW.contact, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_roster_items_delete AFTER DELETE ON roster_items
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('roster', OLD.owner, OLD.contact, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_roster_groups_insert AFTER INSERT ON roster_groups
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('roster', NEW.owner, NEW.contact, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_roster_groups_update AFTER UPDATE ON roster_groups
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('roster', NEW.owner, NEW.contact, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_roster_groups_delete AFTER DELETE ON roster_groups
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('roster', OLD.owner, OLD.contact, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_subscription_requests_insert AFTER INSERT ON subscription_requests
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('subreq', NEW.owner, NEW.from_jid, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_subscription_requests_update AFTER UPDATE ON subscription_requests
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('subreq', NEW.owner, NEW.from_jid, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_subscription_requests_delete AFTER DELETE ON subscription_requests
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('subreq', OLD.owner, OLD.from_jid, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_vcards_insert AFTER INSERT ON vcards
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('vcard', NEW.owner, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_vcards_update AFTER UPDATE ON vcards
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('vcard', NEW.owner, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_vcards_delete AFTER DELETE ON vcards
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('vcard', OLD.owner, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_blocklist_insert AFTER INSERT ON blocklist
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('block', NEW.owner, NEW.jid, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_blocklist_update AFTER UPDATE ON blocklist
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('block', NEW.owner, NEW.jid, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_blocklist_delete AFTER DELETE ON blocklist
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('block', OLD.owner, OLD.jid, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_private_xml_insert AFTER INSERT ON private_xml
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('private', NEW.owner, NEW.ns, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_private_xml_update AFTER UPDATE ON private_xml
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('private', NEW.owner, NEW.ns, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_private_xml_delete AFTER DELETE ON private_xml
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('private', OLD.owner, OLD.ns, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_archive_prefs_insert AFTER INSERT ON archive_prefs
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('mam_prefs', NEW.owner, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_archive_prefs_update AFTER UPDATE ON archive_prefs
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('mam_prefs', NEW.owner, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_archive_prefs_delete AFTER DELETE ON archive_prefs
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('mam_prefs', OLD.owner, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_archive_prefs_jids_insert AFTER INSERT ON archive_prefs_jids
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('mam_prefs', NEW.owner, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_archive_prefs_jids_update AFTER UPDATE ON archive_prefs_jids
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('mam_prefs', NEW.owner, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_archive_prefs_jids_delete AFTER DELETE ON archive_prefs_jids
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('mam_prefs', OLD.owner, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_pep_nodes_insert AFTER INSERT ON pep_nodes
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('pep_node', NEW.owner, NEW.node, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_pep_nodes_update AFTER UPDATE ON pep_nodes
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('pep_node', NEW.owner, NEW.node, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_pep_nodes_delete AFTER DELETE ON pep_nodes
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('pep_node', OLD.owner, OLD.node, '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_pep_items_insert AFTER INSERT ON pep_items
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('pep_item', NEW.owner, NEW.node, NEW.item_id, (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_pep_items_update AFTER UPDATE ON pep_items
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('pep_item', NEW.owner, NEW.node, NEW.item_id, (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_pep_items_delete AFTER DELETE ON pep_items
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('pep_item', OLD.owner, OLD.node, OLD.item_id, (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_pep_subscriptions_insert AFTER INSERT ON pep_subscriptions
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('pep_sub', NEW.owner, NEW.node, NEW.jid, (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_pep_subscriptions_update AFTER UPDATE ON pep_subscriptions
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('pep_sub', NEW.owner, NEW.node, NEW.jid, (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_pep_subscriptions_delete AFTER DELETE ON pep_subscriptions
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('pep_sub', OLD.owner, OLD.node, OLD.jid, (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_muc_rooms_insert AFTER INSERT ON muc_rooms
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('muc_room', NEW.jid, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_muc_rooms_update AFTER UPDATE ON muc_rooms
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('muc_room', NEW.jid, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_muc_rooms_delete AFTER DELETE ON muc_rooms
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('muc_room', OLD.jid, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_muc_room_config_insert AFTER INSERT ON muc_room_config
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('muc_room', NEW.room, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_muc_room_config_update AFTER UPDATE ON muc_room_config
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('muc_room', NEW.room, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_muc_room_config_delete AFTER DELETE ON muc_room_config
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('muc_room', OLD.room, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_muc_affiliations_insert AFTER INSERT ON muc_affiliations
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('muc_room', NEW.room, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_muc_affiliations_update AFTER UPDATE ON muc_affiliations
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('muc_room', NEW.room, '', '', (SELECT clock FROM repl_settings));
END;

CREATE TRIGGER repl_muc_affiliations_delete AFTER DELETE ON muc_affiliations
WHEN (SELECT active FROM repl_settings) = 1 BEGIN
    UPDATE repl_settings
        SET clock = MAX(clock + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) << 16);
    INSERT INTO repl_log (kind, owner, key, sub, stamp)
        VALUES ('muc_room', OLD.room, '', '', (SELECT clock FROM repl_settings));
END;
