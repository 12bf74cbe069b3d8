//! Shared helpers: one database URL per test run, one fresh schema per test.

use std::{process::Command, sync::OnceLock};

use eventcore_postgres::{PostgresConfig, PostgresConfigBuilder, PostgresEventStore};

/// `DATABASE_URL`, or the URL of the cluster `scripts/dev-db` starts (or reuses).
pub(crate) fn database_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return url;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/dev-db");
        let out = Command::new(script)
            .arg("url")
            .output()
            .expect("run scripts/dev-db url");
        assert!(
            out.status.success(),
            "scripts/dev-db url failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8 url")
            .trim()
            .to_owned()
    })
}

/// A schema name no other test uses.
pub(crate) fn fresh_schema() -> String {
    format!("t_{}", uuid::Uuid::now_v7().simple())
}

/// A builder pointing at the test database and a fresh schema.
pub(crate) fn config() -> PostgresConfigBuilder {
    PostgresConfigBuilder::new()
        .database_url(database_url())
        .schema(fresh_schema())
        .max_connections(16)
        .min_connections(0)
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
