//! Behaviour specific to the PostgreSQL store: corrupt rows, timeouts, pool
//! limits, metrics, and the read horizon that makes `$all` skip-free.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use eventcore::{
    AppendRequest, CommandExecutor, Error, EventStore, ExpectedVersion, GlobalPosition, NewEvent,
    RetryPolicy, StreamId, StreamVersion,
};
use eventcore_postgres::{PostgresConfigBuilder, PostgresError, PostgresEventStore};
use eventcore_test_support::{config, fresh_store, store_with, test_database_url};
use sqlx::{AssertSqlSafe, Connection};

fn one(stream: &StreamId, kind: &str) -> AppendRequest {
    AppendRequest::new().append(
        stream.clone(),
        ExpectedVersion::Any,
        vec![NewEvent::raw(kind, serde_json::json!({ "k": kind }))],
    )
}

async fn all_after(store: &PostgresEventStore, after: GlobalPosition) -> Vec<String> {
    store
        .read_all(after, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

#[tokio::test]
async fn corrupt_rows_are_errors_naming_the_row() {
    let store = fresh_store().await;
    let schema = &store.config().schema;
    let stream = StreamId::new("corrupt-1").unwrap();
    store.append(one(&stream, "Good")).await.unwrap();
    // Custom metadata that is not an object, written behind the store's back.
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.events (global_position, event_id, stream_id, stream_version, event_type, schema_version, event_data, metadata, occurred_at, correlation_id) \
         VALUES (9223372036854775000, '018f0000-0000-7000-8000-000000000001', 'corrupt-1', 2, 'Bad', 1, '{{}}', '[1, 2]', now(), gen_random_uuid())"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let err = store
        .read_stream_to_end(&stream, StreamVersion::new(1))
        .await
        .unwrap_err();
    match err {
        Error::CorruptRow { what, reason, .. } => {
            assert!(
                what.contains("corrupt-1") && what.contains("version 2"),
                "{what}"
            );
            assert!(reason.contains("metadata"), "{reason}");
        }
        other => panic!("expected CorruptRow, got {other:?}"),
    }
    // The good event before it still reads.
    assert_eq!(
        store
            .read_stream(&stream, StreamVersion::new(1), 1)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn statements_past_query_timeout_fail_with_timeout() {
    let store = store_with(
        config()
            .query_timeout(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .await;
    let stream = StreamId::new("locked-1").unwrap();
    store.append(one(&stream, "First")).await.unwrap();
    // Hold the stream's row lock from another session, as a competing
    // writer would.
    let mut blocker = sqlx::PgConnection::connect(test_database_url())
        .await
        .unwrap();
    let mut tx = blocker.begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "SELECT 1 FROM {}.event_streams WHERE stream_id = 'locked-1' FOR UPDATE",
        store.config().schema
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let err = store.append(one(&stream, "Blocked")).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "got {err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    tx.rollback().await.unwrap();
    store
        .append(one(&stream, "Free"))
        .await
        .expect("lock released, append works");
    assert_eq!(
        store.stream_version(&stream).await.unwrap(),
        StreamVersion::new(2)
    );
}

#[tokio::test]
async fn exhausted_pool_is_a_typed_transient_error_and_counted() {
    let store = store_with(
        config()
            .max_connections(1)
            .connect_timeout(Duration::from_millis(200))
            .build()
            .unwrap(),
    )
    .await;
    let held = store.pool().acquire().await.unwrap();
    let err = store.read_all(GlobalPosition::START, 10).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "got {err:?}");
    assert!(err.is_transient());
    let metrics = store.get_pool_metrics();
    assert!(metrics.connection_timeouts >= 1);
    assert_eq!(metrics.current_connections, 1);
    assert!((metrics.utilization_percent - 100.0).abs() < f64::EPSILON);
    drop(held);
    store
        .read_all(GlobalPosition::START, 10)
        .await
        .expect("works once the connection is back");
}

#[tokio::test]
async fn unreachable_database_is_a_connect_error() {
    let config = PostgresConfigBuilder::new()
        .database_url("postgres://nobody@127.0.0.1:1/none")
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = PostgresEventStore::new(config).await.unwrap_err();
    assert!(matches!(err, PostgresError::Connect(_)), "got {err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let core: Error = err.into();
    assert!(core.is_transient(), "unreachable is retryable: {core}");
}

#[tokio::test]
async fn pool_metrics_and_monitoring() {
    let store = fresh_store().await;
    let stream = StreamId::new("metrics-1").unwrap();
    for _ in 0..5 {
        store.append(one(&stream, "Tick")).await.unwrap();
    }
    let m = store.get_pool_metrics();
    assert!(m.total_acquisitions >= 5);
    assert!(m.peak_connections >= 1);
    assert!(m.current_connections >= 1 && m.current_connections <= m.max_connections);
    assert!((0.0..=100.0).contains(&m.utilization_percent));

    // The monitor logs the pool every interval until stopped: info while
    // connections are free, a warning once they are all taken.
    let lines = Arc::new(Mutex::new(Vec::<u8>::new()));
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter("eventcore_postgres::pool=info")
        .with_writer({
            let lines = Arc::clone(&lines);
            move || Captured(Arc::clone(&lines))
        })
        .finish();
    // A current-thread runtime: the monitor task logs on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    let logged = |level: &str, message: &str| {
        let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|l| l.contains(level) && l.contains(message))
            .count()
    };
    let monitor = store.start_pool_monitoring(Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let free = logged("INFO", "connection pool current=");
    assert!(free >= 3, "a report every 10 ms: {free} in 100 ms");
    assert_eq!(
        logged("WARN", "under pressure"),
        0,
        "the pool is mostly idle"
    );
    let mut held = Vec::new();
    while store.get_pool_metrics().utilization_percent <= 80.0 {
        held.push(store.pool().acquire().await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pressed = logged("WARN", "connection pool under pressure");
    assert!(
        pressed >= 3,
        "every connection taken: {pressed} warnings in 100 ms"
    );
    drop(held);
    tokio::time::timeout(Duration::from_secs(5), monitor.stop())
        .await
        .expect("stop() ends the monitor");
    let reports = logged("", "connection pool");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        logged("", "connection pool"),
        reports,
        "no report after stop()"
    );
}

/// A `tracing` writer appending to shared memory.
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The heart of the skip-free guarantee: a transaction that took its id
/// early but commits late holds `$all` readers back, then appears *before*
/// the events that committed while it was open.
#[tokio::test]
async fn late_commits_are_never_skipped() {
    let store = fresh_store().await;
    let schema = store.config().schema.clone();
    let early = StreamId::new("early").unwrap();
    let late = StreamId::new("late").unwrap();
    let before = store.append(one(&early, "Before")).await.unwrap();
    let start = before.positions.unwrap().1;

    // Open a transaction that appends the way the store's statements do but
    // does not commit yet: it holds the smaller transaction id.
    let mut slow = sqlx::PgConnection::connect(test_database_url())
        .await
        .unwrap();
    let mut tx = slow.begin().await.unwrap();
    let event = NewEvent::raw("Slow", serde_json::json!({}));
    sqlx::query(AssertSqlSafe(format!(
        "WITH v AS (INSERT INTO {schema}.event_streams (stream_id, version) VALUES ('late', 1) RETURNING version) \
         INSERT INTO {schema}.events (global_position, event_id, stream_id, stream_version, event_type, schema_version, event_data, occurred_at, correlation_id) \
         SELECT (pg_current_xact_id()::text::bigint << 20) + 1, $1, 'late', v.version, 'Slow', 1, '{{}}', $2, $3 FROM v"
    )))
    .bind(event.event_id.as_uuid())
    .bind(event.metadata.occurred_at)
    .bind(event.metadata.correlation_id)
    .execute(&mut *tx)
    .await
    .unwrap();

    // A later transaction commits first.
    store.append(one(&early, "Fast")).await.unwrap();
    assert_eq!(
        store.stream_version(&early).await.unwrap(),
        StreamVersion::new(2)
    );
    assert!(
        all_after(&store, start).await.is_empty(),
        "readers must wait for the open transaction instead of skipping past it"
    );
    let health = store.health_check().await.unwrap();
    assert!(health.oldest_transaction_age.is_some());

    tx.commit().await.unwrap();
    // Other tests' transactions may hold the horizon a moment longer.
    let mut seen = all_after(&store, start).await;
    for _ in 0..500 {
        if seen.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        seen = all_after(&store, start).await;
    }
    assert_eq!(
        seen,
        ["Slow", "Fast"],
        "the late commit is ordered before the events that waited for it"
    );
    assert_eq!(
        store.stream_version(&late).await.unwrap(),
        StreamVersion::new(1)
    );
}

#[tokio::test]
async fn read_all_delivers_the_good_rows_before_a_bad_one_then_names_it() {
    // Regression: one bad row failed its whole page, so the good events
    // before it in the same page were never delivered.
    let store = fresh_store().await;
    let schema = &store.config().schema;
    let stream = StreamId::new("mixed-1").unwrap();
    let first = store.append(one(&stream, "Before")).await.unwrap();
    let (p1, _) = first.positions.unwrap();
    // A bad row in the same transaction's position range, right after the
    // good one: custom metadata that is not an object.
    let bad = p1.get() + 1;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.events (global_position, event_id, stream_id, stream_version, event_type, schema_version, event_data, metadata, occurred_at, correlation_id) \
         VALUES ({bad}, '018f0000-0000-7000-8000-0000000000aa', 'mixed-bad', 1, 'Bad', 1, '{{}}', '[1]', now(), gen_random_uuid())"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    store.append(one(&stream, "After")).await.unwrap();

    // Other tests' open transactions may hold the read horizon back for a
    // moment: a read that returns nothing yet is repeated.
    let read = |after: GlobalPosition| {
        let store = store.clone();
        async move {
            let started = std::time::Instant::now();
            loop {
                match store.read_all(after, 100).await {
                    Ok(page) if page.is_empty() && started.elapsed() < Duration::from_secs(30) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => return other,
                }
            }
        }
    };
    let types = |page: Vec<eventcore::StoredEvent>| {
        page.into_iter().map(|e| e.event_type).collect::<Vec<_>>()
    };
    assert_eq!(
        types(read(GlobalPosition::START).await.unwrap()),
        ["Before"]
    );
    let err = read(p1).await.unwrap_err();
    assert!(matches!(err, Error::CorruptRow { .. }), "{err:?}");
    assert_eq!(err.position(), Some(GlobalPosition::new(bad)));
    // Past it, reading goes on.
    assert_eq!(
        types(read(GlobalPosition::new(bad)).await.unwrap()),
        ["After"]
    );
}

#[tokio::test]
async fn an_exact_version_beyond_i64_is_refused_not_read_as_any() {
    // Regression: `Exact(u64::MAX)` was sent as -1, the code for "any
    // version", so a check-only or multi-stream append succeeded.
    let store = fresh_store().await;
    let checked = StreamId::new("checked-1").unwrap();
    let written = StreamId::new("written-1").unwrap();
    store.append(one(&checked, "A")).await.unwrap();
    store.append(one(&checked, "B")).await.unwrap();
    for v in [u64::MAX, i64::MAX as u64 + 1] {
        let request = AppendRequest::new()
            .append(
                written.clone(),
                ExpectedVersion::Any,
                vec![NewEvent::raw("W", serde_json::json!({}))],
            )
            .check(
                checked.clone(),
                ExpectedVersion::Exact(StreamVersion::new(v)),
            );
        let err = store.append(request).await.unwrap_err();
        // A typed refusal before anything is sent, not a backend error.
        assert!(
            !err.is_transient() && !matches!(err, Error::Backend { .. }),
            "{err:?}"
        );
    }
    assert_eq!(
        store.stream_version(&written).await.unwrap(),
        StreamVersion::NONE,
        "nothing written"
    );
}

#[tokio::test]
async fn an_exhausted_pool_fails_a_command_within_one_retry_budget() {
    // Regression: the store retried 3 times inside each of the executor's
    // 10 attempts, so a command on an exhausted pool took 15.8 s at a
    // 500 ms acquire timeout. Now each attempt waits for one acquire.
    let store = store_with(
        config()
            .max_connections(1)
            .connect_timeout(Duration::from_millis(200))
            .build()
            .unwrap(),
    )
    .await;
    let held = store.pool().acquire().await.unwrap();
    let executor = CommandExecutor::new(store.clone()).with_retry_policy(
        RetryPolicy::new()
            .max_attempts(5)
            .base_delay(Duration::from_millis(1))
            .max_delay(Duration::from_millis(1)),
    );
    let timeouts_before = store.get_pool_metrics().connection_timeouts;
    let started = std::time::Instant::now();
    let err = executor
        .execute(eventcore::testing::bank::Transfer {
            from: StreamId::new("acct-1").unwrap(),
            to: StreamId::new("acct-2").unwrap(),
            amount: 5,
        })
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(
            err,
            eventcore::CommandError::RetriesExhausted { attempts: 5, .. }
        ),
        "{err:?}"
    );
    assert!(!err.may_have_committed());
    // Five acquires of 200 ms each, not fifteen.
    let timeouts = store.get_pool_metrics().connection_timeouts - timeouts_before;
    assert_eq!(timeouts, 5, "one acquire per attempt");
    assert!(elapsed < Duration::from_millis(2000), "{elapsed:?}");
    drop(held);
}

/// A connection goes to the next call only after its call finished
/// cleanly: calls that complete keep running on the same backend, while a
/// call cancelled mid-statement (an append waiting on a stream row another
/// session holds) never hands its connection on: it is closed, and its
/// backend ends once the statement finishes.
#[tokio::test]
async fn only_a_cleanly_finished_call_leaves_its_connection_for_the_next() {
    let app = format!("ec-test-{}", uuid::Uuid::now_v7().simple());
    let store = store_with(
        config()
            .application_name(app.clone())
            .min_connections(0)
            .max_connections(2)
            .build()
            .unwrap(),
    )
    .await;
    let stream = StreamId::new("reuse-1").unwrap();
    store.append(one(&stream, "A")).await.unwrap();
    let mut admin = sqlx::PgConnection::connect(test_database_url())
        .await
        .unwrap();
    let backends = async |admin: &mut sqlx::PgConnection| -> Vec<i32> {
        sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid",
        )
        .bind(&app)
        .fetch_all(admin)
        .await
        .unwrap()
    };

    // Clean calls, one after another: the same backends serve them all
    // (the pool's and the NOTIFY task's), none closed, none opened.
    store.head_position().await.unwrap();
    let before = backends(&mut admin).await;
    assert!(!before.is_empty());
    for _ in 0..5 {
        store.stream_version(&stream).await.unwrap();
        store.read_all(GlobalPosition::new(0), 10).await.unwrap();
    }
    assert_eq!(backends(&mut admin).await, before, "reused, not replaced");

    // An append blocked on the stream's row, cancelled while it waits.
    let mut locker = sqlx::PgConnection::connect(test_database_url())
        .await
        .unwrap();
    let schema = &store.config().schema;
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "SELECT 1 FROM \"{schema}\".event_streams WHERE stream_id = $1 FOR UPDATE"
    )))
    .bind(stream.as_str())
    .execute(&mut locker)
    .await
    .unwrap();
    let blocked = {
        let append = store.append(one(&stream, "B"));
        tokio::pin!(append);
        let started = std::time::Instant::now();
        loop {
            tokio::select! {
                r = &mut append => panic!("the append finished while the row was locked: {r:?}"),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            let waiting: Option<i32> = sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity \
                 WHERE application_name = $1 AND wait_event_type = 'Lock'",
            )
            .bind(&app)
            .fetch_optional(&mut admin)
            .await
            .unwrap();
            if let Some(pid) = waiting {
                break pid;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the append never waited on the lock"
            );
        }
        // The append's future is dropped here, mid-statement.
    };
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    let started = std::time::Instant::now();
    while backends(&mut admin).await.contains(&blocked) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the cancelled call's connection (backend {blocked}) was kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The store carries on, on another connection.
    store.stream_version(&stream).await.unwrap();
    assert!(!backends(&mut admin).await.contains(&blocked));
}

/// The writer's metadata is in typed columns that SQL can query: events of
/// one request found by correlation id (through its index), causation ids
/// and times as stored, and the `metadata` column holding exactly the
/// custom map. What is read back equals what was sent, custom maps and the
/// edges of the time range included.
#[tokio::test]
async fn metadata_is_in_typed_columns_that_sql_can_query() {
    let store = fresh_store().await;
    let schema = &store.config().schema;
    let stream = StreamId::new("typed-1").unwrap();
    let correlation = uuid::Uuid::now_v7();
    let cause = uuid::Uuid::now_v7();
    let at = |y, nanos| {
        chrono::NaiveDate::from_ymd_opt(y, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, nanos)
            .unwrap()
            .and_utc()
    };
    let mut sent = Vec::new();
    for (i, t) in [at(1, 0), at(2026, 123_456_000), at(9999, 999_999_000)]
        .into_iter()
        .enumerate()
    {
        let mut e = NewEvent::raw("Typed", serde_json::json!({ "i": i }));
        e.metadata = eventcore::EventMetadata::new().with_correlation_id(correlation);
        e.metadata.occurred_at = t;
        if i > 0 {
            e.metadata = e
                .metadata
                .with_causation_id(cause)
                .with_custom("tenant", format!("t{i}"))
                .with_custom(
                    "nested",
                    serde_json::json!({ "a": [1, 2.5, null], "b": "zoë" }),
                );
        }
        sent.push(e);
    }
    let other = NewEvent::raw("Other", serde_json::json!({}));
    store
        .append(
            AppendRequest::new()
                .append(stream.clone(), ExpectedVersion::NoStream, sent.clone())
                .append(
                    StreamId::new("typed-2").unwrap(),
                    ExpectedVersion::Any,
                    vec![other],
                ),
        )
        .await
        .unwrap();

    let back = store
        .read_stream_to_end(&stream, StreamVersion::new(1))
        .await
        .unwrap();
    let metadata: Vec<_> = back.iter().map(|e| e.metadata.clone()).collect();
    let want: Vec<_> = sent.iter().map(|e| e.metadata.clone()).collect();
    assert_eq!(metadata, want);

    type Row = (
        uuid::Uuid,
        Option<uuid::Uuid>,
        chrono::DateTime<chrono::Utc>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT event_id, causation_id, occurred_at, metadata->>'tenant' FROM {schema}.events \
             WHERE correlation_id = $1 ORDER BY stream_version"
    )))
    .bind(correlation)
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 3, "only this request's events: {rows:?}");
    for ((id, causation, occurred_at, tenant), (i, e)) in rows.iter().zip(sent.iter().enumerate()) {
        assert_eq!(*id, e.event_id.as_uuid());
        assert_eq!(*causation, e.metadata.causation_id);
        assert_eq!(*occurred_at, e.metadata.occurred_at);
        assert_eq!(tenant.clone(), (i > 0).then(|| format!("t{i}")));
    }
    let empty: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.events WHERE metadata = '{{}}'::jsonb AND correlation_id = $1"
    )))
    .bind(correlation)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(empty, 1, "no custom entries: an empty object");

    // The lookup by correlation id is an index scan.
    let mut conn = store.pool().acquire().await.unwrap();
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "EXPLAIN SELECT event_id FROM {schema}.events WHERE correlation_id = '{correlation}'"
    )))
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    sqlx::query("RESET enable_seqscan")
        .execute(&mut *conn)
        .await
        .unwrap();
    assert!(
        plan.iter()
            .any(|line| line.contains("events_correlation_id_idx")),
        "{plan:?}"
    );
}

