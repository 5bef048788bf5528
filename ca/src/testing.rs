//! Test fixtures (the `testing` feature, for this workspace's tests only): CA chains with
//! whatever flaw a test needs and end-entity certificates in other systems' shapes (Athenz, API
//! servers), built with the same writer the CA uses so no second X.509 library is involved;
//! store records; and a fresh PostgreSQL schema per test.

use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use der::asn1::{Ia5String, OctetString};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::name::Name;

use crate::keys::{self, KeyType, SigningKey};
use crate::x509::{self, CertTemplate, ParsedCert};

pub const DAY: Duration = Duration::from_secs(86400);

/// A certificate and its key.
#[derive(Debug)]
pub struct TestCa {
    pub cert: ParsedCert,
    pub key: SigningKey,
}

/// What a generated CA certificate looks like; [`CaSpec::new`] is a healthy CA.
#[derive(Clone, Debug)]
pub struct CaSpec {
    /// RFC 4514 string, e.g. `CN=Root,O=Example`.
    pub subject: String,
    pub key_type: KeyType,
    /// basicConstraints CA flag; `None` leaves the extension out.
    pub ca: Option<bool>,
    pub path_len: Option<u8>,
    pub key_usage: Option<KeyUsage>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// An end-entity certificate.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub subject: String,
    pub key_type: KeyType,
    pub dns_names: Vec<String>,
    pub ip_addrs: Vec<IpAddr>,
    pub uris: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// A root → intermediate → signing-CA chain.
#[derive(Debug)]
pub struct GeneratedChain {
    pub root: TestCa,
    pub intermediate: TestCa,
    pub signing: TestCa,
}

// === impl CaSpec ===

impl CaSpec {
    pub fn new(subject: &str) -> Self {
        let now = SystemTime::now();
        Self {
            subject: subject.into(),
            key_type: KeyType::EcP256,
            ca: Some(true),
            path_len: None,
            key_usage: Some(KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)),
            not_before: now - DAY,
            not_after: now + 365 * DAY,
        }
    }
}

// === impl LeafSpec ===

impl LeafSpec {
    pub fn new(subject: &str) -> Self {
        let now = SystemTime::now();
        Self {
            subject: subject.into(),
            key_type: KeyType::EcP256,
            dns_names: Vec::new(),
            ip_addrs: Vec::new(),
            uris: Vec::new(),
            not_before: now - DAY,
            not_after: now + 30 * DAY,
        }
    }
}

// === impl TestCa ===

impl TestCa {
    /// Issues `spec` under `issuer`, or self-signed when `issuer` is None.
    pub fn new(spec: &CaSpec, issuer: Option<&TestCa>) -> TestCa {
        let key = SigningKey::generate(spec.key_type).expect("key generation");
        let mut extensions = Vec::new();
        if let Some(ca) = spec.ca {
            extensions.push(
                x509::extension(
                    true,
                    &BasicConstraints {
                        ca,
                        path_len_constraint: spec.path_len,
                    },
                )
                .expect("encodes"),
            );
        }
        if let Some(ku) = &spec.key_usage {
            extensions.push(x509::extension(true, ku).expect("encodes"));
        }
        extensions.push(ski(&key));
        Self::sign(
            &spec.subject,
            key,
            spec.not_before,
            spec.not_after,
            extensions,
            issuer,
        )
    }

