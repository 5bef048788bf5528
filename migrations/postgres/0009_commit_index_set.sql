-- Fewer B-trees per commit: each index an issuance updates is a page written per commit, and
-- one keyed by a hash a page per row of a batch. These five had no reader left:
-- * the public-key index: no API asks for issuances by key (the store's lookup is a scan);
-- * (authority_id, not_after): live certificates per authority have been summed from
--   live_certificate_counts since 0005;
-- * spiffe_id under the database's collation: every query names the id under "C" (0004's
--   index), which is byte order whatever the database's locale, and equal where it is;
-- * identity_latest by serial: a revocation finds its identity's row through the
--   certificate's spiffe_id instead (below);
-- * identity_latest by expiry: the ten-minute prune scans the table, one row per identity.
DROP INDEX issued_certificates_public_key;
DROP INDEX issued_certificates_authority_not_after;
DROP INDEX issued_certificates_spiffe_id;
DROP INDEX identity_latest_serial;
DROP INDEX identity_latest_expires;

CREATE OR REPLACE FUNCTION count_revoked_certificate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM audit_head WHERE id = 1 FOR UPDATE;
    UPDATE live_certificate_counts l SET n = l.n - 1 FROM issued_certificates c
    WHERE c.serial = NEW.serial AND l.authority_id = c.authority_id
      AND l.expires_bucket = (c.not_after + 9) / 10 * 10;
    UPDATE bundle_counts b SET n = b.n - 1 FROM issued_certificates c
    WHERE c.serial = NEW.serial AND c.spiffe_id <> '' AND b.bundle_as_of = c.bundle_as_of
      AND b.expires_bucket = (c.not_after + 9) / 10 * 10;
    UPDATE identity_counts ic SET n = ic.n - 1
    FROM issued_certificates c JOIN identity_latest il ON il.spiffe_id = c.spiffe_id
    WHERE c.serial = NEW.serial AND il.serial = NEW.serial AND il.counted = 1
      AND ic.bundle_as_of = il.bundle_as_of AND ic.expires_bucket = il.expires_bucket;
    UPDATE identity_latest il SET counted = 0 FROM issued_certificates c
    WHERE c.serial = NEW.serial AND il.spiffe_id = c.spiffe_id AND il.serial = NEW.serial;
    RETURN NULL;
END $$;
