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

CREATE TRIGGER issued_certificates_count AFTER INSERT ON issued_certificates
BEGIN
    INSERT INTO bundle_counts (bundle_as_of, expires_bucket, n)
    SELECT NEW.bundle_as_of, (NEW.not_after + 9) / 10 * 10, 1 WHERE NEW.spiffe_id <> ''
    ON CONFLICT (bundle_as_of, expires_bucket) DO UPDATE SET n = n + 1;
    INSERT INTO live_certificate_counts (authority_id, expires_bucket, n)
    VALUES (NEW.authority_id, (NEW.not_after + 9) / 10 * 10, 1)
    ON CONFLICT (authority_id, expires_bucket) DO UPDATE SET n = n + 1;
    -- A newer certificate for a known identity takes its predecessor's place.
    UPDATE identity_counts SET n = n - 1
    WHERE (bundle_as_of, expires_bucket) IN (
        SELECT bundle_as_of, expires_bucket FROM identity_latest
        WHERE spiffe_id = NEW.spiffe_id AND counted = 1 AND issued_at <= NEW.issued_at);
    INSERT INTO identity_latest (spiffe_id, serial, issued_at, bundle_as_of, expires_bucket, counted)
    SELECT NEW.spiffe_id, NEW.serial, NEW.issued_at, NEW.bundle_as_of, (NEW.not_after + 9) / 10 * 10, 1
    WHERE NEW.spiffe_id <> ''
    ON CONFLICT (spiffe_id) DO UPDATE SET serial = excluded.serial,
        issued_at = excluded.issued_at, bundle_as_of = excluded.bundle_as_of,
        expires_bucket = excluded.expires_bucket, counted = 1
    WHERE excluded.issued_at >= identity_latest.issued_at;
    INSERT INTO identity_counts (bundle_as_of, expires_bucket, n)
    SELECT NEW.bundle_as_of, (NEW.not_after + 9) / 10 * 10, 1
    WHERE EXISTS (SELECT 1 FROM identity_latest WHERE spiffe_id = NEW.spiffe_id AND serial = NEW.serial)
    ON CONFLICT (bundle_as_of, expires_bucket) DO UPDATE SET n = n + 1;
END;

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
        SELECT bundle_as_of, expires_bucket FROM identity_latest
        WHERE serial = NEW.serial AND counted = 1);
    UPDATE identity_latest SET counted = 0 WHERE serial = NEW.serial;
END;

-- What is live now, counted once.
INSERT INTO live_certificate_counts (authority_id, expires_bucket, n)
SELECT c.authority_id, (c.not_after + 9) / 10 * 10, count(*) FROM issued_certificates c
WHERE c.not_after > CAST(strftime('%s', 'now') AS INTEGER)
  AND NOT EXISTS (SELECT 1 FROM certificate_revocations r WHERE r.serial = c.serial)
GROUP BY 1, 2;
INSERT INTO bundle_counts (bundle_as_of, expires_bucket, n)
SELECT 0, (c.not_after + 9) / 10 * 10, count(*) FROM issued_certificates c
WHERE c.spiffe_id <> '' AND c.not_after > CAST(strftime('%s', 'now') AS INTEGER)
  AND NOT EXISTS (SELECT 1 FROM certificate_revocations r WHERE r.serial = c.serial)
GROUP BY 2;
INSERT INTO identity_latest (spiffe_id, serial, issued_at, bundle_as_of, expires_bucket, counted)
SELECT c.spiffe_id, c.serial, c.issued_at, 0, (c.not_after + 9) / 10 * 10,
       CASE WHEN EXISTS (SELECT 1 FROM certificate_revocations r WHERE r.serial = c.serial)
            THEN 0 ELSE 1 END
FROM issued_certificates c
WHERE c.spiffe_id <> '' AND c.not_after > CAST(strftime('%s', 'now') AS INTEGER)
  AND c.id = (SELECT max(d.id) FROM issued_certificates d WHERE d.spiffe_id = c.spiffe_id);
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