    /// An end-entity certificate signed by this CA, with its key.
    pub fn issue_leaf(&self, spec: &LeafSpec) -> TestCa {
        let key = SigningKey::generate(spec.key_type).expect("key generation");
        let mut names: Vec<GeneralName> = Vec::new();
        for dns in &spec.dns_names {
            names.push(GeneralName::DnsName(Ia5String::new(dns).expect("ASCII")));
        }
        for ip in &spec.ip_addrs {
            let bytes = match ip {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            names.push(GeneralName::IpAddress(
                OctetString::new(bytes).expect("fits"),
            ));
        }
        for uri in &spec.uris {
            names.push(GeneralName::UniformResourceIdentifier(
                Ia5String::new(uri).expect("ASCII"),
            ));
        }
        let mut extensions = vec![
            x509::extension(
                true,
                &BasicConstraints {
                    ca: false,
                    path_len_constraint: None,
                },
            )
            .expect("encodes"),
            x509::extension(
                true,
                &KeyUsage(KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment),
            )
            .expect("encodes"),
            x509::extension(false, &x509::server_client_eku()).expect("encodes"),
            ski(&key),
            x509::extension(
                false,
                &AuthorityKeyIdentifier {
                    key_identifier: Some(OctetString::new(self.cert.key_id()).expect("fits")),
                    authority_cert_issuer: None,
                    authority_cert_serial_number: None,
                },
            )
            .expect("encodes"),
        ];
        if !names.is_empty() {
            extensions.push(
                x509::extension(spec.subject.is_empty(), &SubjectAltName(names)).expect("encodes"),
            );
        }
        Self::sign(
            &spec.subject,
            key,
            spec.not_before,
            spec.not_after,
            extensions,
            Some(self),
        )
    }

    fn sign(
        subject: &str,
        key: SigningKey,
        not_before: SystemTime,
        not_after: SystemTime,
        extensions: Vec<x509_cert::ext::Extension>,
        issuer: Option<&TestCa>,
    ) -> TestCa {
        let subject = Name::from_str(subject).expect("RFC 4514 subject");
        let template = CertTemplate {
            serial: x509::new_serial(),
            subject: subject.clone(),
            not_before,
            not_after,
            spki: key.subject_public_key_info(),
            extensions,
        };
        let der = match issuer {
            Some(parent) => x509::sign_certificate(template, parent.cert.subject(), &parent.key),
            None => x509::sign_certificate(template, &subject, &key),
        }
        .expect("signs");
        TestCa {
            cert: ParsedCert::from_der(&der).expect("parses"),
            key,
        }
    }

    pub fn pem(&self) -> String {
        self.cert.to_pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.pkcs8_pem()
    }
}

fn ski(key: &SigningKey) -> x509_cert::ext::Extension {
    x509::extension(
        false,
        &SubjectKeyIdentifier(
            OctetString::new(keys::key_identifier(key.public_key_bits())).expect("fits"),
        ),
    )
    .expect("encodes")
}

// === impl GeneratedChain ===

impl GeneratedChain {
    pub fn new(key_type: KeyType) -> Self {
        let spec = |s: &str| CaSpec {
            key_type,
            ..CaSpec::new(s)
        };
        let root = TestCa::new(&spec("CN=Generated Root,O=meshca tests"), None);
        let intermediate = TestCa::new(
            &spec("CN=Generated Intermediate,O=meshca tests"),
            Some(&root),
        );
        let signing = TestCa::new(
            &spec("CN=Generated Signing CA,O=meshca tests"),
            Some(&intermediate),
        );
        Self {
            root,
            intermediate,
            signing,
        }
    }

