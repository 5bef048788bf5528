-- Root rotation: when an authority last changed state (prepared → active → old → tainted →
-- revoked). created_at stays the time it was prepared.
ALTER TABLE authorities ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
UPDATE authorities SET updated_at = created_at;

-- Certificates revoked by an administrator: refused at renewal and listed in the CRL.
CREATE TABLE certificate_revocations (
    serial      TEXT    PRIMARY KEY,
    reason      TEXT    NOT NULL,
    revoked_at  BIGINT  NOT NULL,
    actor       TEXT    NOT NULL
);
