-- PostgreSQL's change triggers became statement-level (its 0005) because a row-level plpgsql
-- trigger cost about 70 µs a row. SQLite's triggers run in-process at a few µs a row and SQLite
-- has no statement-level triggers: nothing changes here. A version of each dialect, always.
SELECT 1;
