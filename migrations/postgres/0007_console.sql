-- The web console (/ui/): its sign-in sessions, and what its overview reads on every load
-- without scanning the inventory or the audit log.

-- A signed-in browser. The cookie holds a random id; only its SHA-256 is stored, so reading
-- this table gives no session away. token_sha256 names the bearer token a session was opened
-- with (NULL for a client certificate): a token taken out of the configuration ends its
-- sessions at their next request.
CREATE TABLE console_sessions (
    id_sha256    TEXT   PRIMARY KEY,
    method       TEXT   NOT NULL,
    principal    TEXT   NOT NULL,
    role         TEXT   NOT NULL,
    token_sha256 TEXT,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);

-- Certificates issued per hour (issued_at rounded down to the hour), kept by a trigger in the
-- transaction that records them: the overview's 7-day chart is 168 rows at any store size.
-- Once per INSERT statement (a whole batch); it fires after issued_certificates_count (triggers
-- run in name order), which has taken the audit head's lock, so batches still lock in one order.
CREATE TABLE issued_per_hour (
    hour BIGINT PRIMARY KEY,
    n    BIGINT NOT NULL
);
CREATE FUNCTION count_issued_per_hour() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO issued_per_hour (hour, n)
    SELECT issued_at / 3600 * 3600, count(*) FROM new_rows GROUP BY 1
    ON CONFLICT (hour) DO UPDATE SET n = issued_per_hour.n + excluded.n;
    RETURN NULL;
END;
$$;
CREATE TRIGGER issued_certificates_per_hour AFTER INSERT ON issued_certificates
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION count_issued_per_hour();
INSERT INTO issued_per_hour (hour, n)
SELECT issued_at / 3600 * 3600, count(*) FROM issued_certificates GROUP BY 1;

-- Recent refusals and denials, newest first, without walking past every successful issuance;
-- and a certificate's events (their target is its serial) without scanning the log.
CREATE INDEX audit_events_unsuccessful ON audit_events (seq) WHERE outcome <> 'success';
CREATE INDEX audit_events_target ON audit_events (target, seq);
