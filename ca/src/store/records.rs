//! What the store reads and writes, as plain rows, and why a store operation failed. No SQL
//! here: the writers and queries beside this module share these types.

use crate::audit::AuditEvent;
use crate::rotation::AuthorityState;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("store URL {0:?} is neither sqlite: nor postgres:")]
    UnsupportedUrl(String),
    #[error("opening the store: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migrating the store schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "an in-memory SQLite store cannot be shared with the issuance writer; give a database file"
    )]
    InMemory,
    #[error("store query failed: {0}")]
    Query(#[source] sqlx::Error),
    /// From the SQLite issuance writer ([`super::sqlite_writer`]).
    #[error("store query failed: {0}")]
    Sqlite(#[source] rusqlite::Error),
}

impl StoreError {
    /// For the issuance writers, which live and die with the store: once its pool is closed
    /// (shutting down), nothing more is recorded and the writer lets go of its connection.
    pub(crate) fn refuse_when_closed<C>(
        pool_closed: bool,
        connection: &mut Option<C>,
    ) -> Result<(), StoreError> {
        if pool_closed {
            *connection = None;
            return Err(StoreError::Query(sqlx::Error::PoolClosed));
        }
        Ok(())
    }
}

/// Why an authority could not change state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    #[error("no authority {0}")]
    NotFound(String),
    #[error("authority {id} is {state}; this step needs it {required}")]
    WrongState {
        id: String,
        /// As recorded; a state this build does not know is shown as it is.
        state: String,
        required: AuthorityState,
    },
    #[error("another activation happened at the same time; retry")]
    Raced,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Declares a row struct with its `sqlx::FromRow`, each field read from the column of its name
/// and each `flatten` field from its own columns: what `#[derive(sqlx::FromRow)]` writes, without
/// sqlx's derive macros, which built its drivers and TLS a second time for the compiler.
macro_rules! row {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident: $ty:ty, )*
            $( flatten $(#[$nested_meta:meta])* pub $nested:ident: $nested_ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
            $( $(#[$nested_meta])* pub $nested: $nested_ty, )*
        }

        impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for $name
        where
            &'r str: sqlx::ColumnIndex<R>,
            $( $ty: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>, )*
            $( $nested_ty: sqlx::FromRow<'r, R>, )*
        {
            fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
                Ok(Self {
                    $( $field: row.try_get(stringify!($field))?, )*
                    $( $nested: <$nested_ty as sqlx::FromRow<'r, R>>::from_row(row)?, )*
                })
            }
        }
    };
}

row! {
    /// A certificate revocation as recorded.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RevocationRecord {
        pub serial: String,
        pub reason: String,
        pub revoked_at: i64,
        pub actor: String,
    }
}

row! {
    /// What is recorded of every issued certificate besides its DER: what it names, when it is
    /// valid, which authority signed it, and who asked for it. The inventory lists these.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Issuance {
        pub serial: String,
        /// Empty for meshca's own serving certificates.
        pub spiffe_id: String,
        pub namespace: Option<String>,
        pub service_account: Option<String>,
        pub not_before: i64,
        pub not_after: i64,
        pub issued_at: i64,
        pub authority_id: String,
        pub requester_method: String,
        pub requester_principal: String,
        pub peer_address: Option<String>,
        pub cluster_id: Option<String>,
        pub public_key_sha256: String,
        /// The node agent's own SPIFFE id when it asked for this certificate on behalf of a
        /// pod on its node (`ImpersonatedIdentity`).
        pub impersonated_by: Option<String>,
        /// The requester's pod, `namespace/name`, when its credential says.
        pub requester_pod: Option<String>,
        /// The requester's node, when its credential (or, for a node agent, its pod) says.
        pub requester_node: Option<String>,
    }
}

row! {
    /// One issued certificate, as the audit trail keeps it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct IssuanceRecord {
        pub trust_domain: String,
        pub cert_der: Vec<u8>,
        /// The trust bundle the answer carried, as [`AuthoritySet::bundle_as_of`]: which roots
        /// the workload was given (the rotation gates count renewed identities by it).
        ///
        /// [`AuthoritySet::bundle_as_of`]: crate::rotation::AuthoritySet::bundle_as_of
        pub bundle_as_of: i64,
        flatten pub issuance: Issuance,
    }
}

