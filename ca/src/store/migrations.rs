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
}
