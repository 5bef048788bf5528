-- Auditor queries: time windows on issuance, and SPIFFE-id prefixes as a byte-wise range
-- (the database's own collation may not order by bytes, so the range uses "C").
CREATE INDEX issued_certificates_issued_at ON issued_certificates (issued_at);
CREATE INDEX issued_certificates_spiffe_id_c ON issued_certificates ((spiffe_id COLLATE "C"), id);
-- Live certificates per authority (GET /v1/authorities): a range over the unexpired ones.
CREATE INDEX issued_certificates_authority_not_after ON issued_certificates (authority_id, not_after);
