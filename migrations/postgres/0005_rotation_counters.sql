-- Counters for the rotation gates, kept by triggers in the transaction that records an issuance
-- or a revocation, so "how many live certificates does this authority still have" and "how
-- many live identities have renewed since this root joined the bundle" are sums over a few
-- thousand small rows instead of a scan of every certificate. Expiry is bucketed: a bucket is
-- not_after rounded up to 10 s, so a certificate counts as live at most 10 s past its expiry.

-- The trust bundle an answer carried, as the newest root's arrival (Unix seconds); 0 for
-- certificates recorded before this column existed (treated as holding no newer root).
ALTER TABLE issued_certificates ADD COLUMN bundle_as_of BIGINT NOT NULL DEFAULT 0;

-- Unrevoked certificates per authority and expiry bucket.
CREATE TABLE live_certificate_counts (
    authority_id   TEXT   NOT NULL,
    expires_bucket BIGINT NOT NULL,
    n              BIGINT NOT NULL,
    PRIMARY KEY (authority_id, expires_bucket)
);

-- Each SPIFFE id's newest certificate; counted = 0 once that certificate was revoked.
CREATE TABLE identity_latest (
    spiffe_id      TEXT    PRIMARY KEY,
    serial         TEXT    NOT NULL,
    issued_at      BIGINT  NOT NULL,
    bundle_as_of   BIGINT  NOT NULL,
    expires_bucket BIGINT  NOT NULL,
    counted        INTEGER NOT NULL
);
CREATE INDEX identity_latest_serial ON identity_latest (serial);
CREATE INDEX identity_latest_expires ON identity_latest (expires_bucket);

-- Identities by the bundle and expiry of their newest certificate.
CREATE TABLE identity_counts (
    bundle_as_of   BIGINT NOT NULL,
    expires_bucket BIGINT NOT NULL,
    n              BIGINT NOT NULL,
    PRIMARY KEY (bundle_as_of, expires_bucket)
);

-- Live workload certificates by the bundle their answer carried: every pod counts, where
-- identities cannot tell the replicas of one Deployment apart.
CREATE TABLE bundle_counts (
    bundle_as_of   BIGINT NOT NULL,
    expires_bucket BIGINT NOT NULL,
    n              BIGINT NOT NULL,
    PRIMARY KEY (bundle_as_of, expires_bucket)
);

-- Once per INSERT statement (a whole batch), over its new rows. Writers on several replicas
-- serialize on the audit head before they commit anyway; taking it here first keeps the
-- counter rows' locks in one order, so concurrent batches cannot deadlock on them.
CREATE FUNCTION count_issued_certificates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM audit_head WHERE id = 1 FOR UPDATE;
    INSERT INTO live_certificate_counts (authority_id, expires_bucket, n)
    SELECT authority_id, (not_after + 9) / 10 * 10, count(*) FROM new_rows GROUP BY 1, 2
    ON CONFLICT (authority_id, expires_bucket)
    DO UPDATE SET n = live_certificate_counts.n + excluded.n;
    INSERT INTO bundle_counts (bundle_as_of, expires_bucket, n)
    SELECT bundle_as_of, (not_after + 9) / 10 * 10, count(*) FROM new_rows
    WHERE spiffe_id <> '' GROUP BY 1, 2
    ON CONFLICT (bundle_as_of, expires_bucket) DO UPDATE SET n = bundle_counts.n + excluded.n;

    -- A newer certificate for a known identity takes its predecessor's place.
    WITH batch AS (
        SELECT DISTINCT ON (spiffe_id) spiffe_id, issued_at FROM new_rows
        WHERE spiffe_id <> '' ORDER BY spiffe_id, issued_at DESC, id DESC
    ), replaced AS (
        SELECT l.bundle_as_of, l.expires_bucket, count(*) AS n
        FROM identity_latest l JOIN batch b ON b.spiffe_id = l.spiffe_id
        WHERE l.counted = 1 AND l.issued_at <= b.issued_at GROUP BY 1, 2
    )
    UPDATE identity_counts c SET n = c.n - r.n FROM replaced r
    WHERE c.bundle_as_of = r.bundle_as_of AND c.expires_bucket = r.expires_bucket;

    WITH batch AS (
        SELECT DISTINCT ON (spiffe_id) spiffe_id, serial, issued_at, bundle_as_of,
               (not_after + 9) / 10 * 10 AS expires_bucket
        FROM new_rows WHERE spiffe_id <> '' ORDER BY spiffe_id, issued_at DESC, id DESC
    ), became AS (
        INSERT INTO identity_latest AS l
            (spiffe_id, serial, issued_at, bundle_as_of, expires_bucket, counted)
        SELECT spiffe_id, serial, issued_at, bundle_as_of, expires_bucket, 1 FROM batch
        ON CONFLICT (spiffe_id) DO UPDATE SET serial = excluded.serial,
            issued_at = excluded.issued_at, bundle_as_of = excluded.bundle_as_of,
            expires_bucket = excluded.expires_bucket, counted = 1
        WHERE excluded.issued_at >= l.issued_at
        RETURNING l.bundle_as_of, l.expires_bucket
    )
    INSERT INTO identity_counts (bundle_as_of, expires_bucket, n)
    SELECT bundle_as_of, expires_bucket, count(*) FROM became GROUP BY 1, 2
    ON CONFLICT (bundle_as_of, expires_bucket) DO UPDATE SET n = identity_counts.n + excluded.n;
    RETURN NULL;
