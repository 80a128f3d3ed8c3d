-- PostgreSQL's version trigger is narrowed to the columns the MBG holds (see its 0013); SQLite's
-- already was (0001: AFTER UPDATE OF … WHEN). Nothing to do here.
SELECT 1;
