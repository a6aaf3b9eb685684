-- Outpost schema, version 8: HTTP upload slots (XEP-0363). A slot is handed to a user's
-- client, which then PUTs the file (the bytes live in files under data_dir, named by
-- slot); `completed_ms` is set once the whole file is on disk. Slots outlive their
-- owner's account: the files are shared in conversations, and expire like the others.

CREATE TABLE uploads (
    slot         TEXT    NOT NULL PRIMARY KEY,
    owner        TEXT    NOT NULL,
    filename     TEXT    NOT NULL,
    size         INTEGER NOT NULL CHECK (size >= 0),
    content_type TEXT,
    -- SHA-256 of the secret the PUT must carry.
    put_token    BLOB    NOT NULL,
    created_ms   INTEGER NOT NULL,
    completed_ms INTEGER
) STRICT, WITHOUT ROWID;

CREATE INDEX uploads_by_owner ON uploads (owner);
CREATE INDEX uploads_by_age ON uploads (created_ms);
