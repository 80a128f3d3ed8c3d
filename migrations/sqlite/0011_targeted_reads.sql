-- A targeted pass reads only the rows near its changes (see reconcile::near): by id, number and
-- recorded SIP user (already indexed), and by remote auth name, indexed here.
CREATE INDEX extensions_remote_auth_name ON extensions (remote_auth_name);

-- Every pass first looks for wanted rows without remote credentials, which are nearly always
-- none: a partial index holds just those, instead of a scan of every wanted row.
CREATE INDEX extensions_lacking_credentials ON extensions (id)
    WHERE use_remote_auth = TRUE
      AND (COALESCE(remote_auth_name, '') = '' OR COALESCE(remote_auth_password, '') = '');
