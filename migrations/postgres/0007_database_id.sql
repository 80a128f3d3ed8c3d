-- A random name for this database, written once by the migration that creates it. The daemon's
-- `/healthz` carries it, and `preflight` compares it with its own database's, to know whether
-- the daemon answering on `http.listen` works on the same database. The URL could not serve:
-- it may carry a password, and two URLs can name one database.
CREATE TABLE installation (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    database_id TEXT NOT NULL
);
INSERT INTO installation (id, database_id) VALUES (1, replace(gen_random_uuid()::text, '-', ''));
