//! The transaction counter against the stored positions, on the shared
//! server: a counter behind the newest position (as after a logical restore
//! that did not advance it) is found by `initialize()`, `health_check()`
//! and a store's first append. The restore itself, and the range's end,
//! need clusters of their own: `eventcore-cli/tests/cli/restore.rs`.

use eventcore::{AppendRequest, EventStore, ExpectedVersion, GlobalPosition, NewEvent, StreamId};
use eventcore_postgres::{PostgresError, PostgresEventStore};
use eventcore_test_support::fresh_store;
use sqlx::AssertSqlSafe;

fn one(stream: &str) -> AppendRequest {
    AppendRequest::new().append(
        StreamId::new(stream).unwrap(),
        ExpectedVersion::Any,
        vec![NewEvent::raw("Fact", serde_json::json!({}))],
    )
}

async fn count(store: &PostgresEventStore) -> i64 {
    let schema = &store.config().schema;
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.events"
    )))
    .fetch_one(store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn health_reports_the_counter_past_the_newest_position() {
    let store = fresh_store().await;
    let outcome = store.append(one("counter-1")).await.unwrap();
    let h = store.health_check().await.unwrap();
    assert!(h.is_healthy, "{:?}", h.problems);
    let counter = h.transaction_counter.expect("read");
    assert_eq!(
        counter.newest_position,
        outcome.positions.map(|(_, last)| last)
    );
    assert!(counter.next_transaction_id > counter.newest_transaction_id().unwrap());
    assert!(!counter.is_behind() && !counter.is_exhausted());
    assert!(counter.ids_left() > 1 << 42, "a young cluster");
}

/// A restored event whose transaction id is ahead of the cluster's counter
/// (written straight into the table, as `pg_restore` does): everything
/// that would write refuses with the typed error, and nothing is written.
#[tokio::test]
async fn a_counter_behind_the_newest_position_refuses_writes() {
    let store = fresh_store().await;
    let schema = store.config().schema.clone();
    let next: String = sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let ahead = next.parse::<u64>().unwrap() + 1_000_000_000;
    let restored = GlobalPosition::new((ahead << 20) + 1);
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.events (global_position, event_id, stream_id, stream_version, \
                                      event_type, schema_version, event_data, metadata, occurred_at, correlation_id) \
         VALUES ($1, $2, 'restored-1', 1, 'Fact', 1, '{{}}', '{{}}', now(), gen_random_uuid())"
    )))
    .bind(restored.get() as i64)
    .bind(uuid::Uuid::now_v7())
    .execute(store.pool())
    .await
    .unwrap();

    let behind = |e: &PostgresError| match e {
        PostgresError::TransactionCounterBehind {
            schema: s,
            newest_position,
            next_transaction_id,
        } => {
            assert_eq!(s, &schema);
            assert_eq!(*newest_position, restored);
            assert!(*next_transaction_id < ahead);
            assert!(e.to_string().contains("eventcore restore-check"), "{e}");
        }
        other => panic!("expected TransactionCounterBehind, got {other:?}"),
    };

    let err = store.initialize().await.expect_err("initialize refuses");
    behind(&err);

    let h = store.health_check().await.unwrap();
    assert!(!h.is_healthy);
    assert!(h.transaction_counter.unwrap().is_behind());
    assert!(
        h.problems.iter().any(|p| p.contains("transaction counter")),
        "{:?}",
        h.problems
    );

    // A store of a new process: its first append checks.
    let fresh = PostgresEventStore::new(store.config().clone())
        .await
        .unwrap();
    let err = fresh.append(one("counter-2")).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    match &err {
        eventcore::Error::Backend { source, .. } => behind(
            source
                .downcast_ref::<PostgresError>()
                .expect("typed source"),
        ),
        other => panic!("expected Backend, got {other:?}"),
    }
    assert_eq!(count(&store).await, 1, "nothing written");
}
