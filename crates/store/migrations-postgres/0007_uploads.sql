-- Outpost's PostgreSQL schema, version 7: HTTP upload slots (XEP-0363). Slots outlive
-- their owner's account, so `owner` references nothing.

CREATE TABLE uploads (
    slot         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    owner        TEXT COLLATE "C" NOT NULL,
    filename     TEXT   NOT NULL,
    size         BIGINT NOT NULL CHECK (size >= 0),
    content_type TEXT,
    -- SHA-256 of the secret the PUT must carry.
    put_token    BYTEA  NOT NULL,
    created_ms   BIGINT NOT NULL,
    completed_ms BIGINT
);

CREATE INDEX uploads_by_owner ON uploads (owner);
CREATE INDEX uploads_by_age ON uploads (created_ms);
