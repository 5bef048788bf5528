-- Auditor queries: time windows on issuance. SPIFFE-id prefixes use the existing
-- (spiffe_id, id) index through a range on SQLite's binary collation.
CREATE INDEX issued_certificates_issued_at ON issued_certificates (issued_at);
-- Live certificates per authority (GET /v1/authorities): a range over the unexpired ones.
CREATE INDEX issued_certificates_authority_not_after ON issued_certificates (authority_id, not_after);
