-- A node's address picks the ICP that its extensions live under on the MBG, so changing it is a
-- change to each of those extensions, whoever made it (our CLI, the phone system, a DBA). The
-- version bump makes an outcome planned against the old address fail its conditional write.
-- The name and NAT settings do not reach the MBG and are not changes.
-- Bumping the version is enough: extensions_record_change (0001) records every update that
-- changes the version, and notifies `extension_changes` listeners.

CREATE FUNCTION nodes_record_address_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE extensions
       SET version = version + 1, updated_at = extract(epoch FROM now())::BIGINT
     WHERE node_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER nodes_record_address_change AFTER UPDATE OF address ON nodes
FOR EACH ROW WHEN (OLD.address IS DISTINCT FROM NEW.address)
EXECUTE FUNCTION nodes_record_address_change();
