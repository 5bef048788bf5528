//! The schema migrations, compiled into the binary (`migrations/<dialect>/*.sql`) and applied
//! by sqlx's migrator exactly as `sqlx::migrate!` would: the same versions, descriptions and
//! checksums, so stores migrated by earlier builds keep validating. Without sqlx's proc macros,
//! which compiled sqlx's drivers and TLS stack a second time, for the compiler.

use std::borrow::Cow;

use futures_util::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// `(file name, contents)` of each migration of `$dialect`, in order.
macro_rules! embedded {
    ($dialect:literal: $($file:literal),* $(,)?) => {
        &[$(
            ($file, include_str!(concat!("../../../migrations/", $dialect, "/", $file))),
        )*]
    };
}

pub(crate) const SQLITE: &[(&str, &str)] = embedded!("sqlite":
    "0001_issuance_and_authorities.sql",
    "0002_authority_rotation_and_revocation.sql",
    "0003_audit_log.sql",
    "0004_inventory_indexes.sql",
    "0005_rotation_counters.sql",
    "0006_node_agent_requests.sql",
    "0007_console.sql",
    "0009_commit_index_set.sql",
    "0010_issued_minute_index.sql",
    "0011_counters_in_the_writer.sql",
);

pub(crate) const POSTGRES: &[(&str, &str)] = embedded!("postgres":
    "0001_issuance_and_authorities.sql",
    "0002_authority_rotation_and_revocation.sql",
    "0003_audit_log.sql",
    "0004_inventory_indexes.sql",
    "0005_rotation_counters.sql",
    "0006_node_agent_requests.sql",
    "0007_console.sql",
    "0008_authority_notify.sql",
    "0009_commit_index_set.sql",
    "0010_issued_minute_index.sql",
);

/// A dialect's embedded migrations as a source for sqlx's [`Migrator`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Embedded(pub(crate) &'static [(&'static str, &'static str)]);

impl Embedded {
    pub(crate) async fn migrator(self) -> Result<Migrator, sqlx::migrate::MigrateError> {
        Migrator::new(self).await
    }
}

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            self.0
                .iter()
                .map(|(file, sql)| migration(file, sql))
                .collect()
        })
    }
}

