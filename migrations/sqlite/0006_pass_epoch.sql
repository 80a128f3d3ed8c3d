-- Fencing between pass lock holders. Every holder (the daemon's leader, `sync`) bumps `epoch` when
-- it takes the lock and records how long its calls may outlive it: its lease (how long it goes on
-- calling the MBG without hearing from its lock) and its MBG request timeout. The next holder
-- waits that long before its first MBG call unless `released` says the previous one stopped
-- cleanly. Outcome writes carry `epoch = mine`, so a deposed holder cannot overwrite the new
-- one's bookkeeping. `creating_until_ms` (wall clock, epoch milliseconds) is written before the
-- holder's creates are posted and is later than every one of them: after an unclean stop, the
-- next holder knows until when a late create of the old one may still land on the MBG.
CREATE TABLE pass_epoch (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    epoch          INTEGER NOT NULL,
    lease_ms       INTEGER NOT NULL,
    mbg_timeout_ms INTEGER NOT NULL,
    released       INTEGER NOT NULL CHECK (released IN (0, 1)),
    taken_at       INTEGER NOT NULL,
    creating_until_ms INTEGER NOT NULL DEFAULT 0
);
INSERT INTO pass_epoch (id, epoch, lease_ms, mbg_timeout_ms, released, taken_at)
VALUES (1, 0, 0, 0, 1, 0);
