//! Schema creation, migrations and the database-enforced invariants.

use std::time::Duration;

use eventcore::{
    AppendRequest, EventStore, ExpectedVersion, GlobalPosition, NewEvent, StreamId, StreamVersion,
};
use eventcore_postgres::{APPEND_ONLY_SQLSTATE, PostgresError, PostgresEventStore, SCHEMA_VERSION};
use eventcore_test_support::{config, fresh_store, store_with, test_database_url};
use sqlx::{AssertSqlSafe, Connection};

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
        "INSERT INTO {schema}.events (global_position, event_id, stream_id, stream_version, event_type, schema_version, event_data, metadata, occurred_at, correlation_id) \
         VALUES (1, gen_random_uuid(), 'unique-1', 1, 'Fact', 1, '{{}}', '{{}}', now(), gen_random_uuid())"
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

/// Runs `body` against a store in schema `name`, dropped before and after.
/// Reserved-word schemas are shared by every run against this database,
/// so runs of one name are serialised by an advisory lock.
async fn in_named_schema<F, Fut>(name: &str, body: F)
where
    F: FnOnce(eventcore_postgres::PostgresConfig) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut admin = sqlx::PgConnection::connect(test_database_url())
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("eventcore-it:schema:{name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let drop_schema = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
    sqlx::query(AssertSqlSafe(drop_schema.clone()))
        .execute(&mut admin)
        .await
        .unwrap();
    body(config().schema(name).build().unwrap()).await;
    sqlx::query(AssertSqlSafe(drop_schema))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// Issue 14 item 12: initialize, append (single- and multi-stream), read,
/// health and cross-process wake-ups (LISTEN/NOTIFY) in schema `name`.
async fn works_end_to_end(config: eventcore_postgres::PostgresConfig) {
    let schema = config.schema.clone();
    let writer = store_with(config.clone()).await;
    writer.initialize().await.expect("initialize is idempotent");
    // Another "process": a store of its own, with its own pool and listener.
    let reader = PostgresEventStore::new(config).await.unwrap();
    let mut wake = reader.commit_signal().expect("a commit signal");
    // The listener wakes subscribers once when it has connected.
    tokio::time::timeout(Duration::from_secs(10), wake.changed())
        .await
        .unwrap_or_else(|_| panic!("{schema}: the LISTEN connection never came up"))
        .unwrap();
    wake.borrow_and_update();

    let a = StreamId::new("acct-a").unwrap();
    let b = StreamId::new("acct-b").unwrap();
    writer
        .append(AppendRequest::new().append(
            a.clone(),
            ExpectedVersion::NoStream,
            vec![NewEvent::raw("Opened", serde_json::json!({"n": 1}))],
        ))
        .await
        .unwrap_or_else(|e| panic!("{schema}: single-stream append: {e}"));
    writer
        .append(
            AppendRequest::new()
                .append(
                    a.clone(),
                    ExpectedVersion::Exact(StreamVersion::new(1)),
                    vec![NewEvent::raw("Debited", serde_json::json!({"n": 2}))],
                )
                .append(
                    b.clone(),
                    ExpectedVersion::Any,
                    vec![NewEvent::raw("Credited", serde_json::json!({"n": 3}))],
                ),
        )
        .await
        .unwrap_or_else(|e| panic!("{schema}: multi-stream append: {e}"));
    tokio::time::timeout(Duration::from_secs(5), wake.changed())
        .await
        .unwrap_or_else(|_| panic!("{schema}: no NOTIFY reached the other store"))
        .unwrap();

    let events = reader
        .read_stream(&a, StreamVersion::new(1), 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "{schema}");
    assert_eq!(
        reader.stream_version(&b).await.unwrap(),
        StreamVersion::new(1)
    );
    let mut all = Vec::new();
    for _ in 0..200 {
        all = reader.read_all(GlobalPosition::START, 10).await.unwrap();
        if all.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let types: Vec<_> = all.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["Opened", "Debited", "Credited"], "{schema}");
    let health = reader.health_check().await.unwrap();
    assert!(health.database_reachable, "{schema}: {health:?}");
    assert_eq!(health.schema_version, Some(SCHEMA_VERSION), "{schema}");
    assert!(health.missing_objects.is_empty(), "{schema}: {health:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_user_works_end_to_end() {
    in_named_schema("user", works_end_to_end).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_select_works_end_to_end() {
    in_named_schema("select", works_end_to_end).await;
}

/// The longest name allowed (53 bytes: its NOTIFY channel is 63, the
/// identifier limit) works end to end, cross-process wake-ups included;
/// one byte more is refused at `build()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_schema_name_works_end_to_end_and_one_more_is_refused() {
    let mut name = format!("t_{}_", uuid::Uuid::now_v7().simple());
    while name.len() < 53 {
        name.push('x');
    }
    let refused = config().schema(format!("{name}x")).build().unwrap_err();
    assert!(refused.to_string().contains("NOTIFY channel"), "{refused}");
    in_named_schema(&name, works_end_to_end).await;
}

/// The objects a store relies on, damaged one at a time.
const TAMPERING: &[(&str, &str)] = &[
    ("DROP TABLE {s}.events", "table events missing"),
    (
        "DROP TABLE {s}.event_streams",
        "table event_streams missing",
    ),
    (
        "DROP TABLE {s}.projection_checkpoints",
        "table projection_checkpoints missing",
    ),
    (
        "DROP TRIGGER events_append_only ON {s}.events",
        "trigger events_append_only missing",
    ),
    (
        "ALTER TABLE {s}.events DISABLE TRIGGER events_no_truncate",
        "trigger events_no_truncate disabled",
    ),
    (
        "ALTER TABLE {s}.events DISABLE TRIGGER USER",
        "trigger events_append_only disabled",
    ),
    (
        "ALTER TABLE {s}.events ENABLE REPLICA TRIGGER events_append_only",
        "trigger events_append_only disabled",
    ),
    (
        "ALTER TABLE {s}.events DROP CONSTRAINT events_event_id_key",
        "index events_event_id_key missing",
    ),
    (
        "DROP FUNCTION {s}.append_to_streams",
        "function append_to_streams missing",
    ),
    (
        "DROP INDEX {s}.events_correlation_id_idx",
        "index events_correlation_id_idx missing",
    ),
];

/// Issue 14 item 13: after each kind of tampering, `initialize()` fails
/// with `SchemaDamaged` naming what is missing, and `health_check()` is
/// unhealthy and names it too.
#[tokio::test]
async fn tampering_is_noticed_by_initialize_and_health() {
    for (statement, expected) in TAMPERING {
        let store = fresh_store().await;
        let schema = store.config().schema.clone();
        sqlx::query(AssertSqlSafe(statement.replace("{s}", &schema)))
            .execute(store.pool())
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
        match store.initialize().await {
            Err(PostgresError::SchemaDamaged { schema: s, missing }) => {
                assert_eq!(s, schema);
                assert!(
                    missing.iter().any(|m| m == expected),
                    "{statement}: {missing:?}"
                );
            }
            other => panic!("{statement}: expected SchemaDamaged, got {other:?}"),
        }
        let h = store.health_check().await.unwrap();
        assert!(!h.is_healthy, "{statement}: {h:?}");
        assert!(h.database_reachable);
        assert!(
            h.missing_objects.iter().any(|m| m == expected),
            "{statement}: {h:?}"
        );
        assert!(
            h.problems
                .iter()
                .any(|p| p.contains("damaged") && p.contains(expected)),
            "{statement}: {:?}",
            h.problems
        );
    }
}

/// A schema migrated by a newer release: `initialize()` refuses it and
/// health is unhealthy, saying so.
#[tokio::test]
async fn a_newer_schema_is_refused_by_initialize_and_unhealthy() {
    let store = fresh_store().await;
    let schema = store.config().schema.clone();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.schema_migrations (version, name) VALUES (99, 'future')"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    match store.initialize().await {
        Err(PostgresError::SchemaTooNew { found: 99, known }) => {
            assert_eq!(known, SCHEMA_VERSION)
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let h = store.health_check().await.unwrap();
    assert!(!h.is_healthy);
    assert_eq!(h.schema_version, Some(99));
    assert!(
        h.problems
            .iter()
            .any(|p| p.contains("newer than this release") && p.contains("writes are refused")),
        "{:?}",
        h.problems
    );
}

/// Writes refuse, with a typed error and before anything is written, on a
/// schema migrated by a newer release, one not initialized, and a damaged
/// one; once the schema is right, the same store writes.
#[tokio::test]
async fn writes_refuse_on_a_newer_missing_or_damaged_schema() {
    let stream = StreamId::new("refused-1").unwrap();
    let one = || {
        AppendRequest::new().append(
            stream.clone(),
            ExpectedVersion::Any,
            vec![NewEvent::raw("Fact", serde_json::json!({}))],
        )
    };
    let source = |e: &eventcore::Error| match e {
        eventcore::Error::Backend { source, .. } => source
            .downcast_ref::<PostgresError>()
            .map(ToString::to_string)
            .unwrap_or_else(|| panic!("not a PostgresError: {e}")),
        other => panic!("expected Backend, got {other:?}"),
    };

    // Newer.
    let store = fresh_store().await;
    let schema = store.config().schema.clone();
    let count = |store: PostgresEventStore| async move {
        let schema = store.config().schema.clone();
        sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!(
            "SELECT count(*) FROM {schema}.events"
        )))
        .fetch_one(store.pool())
        .await
        .unwrap()
    };
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.schema_migrations (version, name) VALUES (99, 'future')"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let err = store.append(one()).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(source(&err).contains("newer than this release"), "{err}");
    assert_eq!(count(store.clone()).await, 0, "nothing written");
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {schema}.schema_migrations WHERE version = 99"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    store
        .append(one())
        .await
        .expect("the schema is current again");

    // Not initialized.
    let store = PostgresEventStore::new(config().build().unwrap())
        .await
        .unwrap();
    let err = store.append(one()).await.unwrap_err();
    assert!(source(&err).contains("not initialized"), "{err}");
    store.initialize().await.unwrap();
    store.append(one()).await.expect("initialized now");

    // Damaged before the store's first append.
    let store = fresh_store().await;
    let schema = store.config().schema.clone();
    let other = PostgresEventStore::new(store.config().clone())
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "DROP TRIGGER events_append_only ON {schema}.events"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let err = other.append(one()).await.unwrap_err();
    assert!(
        source(&err).contains("trigger events_append_only missing"),
        "{err}"
    );
    assert_eq!(count(store).await, 0, "nothing written");
}