    /// Writes it as an Istio `cacerts` directory.
    pub fn write(&self, dir: &Path) {
        write_istio_dir(
            dir,
            &self.signing.pem(),
            &self.signing.key_pem(),
            &self.root.pem(),
            &format!("{}{}", self.signing.pem(), self.intermediate.pem()),
        );
    }
}

/// Writes an Istio `cacerts` directory.
pub fn write_istio_dir(dir: &Path, ca_cert: &str, ca_key: &str, root_cert: &str, cert_chain: &str) {
    std::fs::create_dir_all(dir).expect("create cacerts dir");
    for (name, body) in [
        ("ca-cert.pem", ca_cert),
        ("ca-key.pem", ca_key),
        ("root-cert.pem", root_cert),
        ("cert-chain.pem", cert_chain),
    ] {
        std::fs::write(dir.join(name), body).expect("write cacerts file");
    }
}

/// An issuance record with serial `serial` for `spiffe://cluster.local/ns/default/sa/web`, for
/// store tests (every optional column filled, so each is written and read back).
pub fn issuance_record(serial: &str) -> crate::store::IssuanceRecord {
    crate::store::IssuanceRecord {
        issuance: crate::store::Issuance {
            serial: serial.into(),
            spiffe_id: "spiffe://cluster.local/ns/default/sa/web".into(),
            namespace: Some("default".into()),
            service_account: Some("web".into()),
            not_before: 1,
            not_after: 2,
            issued_at: 1,
            authority_id: "a".into(),
            requester_method: "jwt".into(),
            requester_principal: "p".into(),
            peer_address: Some("10.0.0.7:41234".into()),
            cluster_id: Some("Kubernetes".into()),
            public_key_sha256: "00".into(),
            impersonated_by: None,
            requester_pod: None,
            requester_node: None,
        },
        trust_domain: "cluster.local".into(),
        cert_der: vec![0x30, 0x00],
        bundle_as_of: 7,
    }
}

/// A `certificate.issue` audit event for `target`, to go with [`issuance_record`].
pub fn issuance_event(target: &str) -> crate::audit::AuditEvent {
    crate::audit::AuditEvent::new(
        ("jwt", "p"),
        "certificate.issue",
        target,
        crate::audit::Outcome::Success,
        serde_json::json!({ "target": target }),
    )
}

/// The targets of the newest `limit` audit events in `store`, newest first.
pub async fn audit_targets(store: &crate::store::Store, limit: i64) -> Vec<String> {
    store
        .audit_events(&Default::default(), None, limit)
        .await
        .expect("read the audit log")
        .into_iter()
        .map(|e| e.target)
        .collect()
}

/// A URL of `MESHCA_TEST_POSTGRES_URL`'s database whose connections land in a new, empty
/// schema, so tests never see each other's rows. Without the variable a test is skipped with
/// the reason printed, except in CI (`CI` set), where a PostgreSQL test that passes without
/// PostgreSQL would hide exactly what it is there to catch.
pub async fn postgres_url(test: &str) -> Option<String> {
    let Ok(base) = std::env::var("MESHCA_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: MESHCA_TEST_POSTGRES_URL is not set (.ci/run sets it)"
        );
        eprintln!("{test}: PostgreSQL part skipped: MESHCA_TEST_POSTGRES_URL is not set");
        return None;
    };
    let mut suffix = [0u8; 6];
    aws_lc_rs::rand::fill(&mut suffix).expect("system randomness");
    let schema = format!("meshca_test_{}", hex::encode(suffix));
    let pool = sqlx::PgPool::connect(&base)
        .await
        .expect("MESHCA_TEST_POSTGRES_URL reachable");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .expect("CREATE SCHEMA");
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

fn synthetic_columns() -> &'static str {
    "serial, spiffe_id, trust_domain, namespace, service_account, not_before, not_after, \
     issued_at, authority_id, requester_method, requester_principal, peer_address, cluster_id, \
     public_key_sha256, cert_der, bundle_as_of"
}

/// How synthetic certificates are spread over time and identities. Identity `k` (certificate
/// `n` has `k = n % identities`) is `spiffe://cluster.local/ns/ns-{k % namespaces}/sa/sa-{k /
/// namespaces}`.
#[derive(Clone, Copy, Debug)]
pub struct InventoryShape {
    /// Certificates are issued evenly over this many seconds.
    pub span_secs: i64,
    pub identities: i64,
    pub namespaces: i64,
}

impl InventoryShape {
    /// Three months of history: 90 days of 24 h certificates for 7,000 workloads in 1,000
    /// namespaces, so all but about a day's worth are expired.
    pub const NINETY_DAYS: Self = Self {
        span_secs: 90 * 86_400,
        identities: 7_000,
        namespaces: 1_000,
    };
    /// A fleet's busy day: every certificate issued in the last 24 h, so all of them live, for
    /// 50 identities in 10 namespaces (Deployments with many replicas sharing an identity).
    pub const BUSY_DAY: Self = Self {
        span_secs: 86_400,
        identities: 50,
        namespaces: 10,
    };

