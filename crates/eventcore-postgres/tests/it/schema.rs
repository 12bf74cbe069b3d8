//! Schema creation, migrations and the database-enforced invariants.

use eventcore::{AppendRequest, EventStore, ExpectedVersion, NewEvent, StreamId};
use eventcore_postgres::{APPEND_ONLY_SQLSTATE, PostgresEventStore, SCHEMA_VERSION};
use sqlx::AssertSqlSafe;

use crate::support::{config, fresh_store};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_initializations_agree() {
    let config = config().build().unwrap();
    let stores: Vec<_> =
        futures::future::join_all((0..8).map(|_| PostgresEventStore::new(config.clone())))
            .await
            .into_iter()
            .map(|s| s.expect("connect"))
            .collect();
    assert_eq!(
        stores[0].schema_version().await.unwrap(),
        None,
        "not initialized yet"
    );
    let results = futures::future::join_all(stores.iter().map(|s| s.initialize())).await;
    for r in results {
        r.expect("every concurrent initialize succeeds");
    }
    stores[3].initialize().await.expect("and again, later");
    assert_eq!(
        stores[0].schema_version().await.unwrap(),
        Some(SCHEMA_VERSION)
    );
    let ledger: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.schema_migrations",
        config.schema
    )))
    .fetch_one(stores[0].pool())
    .await
    .unwrap();
    assert_eq!(
        ledger,
        i64::from(SCHEMA_VERSION),
        "each migration applied exactly once"
    );
}

#[tokio::test]
async fn events_are_append_only() {
    let store = fresh_store().await;
    let stream = StreamId::new("immutable-1").unwrap();
    store
        .append(AppendRequest::new().append(
            stream,
            ExpectedVersion::Any,
            vec![NewEvent::raw("Fact", serde_json::json!({"v": 1}))],
        ))
        .await
        .unwrap();
    let schema = &store.config().schema;
    for statement in [
        format!("UPDATE {schema}.events SET event_type = 'Changed'"),
        format!("DELETE FROM {schema}.events"),
        format!("TRUNCATE {schema}.events"),
    ] {
        let err = sqlx::query(AssertSqlSafe(statement.clone()))
            .execute(store.pool())
            .await
            .expect_err("the trigger refuses it");
        let code = err
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned());
        assert_eq!(
            code.as_deref(),
            Some(APPEND_ONLY_SQLSTATE),
            "{statement}: {err}"
        );
    }
    let count: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.events"
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn stream_versions_are_unique_in_the_database() {
    let store = fresh_store().await;
    let stream = StreamId::new("unique-1").unwrap();
    store
        .append(AppendRequest::new().append(
            stream,
            ExpectedVersion::Any,
            vec![NewEvent::raw("Fact", serde_json::json!({}))],
        ))
        .await
        .unwrap();
    // A writer bypassing the store cannot create a second version 1.
    let schema = &store.config().schema;
    let err = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.events (global_position, event_id, stream_id, stream_version, event_type, schema_version, event_data, metadata) \
         VALUES (1, gen_random_uuid(), 'unique-1', 1, 'Fact', 1, '{{}}', '{{}}')"
    )))
    .execute(store.pool())
    .await
    .expect_err("duplicate version refused");
    let db = err.as_database_error().expect("a database error");
    assert_eq!(db.constraint(), Some("events_stream_version_key"));
}

#[tokio::test]
async fn schemas_isolate_stores() {
    let a = fresh_store().await;
    let b = fresh_store().await;
    let stream = StreamId::new("shared-name").unwrap();
    a.append(AppendRequest::new().append(
        stream.clone(),
        ExpectedVersion::NoStream,
        vec![NewEvent::raw("InA", serde_json::json!({}))],
    ))
    .await
    .unwrap();
    assert_eq!(b.stream_version(&stream).await.unwrap().get(), 0);
    b.append(AppendRequest::new().append(
        stream.clone(),
        ExpectedVersion::NoStream,
        vec![NewEvent::raw("InB", serde_json::json!({}))],
    ))
    .await
    .expect("same stream name, other schema: no conflict");
}

#[tokio::test]
async fn health_reports_schema_state() {
    let store = PostgresEventStore::new(config().build().unwrap())
        .await
        .unwrap();
    let before = store.health_check().await.unwrap();
    assert!(before.database_reachable);
    assert!(!before.is_healthy, "uninitialized schema is unhealthy");
    assert_eq!(before.schema_version, None);
    assert!(before.problems.iter().any(|p| p.contains("initialize")));
    store.initialize().await.unwrap();
    let after = store.health_check().await.unwrap();
    assert!(after.is_healthy, "problems: {:?}", after.problems);
    assert_eq!(after.schema_version, Some(SCHEMA_VERSION));
    assert!(after.read_horizon.is_some());
    assert!(after.database_latency.as_secs() < 5);
}
