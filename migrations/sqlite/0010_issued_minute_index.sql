-- Issue-time windows, newest first (#21). The listing is ordered by id, and an index on
-- issued_at alone cannot tell which certificates of a window have the highest ids without
-- reading every entry of it (41,667 for an hour of a busy day). Keyed by the minute of issue
-- and then the id, each minute's newest are one backward read, and a window is answered minute
-- by minute and merged. issued_at rides along so that the window's edges are filtered from the
-- index. It replaces 0004's issued_at index: the same number of B-trees per commit.
-- Building it holds issuances back for under a second per million certificates on record
-- (0.7 s on SQLite and on PostgreSQL on the project's machine).
DROP INDEX issued_certificates_issued_at;
CREATE INDEX issued_certificates_issued_minute
    ON issued_certificates ((issued_at / 60), id, issued_at);