    /// The service accounts per namespace.
    pub fn accounts_per_namespace(&self) -> i64 {
        self.identities / self.namespaces
    }
}

/// Inserts `rows` certificates generated inside the database (a recursive CTE on SQLite,
/// `generate_series` on PostgreSQL), issued evenly over the shape's span from `base`: 24 h
/// each, under two authorities (`authority-old` for the first half), each with a ~600-byte
/// DER; 0.1 % revoked. What the inventory benches query.
pub async fn load_synthetic_inventory(
    store: &crate::store::Store,
    rows: i64,
    base: i64,
    shape: InventoryShape,
) {
    const DAY_SECS: i64 = 86_400;
    let (span, base_time) = (shape.span_secs, base);
    let (identities, namespaces) = (shape.identities, shape.namespaces);
    // Namespace and service account of certificate `n`, as SQL expressions.
    let ns = format!("'ns-' || (n % {identities} % {namespaces})");
    let sa = format!("'sa-' || (n % {identities} / {namespaces})");
    match store {
        crate::store::Store::Sqlite(pool) => {
            let sql = format!(
                "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {rows}) \
                 INSERT INTO issued_certificates ({cols}) SELECT \
                 printf('%032x', n), \
                 'spiffe://cluster.local/ns/' || {ns} || '/sa/' || {sa}, \
                 'cluster.local', {ns}, {sa}, \
                 {base_time} + n * {span} / {rows} - 120, {base_time} + n * {span} / {rows} + {DAY_SECS}, \
                 {base_time} + n * {span} / {rows}, \
                 CASE WHEN n * 2 < {rows} THEN 'authority-old' ELSE 'authority-new' END, \
                 'jwt', {ns} || '/' || {sa}, '10.0.0.1:40000', 'Kubernetes', \
                 printf('%064x', n), randomblob(600), 0 FROM seq",
                cols = synthetic_columns()
            );
            sqlx::query(&sql).execute(pool).await.unwrap();
            sqlx::query(
                "INSERT INTO certificate_revocations (serial, reason, revoked_at, actor) \
                 SELECT serial, 'keyCompromise', issued_at + 60, 'bench' \
                 FROM issued_certificates WHERE id % 1000 = 7",
            )
            .execute(pool)
            .await
            .unwrap();
            count_synthetic_load(store).await;
            sqlx::query("ANALYZE").execute(pool).await.unwrap();
        }
        crate::store::Store::Postgres(pool) => {
            let sql = format!(
                "INSERT INTO issued_certificates ({cols}) SELECT \
                 lpad(to_hex(n), 32, '0'), \
                 'spiffe://cluster.local/ns/' || {ns} || '/sa/' || {sa}, \
                 'cluster.local', {ns}, {sa}, \
                 {base_time} + n * {span} / {rows} - 120, {base_time} + n * {span} / {rows} + {DAY_SECS}, \
                 {base_time} + n * {span} / {rows}, \
                 CASE WHEN n * 2 < {rows} THEN 'authority-old' ELSE 'authority-new' END, \
                 'jwt', {ns} || '/' || {sa}, '10.0.0.1:40000', 'Kubernetes', \
                 lpad(to_hex(n), 64, '0'), decode(repeat(md5(n::text), 38), 'hex'), 0 \
                 FROM generate_series(1::bigint, {rows}::bigint) AS n",
                cols = synthetic_columns()
            );
            sqlx::query(&sql).execute(pool).await.unwrap();
            sqlx::query(
                "INSERT INTO certificate_revocations (serial, reason, revoked_at, actor) \
                 SELECT serial, 'keyCompromise', issued_at + 60, 'bench' \
                 FROM issued_certificates WHERE id % 1000 = 7",
            )
            .execute(pool)
            .await
            .unwrap();
            // As autovacuum leaves a table after a day of inserts: statistics, and the visibility
            // map that lets a query answer from an index alone.
            sqlx::query("VACUUM (ANALYZE) issued_certificates, certificate_revocations")
                .execute(pool)
                .await
                .unwrap();
        }
    }
}

