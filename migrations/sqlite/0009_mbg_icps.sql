-- The MBG's ICPs as the leader last listed them. The console reads them from here, so that a
-- standby (which never calls the MBG) shows each node's ICP too, and nobody's page load costs
-- the MBG a request. Replaced whole at each full read of the MBG.
CREATE TABLE mbg_icps (
    guid    TEXT PRIMARY KEY,
    name    TEXT NOT NULL,
    address TEXT NOT NULL,
    seen_at BIGINT NOT NULL
);
