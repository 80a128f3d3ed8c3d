-- The version trigger ran its PL/pgSQL function for every updated row, including the pass's own
-- bookkeeping (state, attempts, the recorded SIP user), which never changes a version. Fired
-- only by an UPDATE naming a column the MBG holds, and only when one of them really changed,
-- the function is left to the writes that do bump the version; what it does is unchanged.
DROP TRIGGER extensions_bump_version ON extensions;
CREATE TRIGGER extensions_bump_version
BEFORE UPDATE OF node_id, number, kind, sip_password, use_remote_auth, remote_auth_name,
                 remote_auth_password ON extensions
FOR EACH ROW
WHEN (ROW(NEW.node_id, NEW.number, NEW.kind, NEW.sip_password, NEW.use_remote_auth,
          NEW.remote_auth_name, NEW.remote_auth_password)
      IS DISTINCT FROM
      ROW(OLD.node_id, OLD.number, OLD.kind, OLD.sip_password, OLD.use_remote_auth,
          OLD.remote_auth_name, OLD.remote_auth_password))
EXECUTE FUNCTION extensions_bump_version();
