//! What the workspace's PostgreSQL tests, the benchmark and the bank example
//! share: where the server is ([`database_url`]), a schema of its own per
//! test ([`fresh_schema`], [`config`], [`fresh_store`], [`drop_schema`]),
//! and the exactly-once recipe as a test projection ([`AppliedRecorder`]).
//! URLs are printed through [`eventcore_postgres::redact_secrets`].
//!
//! Not published: it knows this repository's `scripts/dev-db`.

mod recorder;

use std::{
    io,
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
    sync::OnceLock,
};

use eventcore_postgres::{PostgresConfig, PostgresConfigBuilder, PostgresEventStore};
use sqlx::AssertSqlSafe;

pub use recorder::{AppliedRecorder, applications};

/// The repository's `scripts/dev-db`, which runs throwaway local clusters.
pub const DEV_DB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/dev-db");

/// Why no server URL could be found.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseUrlError {
    /// `scripts/dev-db` could not be started.
    #[error("cannot run {}: {source}; set DATABASE_URL to a PostgreSQL server", script.display())]
    Run {
        /// The script's path.
        script: PathBuf,
        /// Why it did not start.
        source: io::Error,
    },
    /// `scripts/dev-db url` failed (its messages went to stderr).
    #[error("`scripts/dev-db url` failed ({0}); set DATABASE_URL to a PostgreSQL server")]
    Failed(ExitStatus),
    /// `scripts/dev-db url` succeeded but printed no URL.
    #[error("`scripts/dev-db url` printed no URL")]
    NoUrl,
}

/// The server: `DATABASE_URL` if set and not empty, else the URL of the
/// throwaway cluster `scripts/dev-db` starts (or reuses). The script's
/// progress messages go to this process's stderr.
pub fn database_url() -> Result<String, DatabaseUrlError> {
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.trim().is_empty()
    {
        return Ok(url.trim().to_owned());
    }
    let script = PathBuf::from(DEV_DB);
    let out = Command::new(&script)
        .arg("url")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| DatabaseUrlError::Run {
            script: script.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(DatabaseUrlError::Failed(out.status));
    }
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if url.is_empty() {
        return Err(DatabaseUrlError::NoUrl);
    }
    Ok(url)
}

/// [`database_url`], looked up once per test binary; panics if there is none.
pub fn test_database_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| database_url().unwrap_or_else(|e| panic!("no test database: {e}")))
}

/// A schema name no other test uses: `t_` and a UUIDv7.
/// `scripts/sweep-test-schemas` drops these schemas an hour after their
/// creation (tests leave them, for inspection after a failure).
pub fn fresh_schema() -> String {
    format!("t_{}", uuid::Uuid::now_v7().simple())
}

/// A builder pointing at the test database and a fresh schema, with room
/// for a test's concurrent tasks and no idle connections kept.
pub fn config() -> PostgresConfigBuilder {
    PostgresConfigBuilder::new()
        .database_url(test_database_url())
        .schema(fresh_schema())
        .max_connections(16)
        .min_connections(0)
}

/// An initialized store in a fresh schema.
pub async fn fresh_store() -> PostgresEventStore {
    store_with(config().build().expect("valid config")).await
}

/// An initialized store for `config`.
pub async fn store_with(config: PostgresConfig) -> PostgresEventStore {
    let store = PostgresEventStore::new(config).await.expect("connect");
    store.initialize().await.expect("initialize");
    store
}

/// Drops the store's schema and everything in it.
pub async fn drop_schema(store: &PostgresEventStore) -> Result<(), sqlx::Error> {
    let schema = &store.config().schema;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(store.pool())
    .await
    .map(drop)
}
