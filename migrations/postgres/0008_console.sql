-- The console's accounts, sessions and sign-in throttling, and who did what in the audit log.
-- Kept in the database, not in memory, so that a standby that takes over serves the same
-- sessions and a lock-out holds whichever instance answers.

CREATE TABLE console_users (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL CONSTRAINT console_users_name_unique UNIQUE
                  CONSTRAINT console_users_name_valid CHECK (length(name) BETWEEN 1 AND 64),
    role          TEXT NOT NULL CONSTRAINT console_users_role_valid
                  CHECK (role IN ('viewer', 'operator', 'admin')),
    -- argon2id, in the PHC string format: never the password.
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

-- A session's id is a random token kept by the browser; only its hash is stored, so a reader of
-- the database cannot take over a session.
CREATE TABLE console_sessions (
    id_hash      TEXT PRIMARY KEY,
    user_id      BIGINT NOT NULL REFERENCES console_users (id) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);

-- Failed sign-ins per (name, client address): a lock-out is for that pair only, so nobody can
-- lock an admin out from elsewhere.
CREATE TABLE console_login_failures (
    name      TEXT NOT NULL,
    client    TEXT NOT NULL,
    failed_at BIGINT NOT NULL
);
CREATE INDEX console_login_failures_pair ON console_login_failures (name, client, failed_at);

-- Who made a change: the console user's name, or the OS user who ran a command; NULL for the
-- engine's own entries.
ALTER TABLE audit_log ADD COLUMN actor TEXT;

-- The console's extension list: a number prefix is a range on this index, paged by number; a
-- state filter (needs attention) is paged on the second without reading the other states.
CREATE INDEX extensions_number ON extensions (number, id);
CREATE INDEX extensions_state_number ON extensions (state, number, id);