END $$;

CREATE TRIGGER issued_certificates_count AFTER INSERT ON issued_certificates
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION count_issued_certificates();

CREATE FUNCTION count_revoked_certificate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM audit_head WHERE id = 1 FOR UPDATE;
    UPDATE live_certificate_counts l SET n = l.n - 1 FROM issued_certificates c
    WHERE c.serial = NEW.serial AND l.authority_id = c.authority_id
      AND l.expires_bucket = (c.not_after + 9) / 10 * 10;
    UPDATE bundle_counts b SET n = b.n - 1 FROM issued_certificates c
    WHERE c.serial = NEW.serial AND c.spiffe_id <> '' AND b.bundle_as_of = c.bundle_as_of
      AND b.expires_bucket = (c.not_after + 9) / 10 * 10;
    UPDATE identity_counts ic SET n = ic.n - 1 FROM identity_latest il
    WHERE il.serial = NEW.serial AND il.counted = 1
      AND ic.bundle_as_of = il.bundle_as_of AND ic.expires_bucket = il.expires_bucket;
    UPDATE identity_latest SET counted = 0 WHERE serial = NEW.serial;
    RETURN NULL;
END $$;

CREATE TRIGGER certificate_revocations_count AFTER INSERT ON certificate_revocations
FOR EACH ROW EXECUTE FUNCTION count_revoked_certificate();

-- What is live now, counted once.
INSERT INTO live_certificate_counts (authority_id, expires_bucket, n)
SELECT c.authority_id, (c.not_after + 9) / 10 * 10, count(*) FROM issued_certificates c
WHERE c.not_after > extract(epoch FROM now())::bigint
  AND NOT EXISTS (SELECT 1 FROM certificate_revocations r WHERE r.serial = c.serial)
GROUP BY 1, 2;
INSERT INTO bundle_counts (bundle_as_of, expires_bucket, n)
SELECT 0, (c.not_after + 9) / 10 * 10, count(*) FROM issued_certificates c
WHERE c.spiffe_id <> '' AND c.not_after > extract(epoch FROM now())::bigint
  AND NOT EXISTS (SELECT 1 FROM certificate_revocations r WHERE r.serial = c.serial)
GROUP BY 2;
INSERT INTO identity_latest (spiffe_id, serial, issued_at, bundle_as_of, expires_bucket, counted)
SELECT DISTINCT ON (c.spiffe_id) c.spiffe_id, c.serial, c.issued_at, 0,
       (c.not_after + 9) / 10 * 10,
       CASE WHEN EXISTS (SELECT 1 FROM certificate_revocations r WHERE r.serial = c.serial)
            THEN 0 ELSE 1 END
FROM issued_certificates c
WHERE c.spiffe_id <> '' AND c.not_after > extract(epoch FROM now())::bigint
ORDER BY c.spiffe_id, c.id DESC;
INSERT INTO identity_counts (bundle_as_of, expires_bucket, n)
SELECT bundle_as_of, expires_bucket, count(*) FROM identity_latest WHERE counted = 1 GROUP BY 1, 2;

-- Each replica's trust-bundle streams, reported every few seconds: how many meshca agents are
-- connected and which roots (JSON: fingerprint -> agents sent it) they were sent, so every
-- replica's gate counts every replica's agents. A replica that stops reporting drops out.
CREATE TABLE bundle_deliveries (
    replica     TEXT   PRIMARY KEY,
    reported_at BIGINT NOT NULL,
    connected   BIGINT NOT NULL,
    received    TEXT   NOT NULL
);
