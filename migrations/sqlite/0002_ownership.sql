-- Ownership that survives a crash, and one SIP user per row (SQLite; same meaning as postgres).

-- A deleted extension keeps what proves its SIP user is ours: the guid when it was recorded, and
-- the remote credentials, which were committed before any create (write-ahead). A create whose
-- guid never reached the database is found by those credentials and removed.
CREATE TABLE released_extensions (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    number               TEXT    NOT NULL,
    mbg_device_id        TEXT,
    remote_auth_name     TEXT,
    remote_auth_password TEXT,
    released_at          INTEGER NOT NULL
);

INSERT INTO released_extensions (number, mbg_device_id, released_at)
SELECT number, mbg_device_id, released_at FROM released_devices;

DROP TRIGGER extensions_record_delete;
DROP TABLE released_devices;

CREATE TRIGGER extensions_record_delete AFTER DELETE ON extensions
BEGIN
    INSERT INTO released_extensions
        (number, mbg_device_id, remote_auth_name, remote_auth_password, released_at)
    SELECT OLD.number,
           CASE WHEN OLD.provisioned_by_us THEN OLD.mbg_device_id END,
           OLD.remote_auth_name, OLD.remote_auth_password,
           CAST(strftime('%s', 'now') AS INTEGER)
     WHERE (OLD.provisioned_by_us AND OLD.mbg_device_id IS NOT NULL)
        OR (COALESCE(OLD.remote_auth_name, '') <> '' AND COALESCE(OLD.remote_auth_password, '') <> '');
    INSERT INTO extension_changes (extension_id, changed_at)
    VALUES (OLD.id, CAST(strftime('%s', 'now') AS INTEGER));
END;

-- One SIP user, one row. Rows that already share a guid keep it on one row (a wanted one first,
-- then the oldest); the others forget it and are provisioned afresh, by the ownership rule when
-- the SIP user carries their credentials.
UPDATE extensions
   SET mbg_device_id = NULL, provisioned_by_us = 0, state = 'pending'
 WHERE mbg_device_id IS NOT NULL
   AND id <> (SELECT e2.id FROM extensions e2
               WHERE e2.mbg_device_id = extensions.mbg_device_id
               ORDER BY e2.use_remote_auth DESC, e2.id LIMIT 1);

CREATE UNIQUE INDEX extensions_mbg_device_id_unique ON extensions (mbg_device_id)
    WHERE mbg_device_id IS NOT NULL;

-- Who holds the pass lock (informational: the lock itself is a lock file beside the database on
-- SQLite and an advisory lock on PostgreSQL). A waiting process reads it to name the holder.
CREATE TABLE pass_holder (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    host  TEXT    NOT NULL,
    pid   INTEGER NOT NULL,
    since INTEGER NOT NULL
);
