-- Fewer B-trees per commit. SQLite appends every page a commit touches to the WAL and later
-- copies it into the database file, so each B-tree an issuance updates costs a lone commit
-- ~8 KiB of disk writes, and one keyed by a hash a page per row of a batch. 0005–0007 had
-- taken an issuance from 15 B-trees to 24; these four indexes had no reader left:
-- * the public-key index: no API asks for issuances by key (the store's lookup is a scan);
-- * (authority_id, not_after): live certificates per authority have been summed from
--   live_certificate_counts since 0005;
-- * identity_latest by serial: a revocation finds its identity's row through the
--   certificate's spiffe_id instead (below);
-- * identity_latest by expiry: the ten-minute prune scans the table, one row per identity.
DROP INDEX issued_certificates_public_key;
DROP INDEX issued_certificates_authority_not_after;
DROP INDEX identity_latest_serial;
DROP INDEX identity_latest_expires;

-- A revocation finds its identity's row through the certificate's spiffe_id.
DROP TRIGGER certificate_revocations_count;
CREATE TRIGGER certificate_revocations_count AFTER INSERT ON certificate_revocations
BEGIN
    UPDATE bundle_counts SET n = n - 1
    WHERE (bundle_as_of, expires_bucket) IN (
        SELECT bundle_as_of, (not_after + 9) / 10 * 10 FROM issued_certificates
        WHERE serial = NEW.serial AND spiffe_id <> '');
    UPDATE live_certificate_counts SET n = n - 1
    WHERE (authority_id, expires_bucket) IN (
        SELECT authority_id, (not_after + 9) / 10 * 10 FROM issued_certificates
        WHERE serial = NEW.serial);
    UPDATE identity_counts SET n = n - 1
    WHERE (bundle_as_of, expires_bucket) IN (
        SELECT l.bundle_as_of, l.expires_bucket
        FROM issued_certificates c JOIN identity_latest l ON l.spiffe_id = c.spiffe_id
        WHERE c.serial = NEW.serial AND l.serial = NEW.serial AND l.counted = 1);
    UPDATE identity_latest SET counted = 0
    WHERE spiffe_id = (SELECT spiffe_id FROM issued_certificates WHERE serial = NEW.serial)
      AND serial = NEW.serial;
END;
