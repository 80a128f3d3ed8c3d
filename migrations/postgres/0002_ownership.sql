-- Ownership that survives a crash, and one SIP user per row (PostgreSQL; same meaning as sqlite).

-- A deleted extension keeps what proves its SIP user is ours: the guid when it was recorded, and
-- the remote credentials, which were committed before any create (write-ahead). A create whose
-- guid never reached the database is found by those credentials and removed.
CREATE TABLE released_extensions (
    id                   BIGSERIAL PRIMARY KEY,
    number               TEXT   NOT NULL,
    mbg_device_id        TEXT,
    remote_auth_name     TEXT,
    remote_auth_password TEXT,
    released_at          BIGINT NOT NULL
);

INSERT INTO released_extensions (number, mbg_device_id, released_at)
SELECT number, mbg_device_id, released_at FROM released_devices;

DROP TABLE released_devices;

CREATE OR REPLACE FUNCTION extensions_record_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed_id BIGINT;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed_id := OLD.id;
        IF (OLD.provisioned_by_us AND OLD.mbg_device_id IS NOT NULL)
           OR (COALESCE(OLD.remote_auth_name, '') <> ''
               AND COALESCE(OLD.remote_auth_password, '') <> '') THEN
            INSERT INTO released_extensions
                (number, mbg_device_id, remote_auth_name, remote_auth_password, released_at)
            VALUES (OLD.number,
                    CASE WHEN OLD.provisioned_by_us THEN OLD.mbg_device_id END,
                    OLD.remote_auth_name, OLD.remote_auth_password,
                    extract(epoch FROM now())::BIGINT);
        END IF;
    ELSIF TG_OP = 'UPDATE' AND NEW.version = OLD.version THEN
        RETURN NULL; -- nothing the MBG holds has changed
    ELSE
        changed_id := NEW.id;
    END IF;
    INSERT INTO extension_changes (extension_id, changed_at)
    VALUES (changed_id, extract(epoch FROM now())::BIGINT);
    PERFORM pg_notify('extension_changes', changed_id::TEXT);
    RETURN NULL;
END
$$;

-- One SIP user, one row. Rows that already share a guid keep it on one row (a wanted one first,
-- then the oldest); the others forget it and are provisioned afresh, by the ownership rule when
-- the SIP user carries their credentials.
UPDATE extensions
   SET mbg_device_id = NULL, provisioned_by_us = false, state = 'pending'
 WHERE mbg_device_id IS NOT NULL
   AND id <> (SELECT e2.id FROM extensions e2
               WHERE e2.mbg_device_id = extensions.mbg_device_id
               ORDER BY e2.use_remote_auth DESC, e2.id LIMIT 1);

CREATE UNIQUE INDEX extensions_mbg_device_id_unique ON extensions (mbg_device_id)
    WHERE mbg_device_id IS NOT NULL;

-- Who holds the pass lock (informational: the lock itself is an advisory lock on PostgreSQL and a
-- lock file beside the database on SQLite). A waiting process reads it to name the holder.
CREATE TABLE pass_holder (
    id    BIGINT PRIMARY KEY CHECK (id = 1),
    host  TEXT   NOT NULL,
    pid   BIGINT NOT NULL,
    since BIGINT NOT NULL
);
