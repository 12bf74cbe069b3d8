//! Shared helpers: one database URL per test run, one fresh schema per test.
//!
//! With `EVENTCORE_TEST_POOLER=transaction` every store these helpers build
//! goes through PgBouncer in transaction mode (`scripts/dev-db
//! pgbouncer-url`, or `EVENTCORE_PGBOUNCER_URL`) with
//! [`Pooler::Transaction`], and wakes up through a direct `notify_url`;
//! the tests' own administrative connections ([`database_url`]) stay direct.

use std::{process::Command, sync::OnceLock};

use eventcore_postgres::{Pooler, PostgresConfig, PostgresConfigBuilder, PostgresEventStore};

/// The output of `scripts/dev-db <command>`.
fn dev_db(command: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/dev-db");
    let out = Command::new(script)
        .arg(command)
        .output()
        .unwrap_or_else(|e| panic!("run scripts/dev-db {command}: {e}"));
    assert!(
        out.status.success(),
        "scripts/dev-db {command} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 url")
        .trim()
        .to_owned()
}

/// `DATABASE_URL`, or the URL of the cluster `scripts/dev-db` starts (or
/// reuses): a direct connection.
pub(crate) fn database_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| std::env::var("DATABASE_URL").unwrap_or_else(|_| dev_db("url")))
}

/// Whether this run's stores go through PgBouncer in transaction mode
/// (`EVENTCORE_TEST_POOLER=transaction`).
pub(crate) fn pooled() -> bool {
    static POOLED: OnceLock<bool> = OnceLock::new();
    *POOLED.get_or_init(|| match std::env::var("EVENTCORE_TEST_POOLER") {
        Ok(v) if v == "transaction" => true,
        Ok(v) if v.is_empty() || v == "none" => false,
        Ok(v) => panic!("EVENTCORE_TEST_POOLER={v:?}: expected \"transaction\" or \"none\""),
        Err(_) => false,
    })
}

/// PgBouncer's URL (transaction mode) in front of [`database_url`]'s cluster.
pub(crate) fn pgbouncer_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| dev_db("pgbouncer-url"))
}

/// A pool of direct connections to the test database, for the tests' own
/// statements (setup, inspection, faults), whichever way the stores connect.
pub(crate) async fn direct_pool() -> sqlx::PgPool {
    sqlx::PgPool::connect(database_url())
        .await
        .expect("connect directly")
}

/// A schema name no other test uses.
pub(crate) fn fresh_schema() -> String {
    format!("t_{}", uuid::Uuid::now_v7().simple())
}

/// A builder pointing at the test database and a fresh schema: directly,
/// or through PgBouncer when the run is [`pooled`].
pub(crate) fn config() -> PostgresConfigBuilder {
    let builder = PostgresConfigBuilder::new()
        .schema(fresh_schema())
        .max_connections(16)
        .min_connections(0);
    if pooled() {
        builder
            .database_url(pgbouncer_url())
            .pooler(Pooler::Transaction)
            .notify_url(database_url())
    } else {
        builder.database_url(database_url())
    }
}

/// An initialized store in its own schema.
pub(crate) async fn fresh_store() -> PostgresEventStore {
    store_with(config().build().expect("valid config")).await
}

/// An initialized store for `config`.
pub(crate) async fn store_with(config: PostgresConfig) -> PostgresEventStore {
    let store = PostgresEventStore::new(config).await.expect("connect");
    store.initialize().await.expect("initialize");
    store
}