/// One issuance handed to the writer: its record, its audit event, and for a renewal the serial
/// of the certificate the caller presented. That serial's revocation is checked inside the
/// transaction that would record the new certificate, so a revocation committed before it
/// (through any replica) refuses the renewal, with no read of its own on the request path.
#[derive(Clone, Copy, Debug)]
pub struct BatchEntry<'a> {
    pub record: &'a IssuanceRecord,
    pub audit: &'a AuditEvent,
    pub renewal_of: Option<&'a str>,
}

/// What became of one issuance of a committed batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryOutcome {
    Recorded,
    /// Its serial is on record already (or earlier in the batch): sign again.
    SerialTaken,
    /// The certificate it renews is revoked: nothing recorded, the caller is refused.
    RenewalRevoked {
        serial: String,
        reason: String,
    },
}

impl<'a> BatchEntry<'a> {
    /// An issuance that renews nothing (a token, an Athenz certificate, a serving certificate).
    pub fn new(record: &'a IssuanceRecord, audit: &'a AuditEvent) -> Self {
        Self {
            record,
            audit,
            renewal_of: None,
        }
    }
}

row! {
    /// An authority as persisted; the key only ever sealed.
    #[derive(Clone, PartialEq, Eq)]
    pub struct StoredAuthority {
        pub id: String,
        pub state: String,
        pub source: String,
        pub key_type: String,
        pub cert_der: Vec<u8>,
        pub chain_pem: String,
        pub roots_pem: String,
        pub sealed_key: Vec<u8>,
        pub kek_id: String,
        pub created_at: i64,
        pub updated_at: i64,
    }
}

impl std::fmt::Debug for StoredAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredAuthority")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("source", &self.source)
            .field("key_type", &self.key_type)
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

/// Filters for `GET /v1/audit`; all optional, combined with AND.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub outcome: Option<String>,
    /// Only refusals and denials (any outcome but `success`).
    pub unsuccessful: bool,
    pub target: Option<String>,
    /// Unix seconds, inclusive.
    pub since: Option<i64>,
    /// Unix seconds, exclusive.
    pub until: Option<i64>,
}

/// What an auditor can filter certificates by; all optional, combined with AND.
#[derive(Clone, Debug, Default)]
pub struct CertificateFilter {
    pub serial: Option<String>,
    /// Exact, or a prefix when it ends with `*`.
    pub spiffe_id: Option<String>,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub authority: Option<String>,
    /// The requester's principal (service account, Athenz CN, SPIFFE id).
    pub requester: Option<String>,
    /// Issued to a node agent on behalf of a pod: the agent's SPIFFE id, or `*` for any.
    pub impersonated_by: Option<String>,
    /// The node the requester runs on.
    pub requester_node: Option<String>,
    pub issued_after: Option<i64>,
    pub issued_before: Option<i64>,
    pub expires_after: Option<i64>,
    pub expires_before: Option<i64>,
    pub status: Option<CertificateStatus>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateStatus {
    /// Unexpired and not revoked.
    Valid,
    Expired,
    Revoked,
}

row! {
    /// A certificate in the inventory (without its DER).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct CertificateRow {
        pub id: i64,
        pub revoked_at: Option<i64>,
        pub revocation_reason: Option<String>,
        flatten pub issuance: Issuance,
    }
}

/// Live holders (identities or certificates) at some moment, and how many of them were given a
/// bundle at least as new as some root's arrival.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Renewal {
    pub live: i64,
    pub renewed: i64,
}

/// One replica's report of its trust-bundle streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleDelivery {
    pub replica: String,
    pub connected: i64,
    /// Root fingerprint → agents that were sent a bundle holding it.
    pub received: std::collections::BTreeMap<String, i64>,
}

/// A signed-in console session as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleSession {
    /// SHA-256 (hex) of the id in the browser's cookie.
    pub id_sha256: String,
    /// How the browser signed in: `token` or `mtls`.
    pub method: String,
    /// The token's configured name, or the client certificate's SPIFFE id.
    pub principal: String,
    /// The role it signed in with: `admin` or `auditor`.
    pub role: String,
    /// SHA-256 (hex) of the bearer token it signed in with; `None` for a client certificate.
    pub token_sha256: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
}