/// What sqlx's directory source makes of `<version>_<description>.sql` (a simple migration,
/// in a transaction unless the script opts out).
fn migration(file: &str, sql: &'static str) -> Result<Migration, BoxDynError> {
    let stem = file
        .strip_suffix(".sql")
        .ok_or_else(|| format!("migration {file:?} is not a .sql file"))?;
    let (version, description) = stem
        .split_once('_')
        .ok_or_else(|| format!("migration {file:?} is not <version>_<description>.sql"))?;
    let version: i64 = version.parse()?;
    let no_tx = sql.starts_with("-- no-transaction");
    Ok(Migration::new(
        version,
        Cow::Owned(description.replace('_', " ")),
        MigrationType::Simple,
        Cow::Borrowed(sql),
        no_tx,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in `migrations/<dialect>/` is embedded, in order; a new migration that is not
    /// listed here would never run.
    #[test]
    fn every_migration_file_is_embedded() {
        for (dialect, embedded) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../migrations")
                .join(dialect);
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            let listed: Vec<&str> = embedded.iter().map(|(file, _)| *file).collect();
            assert_eq!(listed, files, "{dialect}");
        }
    }

    /// The same versions, descriptions and checksums as sqlx's directory source, so a store
    /// migrated by a build that used `sqlx::migrate!` validates.
    #[tokio::test]
    async fn migrations_are_what_the_directory_source_makes() {
        for (dialect, embedded) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../migrations")
                .join(dialect);
            let from_dir = Migrator::new(dir.as_path()).await.unwrap();
            let ours = Embedded(embedded).migrator().await.unwrap();
            let key = |m: &Migration| {
                (
                    m.version,
                    m.description.to_string(),
                    m.checksum.to_vec(),
                    m.no_tx,
                    m.migration_type,
                )
            };
            let expected: Vec<_> = from_dir.iter().map(key).collect();
            let actual: Vec<_> = ours.iter().map(key).collect();
            assert_eq!(actual, expected, "{dialect}");
        }
    }

    /// A store that has counted certificates under 0005–0007 keeps every count through 0009,
    /// and its revocation trigger still finds an identity's newest certificate without the
    /// serial index on `identity_latest` (and only that certificate).
    #[tokio::test]
    async fn revocations_find_their_identity_after_the_upgrade() {
        use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
        let tmp = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(tmp.path().join("upgrade.db"))
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        let before_0009 = SQLITE
            .iter()
            .position(|(file, _)| file.starts_with("0009_"))
            .unwrap();
        let earlier = Embedded(&SQLITE[..before_0009]).migrator().await.unwrap();
        earlier.run(&pool).await.unwrap();

        let far = 4_000_000_000_i64;
        for (serial, id, issued_at, bundle) in [
            ("01", "spiffe://td/ns/a/sa/a", 100, 10),
            ("02", "spiffe://td/ns/b/sa/b", 110, 10),
            ("03", "spiffe://td/ns/a/sa/a", 120, 20),
            ("04", "spiffe://td/ns/b/sa/b", 130, 20),
        ] {
            sqlx::query(
                "INSERT INTO issued_certificates (serial, spiffe_id, trust_domain, not_before, \
                 not_after, issued_at, authority_id, requester_method, requester_principal, \
                 public_key_sha256, cert_der, bundle_as_of) \
                 VALUES ($1, $2, 'td', $3, $4, $3, 'auth-1', 'jwt', 'p', '00', x'30', $5)",
            )
            .bind(serial)
            .bind(id)
            .bind(issued_at)
            .bind(far + issued_at)
            .bind(bundle)
            .execute(&pool)
            .await
            .unwrap();
        }
        let revoke = |serial: &'static str| {
            sqlx::query(
                "INSERT INTO certificate_revocations (serial, reason, revoked_at, actor) \
                 VALUES ($1, 'keyCompromise', 200, 'test')",
            )
            .bind(serial)
        };
        revoke("04").execute(&pool).await.unwrap();

        const COUNTERS: &str = "SELECT \
            (SELECT group_concat(authority_id || ':' || expires_bucket || '=' || n, ' ') \
             FROM (SELECT * FROM live_certificate_counts ORDER BY 1, 2)), \
            (SELECT group_concat(bundle_as_of || ':' || expires_bucket || '=' || n, ' ') \
             FROM (SELECT * FROM bundle_counts ORDER BY 1, 2)), \
            (SELECT group_concat(bundle_as_of || ':' || expires_bucket || '=' || n, ' ') \
             FROM (SELECT * FROM identity_counts ORDER BY 1, 2)), \
            (SELECT group_concat(spiffe_id || ':' || serial || '/' || counted, ' ') \
             FROM (SELECT * FROM identity_latest ORDER BY 1)), \
            (SELECT group_concat(hour || '=' || n, ' ') FROM issued_per_hour)";
        type Counters = (String, String, String, String, String);
        let counted: Counters = sqlx::query_as(COUNTERS).fetch_one(&pool).await.unwrap();
        let identities = |newest_a: u8, newest_b: u8| {
            format!(
                "10:{}=0 10:{}=0 20:{}={newest_a} 20:{}={newest_b}",
                far + 100,
                far + 110,
                far + 120,
                far + 130
            )
        };
        assert_eq!(counted.2, identities(1, 0));
        assert_eq!(
            counted.3,
            "spiffe://td/ns/a/sa/a:03/1 spiffe://td/ns/b/sa/b:04/0"
        );

        Embedded(SQLITE)
            .migrator()
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        let kept: Counters = sqlx::query_as(COUNTERS).fetch_one(&pool).await.unwrap();
        assert_eq!(kept, counted);

        // Revoking a's older certificate leaves a counted; its newest takes a out.
        revoke("01").execute(&pool).await.unwrap();
        let after_older: Counters = sqlx::query_as(COUNTERS).fetch_one(&pool).await.unwrap();
        assert_eq!(after_older.2, counted.2);
        revoke("03").execute(&pool).await.unwrap();
        let after_newest: Counters = sqlx::query_as(COUNTERS).fetch_one(&pool).await.unwrap();
        assert_eq!(after_newest.2, identities(0, 0));
        assert_eq!(
            after_newest.3,
            "spiffe://td/ns/a/sa/a:03/0 spiffe://td/ns/b/sa/b:04/0"
        );
        let live = [(100, 0), (110, 1), (120, 0), (130, 0)]
            .map(|(at, n)| format!("auth-1:{}={n}", far + at))
            .join(" ");
        assert_eq!(
            after_newest.0, live,
            "b's older certificate is the one left"
        );
    }
}