/// Counts certificates a synthetic load put in by SQL, as the issuance writer would have
/// counted them: on SQLite the writer keeps the rotation gates' and the console's counters
/// (`store::sqlite_counters`), and a load that bypasses it leaves them empty. PostgreSQL's
/// triggers count every row as it goes in.
pub async fn count_synthetic_load(store: &crate::store::Store) {
    if let crate::store::Store::Sqlite(pool) = store {
        let mut tx = pool.begin().await.unwrap();
        for sql in crate::store::sqlite_counters::RECOUNT {
            sqlx::query(sql).execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
}

/// Appends `rows` audit events, one per synthetic certificate (`certificate.issue`, its serial
/// as target) with every 200th a refusal, evenly over `span_secs` from `base`, and moves the
/// chain's head past them. The hashes are not a chain: for benches of the log's listings,
/// never of its verification.
pub async fn load_synthetic_audit_log(
    store: &crate::store::Store,
    rows: i64,
    base: i64,
    span_secs: i64,
) {
    let select = |series: &str, hex: &str| {
        format!(
            "INSERT INTO audit_events (seq, at, actor_method, actor_principal, action, target, \
             outcome, details, prev_hash, hash) SELECT n, {base} + n * {span_secs} / {rows}, \
             'jwt', 'system:serviceaccount:ns-' || (n % 1000) || ':sa-' || (n % 7), \
             'certificate.issue', {hex}, \
             CASE WHEN n % 200 = 0 THEN 'refused' ELSE 'success' END, '{{}}', '00', '00' \
             FROM {series}"
        )
    };
    let head = format!("UPDATE audit_head SET seq = {rows} WHERE id = 1");
    match store {
        crate::store::Store::Sqlite(pool) => {
            let sql = format!(
                "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {rows}) {}",
                select("seq", "printf('%032x', n)")
            );
            sqlx::query(&sql).execute(pool).await.unwrap();
            sqlx::query(&head).execute(pool).await.unwrap();
            sqlx::query("ANALYZE").execute(pool).await.unwrap();
        }
        crate::store::Store::Postgres(pool) => {
            let series = format!("generate_series(1::bigint, {rows}::bigint) AS n");
            let sql = select(&series, "lpad(to_hex(n), 32, '0')");
            sqlx::query(&sql).execute(pool).await.unwrap();
            sqlx::query(&head).execute(pool).await.unwrap();
            sqlx::query("ANALYZE").execute(pool).await.unwrap();
        }
    }
}

/// Drops the counters' expired buckets the way a running CA does ([`Store::prune_counters`])
/// after a synthetic load. A loader writes months of buckets at once and the prune then deletes
/// nearly all of them; a running CA prunes a few expired buckets at a time and autovacuum
/// reuses their space, so its counter tables stay a day of buckets long. On PostgreSQL the
/// tables are rewritten to that size (`VACUUM FULL`): otherwise the gate sums would scan the
/// pages of a bloat no running store has (and a test server may run with autovacuum off).
///
/// [`Store::prune_counters`]: crate::store::Store::prune_counters
pub async fn prune_counters_after_load(store: &crate::store::Store, now: i64) {
    store.prune_counters(now).await.unwrap();
    if let crate::store::Store::Postgres(pool) = store {
        sqlx::query(
            "VACUUM (FULL, ANALYZE) live_certificate_counts, identity_counts, bundle_counts, \
             identity_latest",
        )
        .execute(pool)
        .await
        .unwrap();
    }
}
