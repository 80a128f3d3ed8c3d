-- A node's address picks the ICP that its extensions live under on the MBG, so changing it is a
-- change to each of those extensions, whoever made it (our CLI, the phone system, a DBA). The
-- version bump makes an outcome planned against the old address fail its conditional write.
-- The name and NAT settings do not reach the MBG and are not changes.
-- (The extensions' own update trigger watches other columns, so it does not fire here.)

CREATE TRIGGER nodes_record_address_change
AFTER UPDATE OF address ON nodes
WHEN OLD.address IS NOT NEW.address
BEGIN
    UPDATE extensions
       SET version = version + 1, updated_at = CAST(strftime('%s', 'now') AS INTEGER)
     WHERE node_id = NEW.id;
    INSERT INTO extension_changes (extension_id, changed_at)
    SELECT id, CAST(strftime('%s', 'now') AS INTEGER) FROM extensions WHERE node_id = NEW.id;
END;