/// Regression: the statement run after every failed expectation was
/// planned again at each execution (PostgreSQL preferred a custom plan
/// for every short array), which on a hot stream, where most appends
/// conflict, cost 40 % more server CPU per attempt (ADR 0002). It must settle
/// on its cached generic plan, as PostgreSQL does after five executions,
/// and still read the right versions.
#[tokio::test]
async fn the_conflict_read_keeps_its_cached_plan() {
    let store = fresh_store().await;
    let schema = &store.config().schema;
    for (name, events) in [("plan-a", 2), ("plan-b", 3)] {
        let stream = StreamId::new(name).unwrap();
        for i in 0..events {
            store.append(one(&stream, &format!("E{i}"))).await.unwrap();
        }
    }
    let mut conn = sqlx::PgConnection::connect(test_database_url())
        .await
        .unwrap();
    // A store of some size, with statistics: on a handful of rows every
    // plan is cheap and the generic one wins anyway.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "INSERT INTO {schema}.event_streams (stream_id, version) \
         SELECT 'filler-' || g, 1 FROM generate_series(1, 10000) AS g; \
         ANALYZE {schema}.event_streams"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let statement =
        include_str!("../../sql/select_conflict_states.sql").replace("{schema}", schema);
    sqlx::raw_sql(AssertSqlSafe(format!(
        "PREPARE conflict_states(text[], uuid[]) AS {statement}"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    for _ in 0..8 {
        let row: (Vec<i64>, bool) = sqlx::query_as(AssertSqlSafe(
            "EXECUTE conflict_states(ARRAY['plan-a'], ARRAY[gen_random_uuid()])".to_owned(),
        ))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(row, (vec![2], false));
    }
    let row: (Vec<i64>, bool) = sqlx::query_as(AssertSqlSafe(
        "EXECUTE conflict_states(ARRAY['plan-b', 'none', 'plan-a'], ARRAY[gen_random_uuid()])"
            .to_owned(),
    ))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        row,
        (vec![3, 0, 2], false),
        "versions in the request's order"
    );
    let (generic, custom): (i64, i64) = sqlx::query_as(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements \
         WHERE name = 'conflict_states'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(
        generic >= 4,
        "planned {custom} times, its generic plan used {generic} times"
    );
}
