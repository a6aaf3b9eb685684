-- Outpost's PostgreSQL schema, version 11: which form of the replication log's triggers the
-- database holds (a digest of their definitions and the mode), so a node that starts on a
-- database whose triggers are already what it would make changes no table: making them
-- again takes each table's exclusive lock, which waits for, and can deadlock with, the
-- other nodes' writers.
ALTER TABLE repl_settings ADD COLUMN triggers TEXT NOT NULL DEFAULT '';
