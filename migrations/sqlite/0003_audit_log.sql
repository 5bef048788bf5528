-- The audit log: every issuance (granted or refused), admin action and failed REST
-- authentication. Each event's hash covers its fields and the previous event's hash, so
-- altering or deleting a row breaks the chain at that point.
CREATE TABLE audit_events (
    seq             BIGINT  PRIMARY KEY,
    at              BIGINT  NOT NULL,
    actor_method    TEXT    NOT NULL,
    actor_principal TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    target          TEXT    NOT NULL,
    outcome         TEXT    NOT NULL,
    details         TEXT    NOT NULL,
    prev_hash       TEXT    NOT NULL,
    hash            TEXT    NOT NULL
);
CREATE INDEX audit_events_action ON audit_events (action, seq);
CREATE INDEX audit_events_actor ON audit_events (actor_principal, seq);
CREATE INDEX audit_events_at ON audit_events (at);

-- The chain's head; writers serialize on this row so concurrent appends stay one chain.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT  NOT NULL,
    hash TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Append-only for meshca itself; someone with raw database access can still drop these, which
-- is what the hash chain is for.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
