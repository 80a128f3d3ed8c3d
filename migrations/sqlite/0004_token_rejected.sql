-- A 401 from the MBG is the truth about a token, whatever its stored expiry says: record when it
-- came and why, so `token status` can say so. `token_generation` counts access tokens: each step
-- of the token's life writes only if the token it started from is still the stored one, so a
-- slow `token renew` or a late 401 cannot undo a `token verify` made meanwhile.
ALTER TABLE mbg_settings ADD COLUMN token_rejected_at INTEGER;
ALTER TABLE mbg_settings ADD COLUMN token_rejected_reason TEXT;
ALTER TABLE mbg_settings ADD COLUMN token_generation INTEGER NOT NULL DEFAULT 0;
