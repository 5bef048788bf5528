-- Replicas learn of a rotation step when it commits, not at their next poll: every write to
-- authorities notifies the meshca_authorities channel, which each replica LISTENs on. A
-- trigger rather than a NOTIFY in each writer, so no writer (nor an operator's manual fix)
-- can forget it. PostgreSQL delivers the notification at commit, and not at all on rollback.
-- Channels are per database, not per schema: the payload names the table's schema, so
-- deployments (or tests) sharing a database in separate schemas do not wake each other.
CREATE FUNCTION notify_authorities_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meshca_authorities', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;
CREATE TRIGGER authorities_changed
    AFTER INSERT OR UPDATE OR DELETE ON authorities
    FOR EACH STATEMENT EXECUTE FUNCTION notify_authorities_changed();
