//! What the workspace's PostgreSQL tests, the benchmark and the bank example
//! share: where the server is ([`database_url`]), a schema of its own per
//! test ([`fresh_schema`], [`config`], [`fresh_store`], [`drop_schema`]),
//! and the exactly-once recipe as a test projection ([`AppliedRecorder`]).
//! URLs are printed through [`eventcore_postgres::redact_secrets`].
//!
//! With `EVENTCORE_TEST_POOLER=transaction` every store [`config`] builds
//! goes through PgBouncer in transaction mode ([`pgbouncer_url`]) with
//! `Pooler::Transaction`, waking up through a direct `notify_url`;
//! [`test_database_url`] and [`direct_pool`] stay direct, for the tests'
//! own setup, inspection and faults.
//!
//! Not published: it knows this repository's `scripts/dev-db`.

mod recorder;

use std::{
    io,
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
    sync::OnceLock,
};

use eventcore_postgres::{Pooler, PostgresConfig, PostgresConfigBuilder, PostgresEventStore};
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

/// Whether this run's stores go through PgBouncer in transaction mode
/// (`EVENTCORE_TEST_POOLER=transaction`; unset, empty or `none`: direct).
pub fn pooled() -> bool {
    static POOLED: OnceLock<bool> = OnceLock::new();
    *POOLED.get_or_init(|| match std::env::var("EVENTCORE_TEST_POOLER") {
        Ok(v) if v == "transaction" => true,
        Ok(v) if v.is_empty() || v == "none" => false,
        Ok(v) => panic!("EVENTCORE_TEST_POOLER={v:?}: expected \"transaction\" or \"none\""),
        Err(_) => false,
    })
}

/// PgBouncer (transaction mode) in front of the test database's cluster:
/// `scripts/dev-db pgbouncer-url`, which prints `EVENTCORE_PGBOUNCER_URL`
/// as-is when set. Looked up once per test binary; panics if there is none.
pub fn pgbouncer_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let out = Command::new(DEV_DB)
            .arg("pgbouncer-url")
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {DEV_DB}: {e}"));
        assert!(
            out.status.success(),
            "`scripts/dev-db pgbouncer-url` failed ({})",
            out.status
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
}

/// A pool of direct connections to the test database, for a test's own
/// statements, whichever way its stores connect.
pub async fn direct_pool() -> sqlx::PgPool {
    sqlx::PgPool::connect(test_database_url())
        .await
        .expect("connect directly")
}

/// A schema name no other test uses: `t_` and a UUIDv7.
/// `scripts/sweep-test-schemas` drops these schemas an hour after their
/// creation (tests leave them, for inspection after a failure).
pub fn fresh_schema() -> String {
    format!("t_{}", uuid::Uuid::now_v7().simple())
}

/// A builder pointing at the test database (through PgBouncer when the
/// run is [`pooled`]) and a fresh schema, with room for a test's concurrent
/// tasks and no idle connections kept.
pub fn config() -> PostgresConfigBuilder {
    let builder = PostgresConfigBuilder::new()
        .schema(fresh_schema())
        .max_connections(16)
        .min_connections(0);
    if pooled() {
        builder
            .database_url(pgbouncer_url())
            .pooler(Pooler::Transaction)
            .notify_url(test_database_url())
    } else {
        builder.database_url(test_database_url())
    }
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
