-- The issuance counters (0005's live certificates, bundles and identities, 0007's issued per
-- hour) are kept by the issuance writer from here on, summed per batch in the batch's own
-- transaction (ca/src/store/sqlite_counters.rs). The triggers ran six statements for every
-- certificate and made every issuance insert open a statement journal. What they counted so
-- far stays; revocations still count through their trigger (0009).
DROP TRIGGER issued_certificates_count;
DROP TRIGGER issued_certificates_per_hour;
