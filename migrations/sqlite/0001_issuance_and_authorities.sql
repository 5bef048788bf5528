-- Every certificate meshca issued; a row is committed before the cert is returned.
-- Times are Unix seconds (UTC) so both dialects compare and index them alike.
CREATE TABLE issued_certificates (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    serial              TEXT    NOT NULL,
    spiffe_id           TEXT    NOT NULL,
    trust_domain        TEXT    NOT NULL,
    namespace           TEXT,
    service_account     TEXT,
    not_before          BIGINT  NOT NULL,
    not_after           BIGINT  NOT NULL,
    issued_at           BIGINT  NOT NULL,
    authority_id        TEXT    NOT NULL,
    requester_method    TEXT    NOT NULL,
    requester_principal TEXT    NOT NULL,
    peer_address        TEXT,
    cluster_id          TEXT,
    public_key_sha256   TEXT    NOT NULL,
    cert_der            BLOB    NOT NULL
);
CREATE UNIQUE INDEX issued_certificates_serial ON issued_certificates (serial);
CREATE INDEX issued_certificates_spiffe_id ON issued_certificates (spiffe_id, id);
CREATE INDEX issued_certificates_namespace ON issued_certificates (namespace, service_account, id);
CREATE INDEX issued_certificates_not_after ON issued_certificates (not_after);
CREATE INDEX issued_certificates_authority ON issued_certificates (authority_id, id);
CREATE INDEX issued_certificates_public_key ON issued_certificates (public_key_sha256);

-- Signing authorities. Keys are sealed (AES-256-GCM envelope under the KEK file), never plain.
CREATE TABLE authorities (
    id          TEXT    PRIMARY KEY,
    state       TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    key_type    TEXT    NOT NULL,
    cert_der    BLOB    NOT NULL,
    chain_pem   TEXT    NOT NULL,
    roots_pem   TEXT    NOT NULL,
    sealed_key  BLOB    NOT NULL,
    kek_id      TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);
-- Exactly one active authority: concurrent bootstraps race on this index and one wins.
CREATE UNIQUE INDEX authorities_one_active ON authorities (state) WHERE state = 'active';
