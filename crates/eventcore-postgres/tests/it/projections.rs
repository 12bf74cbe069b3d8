//! Subscriptions and projection runners on PostgreSQL under writers and
//! faults.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use eventcore::{
    BoxError, CatchUpTimeout, CheckpointStore, Error, ErrorStrategy, EventFilter, EventStore,
    GlobalPosition, Projection, ProjectionRunner, RecordedEvent, RunnerOptions, StreamId,
    SubscriptionOptions, subscribe,
    testing::{bank::AccountEvent, seed},
};
use eventcore_postgres::{PostgresCheckpointStore, PostgresEventStore};
use eventcore_test_support::{
    AppliedRecorder, config, direct_pool, pooled, store_with, test_database_url,
};
use futures::StreamExt;
use sqlx::{AssertSqlSafe, Connection};

const PATIENCE: Duration = Duration::from_secs(30);

/// A store whose connections carry a unique `application_name`, so a test
/// can terminate exactly its own backends.
async fn named_store(schema: Option<&str>) -> (PostgresEventStore, String) {
    let app = format!("ec-{}", uuid::Uuid::now_v7().simple());
    let mut builder = config().application_name(app.clone());
    if let Some(schema) = schema {
        builder = builder.schema(schema);
    }
    (store_with(builder.build().unwrap()).await, app)
}

async fn terminate(app: &str) -> i64 {
    let admin = sqlx::PgPool::connect(test_database_url()).await.unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(app)
    .fetch_one(&admin)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscription_survives_terminated_backends() {
    let (store, app) = named_store(None).await;
    let account = StreamId::new("acct-sub").unwrap();
    let mut live = Box::pin(subscribe(
        store.clone(),
        SubscriptionOptions::default().poll_interval(Duration::from_millis(50)),
    ));
    seed(
        &store,
        &account,
        (0..10).map(|amount| AccountEvent::Deposited { amount }),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    take_positions(&mut live, &mut seen, 10).await;
    // Kill every connection of this store: pool members and the LISTEN one.
    assert!(
        terminate(&app).await >= 1,
        "there were backends to terminate"
    );
    seed(
        &store,
        &account,
        (10..20).map(|amount| AccountEvent::Deposited { amount }),
    )
    .await
    .unwrap();
    take_positions(&mut live, &mut seen, 20).await;
    eventcore::testing::assert_same_sequence(
        "every event once, in order, across the fault",
        &seen,
        &eventcore::testing::settled_positions(&store, "acct-sub", 20).await,
    );
}

/// Waits until `done()` holds, polling; panics with `what` after PATIENCE.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting: {what}"));
}

/// Takes events from `live` until `seen` holds `count` positions.
async fn take_positions(
    live: &mut (impl futures::Stream<Item = Result<eventcore::StoredEvent, eventcore::Error>> + Unpin),
    seen: &mut Vec<GlobalPosition>,
    count: usize,
) {
    while seen.len() < count {
        let event = tokio::time::timeout(PATIENCE, live.next())
            .await
            .expect("delivered in time")
            .expect("subscriptions never end")
            .expect("no error");
        seen.push(event.position);
    }
}

/// Records the positions it applies (also the standby tests' projection).
#[derive(Clone)]
pub(crate) struct Ledger {
    pub(crate) name: String,
    pub(crate) seen: Arc<Mutex<Vec<GlobalPosition>>>,
}

impl Ledger {
    pub(crate) fn new(name: &str) -> Self {
        Ledger {
            name: name.into(),
            seen: Arc::default(),
        }
    }
}

impl Projection for Ledger {
    type Event = AccountEvent;
    fn name(&self) -> &str {
        &self.name
    }
    fn filter(&self) -> EventFilter {
        EventFilter::all().stream_prefix("load-")
    }
    async fn apply(&mut self, event: RecordedEvent<AccountEvent>) -> Result<(), BoxError> {
        self.seen.lock().unwrap().push(event.position);
        Ok(())
    }
}

pub(crate) fn quick() -> RunnerOptions {
    RunnerOptions {
        batch_size: 100,
        poll_interval: Duration::from_millis(50),
        checkpoint_every: 1,
        lease_retry: Duration::from_millis(25),
        ..RunnerOptions::default()
    }
}

/// A projection runner and 16 writers at once: the runner applies every
/// committed event exactly once, in global order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projection_follows_sixteen_writers() {
    let (store, _) = named_store(None).await;
    let ledger = Ledger {
        name: "ledger".into(),
        seen: Arc::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let (store, ledger) = (store.clone(), ledger.clone());
        tokio::spawn(async move {
            let checkpoints = PostgresCheckpointStore::new(store.clone());
            let mut runner =
                ProjectionRunner::new(ledger, store, checkpoints).with_options(RunnerOptions {
                    checkpoint_every: 50,
                    ..quick()
                });
            runner
                .run_continuous(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    futures::future::join_all((0..16).map(|w| {
        let store = store.clone();
        async move {
            let s = StreamId::new(format!("load-{}", w % 5)).unwrap();
            for i in 0..25 {
                seed(&store, &s, [AccountEvent::Deposited { amount: i }])
                    .await
                    .unwrap();
            }
        }
    }))
    .await;
    let expected = eventcore::testing::settled_positions(&store, "load-", 400).await;
    eventually("the projection caught up", || {
        ledger.seen.lock().unwrap().len() >= expected.len()
    })
    .await;
    stop.send(()).unwrap();
    let summary = runner.await.unwrap().unwrap();
    eventcore::testing::assert_same_sequence(
        "exactly once, in order",
        &ledger.seen.lock().unwrap(),
        &expected,
    );
    assert_eq!(summary.checkpoint, expected.last().copied());
}

/// Subscribers in another "process" (another store on the same schema) are
/// woken by NOTIFY long before their poll interval; with NOTIFY disabled
/// they still get every event by polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wakeups_cross_processes_by_notify_or_polling() {
    for (notify, poll) in [
        (Some(Duration::from_millis(5)), Duration::from_secs(20)),
        (None, Duration::from_millis(100)),
    ] {
        let writer = store_with(config().notify_interval(notify).build().unwrap()).await;
        let schema = writer.config().schema.clone();
        let (reader, _) = named_store(Some(&schema)).await;
        let mut live = Box::pin(subscribe(
            reader.clone(),
            SubscriptionOptions::default().poll_interval(poll),
        ));
        // Let the subscription reach its idle wait first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let account = StreamId::new("acct-wake").unwrap();
        let started = std::time::Instant::now();
        seed(&writer, &account, [AccountEvent::Deposited { amount: 1 }])
            .await
            .unwrap();
        let event = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("delivered long before the 20 s poll interval")
            .unwrap()
            .unwrap();
        assert_eq!(event.stream_id, account);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "notify {notify:?}: took {:?}",
            started.elapsed()
        );
    }
}

/// An event that commits while an older transaction is open is not
/// readable until that transaction ends, and nobody signals when it does.
/// A subscriber that found it hidden must look again on its own instead of
/// waiting for the next commit or its (here 20 s) poll interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_hidden_behind_an_open_transaction_are_delivered_when_it_ends() {
    let writer = store_with(config().notify_interval(None).build().unwrap()).await;
    let schema = writer.config().schema.clone();
    let reader = store_with(
        config()
            .schema(&schema)
            .notify_interval(None)
            .build()
            .unwrap(),
    )
    .await;

    // An open transaction with an id: it holds every reader's horizon.
    let mut blocker = sqlx::PgConnection::connect(test_database_url())
        .await
        .unwrap();
    let mut tx = blocker.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *tx)
        .await
        .unwrap();

    let account = StreamId::new("acct-hidden").unwrap();
    seed(&writer, &account, [AccountEvent::Deposited { amount: 1 }])
        .await
        .unwrap();
    let mut live = Box::pin(subscribe(
        reader.clone(),
        SubscriptionOptions::default().poll_interval(Duration::from_secs(20)),
    ));
    let next = tokio::spawn(async move { live.next().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!next.is_finished(), "hidden behind the open transaction");

    let released = std::time::Instant::now();
    tx.commit().await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("delivered long before the 20 s poll interval")
        .unwrap()
        .expect("the subscription goes on")
        .unwrap();
    assert_eq!(event.stream_id, account);
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "took {:?} after the horizon moved",
        released.elapsed()
    );
}

/// A subscriber gets, byte for byte, what a plain read of the log returns,
/// whoever asks: with writers on the subscriber's own store and on a second
/// store of the same schema (single events, several events per append,
/// two-stream appends), every field of every delivered event, the payload's
/// text included, equals a third store's `read_all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_read_the_same_bytes_as_anyone() {
    use eventcore::{AppendRequest, EventMetadata, EventStore, ExpectedVersion, NewEvent};

    let local = store_with(config().build().unwrap()).await;
    let schema = local.config().schema.clone();
    let foreign = store_with(config().schema(&schema).build().unwrap()).await;
    let plain = store_with(config().schema(&schema).build().unwrap()).await;
    let mut live = Box::pin(subscribe(local.clone(), SubscriptionOptions::default()));
    // Subscribed once the first (empty) read is done.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), live.next())
            .await
            .is_err()
    );

    let mut writers = Vec::new();
    for w in 0..16_u64 {
        let store = if w < 12 {
            local.clone()
        } else {
            foreign.clone()
        };
        writers.push(tokio::spawn(async move {
            for i in 0..30_u64 {
                let event = |amount| {
                    NewEvent::new(
                        &AccountEvent::Deposited { amount },
                        EventMetadata::new().with_custom("writer", w),
                    )
                    .unwrap()
                };
                let stream = |k: u64| StreamId::new(format!("mem-{}", (w * 7 + k) % 20)).unwrap();
                let request = match i % 3 {
                    0 => {
                        AppendRequest::new().append(stream(i), ExpectedVersion::Any, vec![event(i)])
                    }
                    1 => AppendRequest::new().append(
                        stream(i),
                        ExpectedVersion::Any,
                        vec![event(i), event(i + 1), event(i + 2)],
                    ),
                    _ => AppendRequest::new()
                        .append(stream(i), ExpectedVersion::Any, vec![event(i)])
                        .append(stream(i + 1), ExpectedVersion::Any, vec![event(i + 1)]),
                };
                store.append(request).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }

    let mut expected = Vec::new();
    let started = std::time::Instant::now();
    loop {
        let after = expected
            .last()
            .map_or(GlobalPosition::new(0), |e: &eventcore::StoredEvent| {
                e.position
            });
        let page = plain.read_all(after, 500).await.unwrap();
        if page.is_empty() {
            // Every write has returned, but a transaction of another test
            // may hold the read horizon back for a moment.
            if expected.len() >= 16 * 10 * (1 + 3 + 2) || started.elapsed() > PATIENCE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        expected.extend(page);
    }
    assert_eq!(expected.len(), 16 * 10 * (1 + 3 + 2));
    let mut delivered = Vec::new();
    while delivered.len() < expected.len() {
        let event = tokio::time::timeout(PATIENCE, live.next())
            .await
            .expect("delivered in time")
            .expect("subscriptions never end")
            .expect("no error");
        delivered.push(event);
    }
    for (got, want) in delivered.iter().zip(&expected) {
        assert_eq!(got.position, want.position);
        assert_eq!(got.event_id, want.event_id);
        assert_eq!(got.stream_id, want.stream_id);
        assert_eq!(
            got.stream_version, want.stream_version,
            "at {}",
            want.position
        );
        assert_eq!(got.event_type, want.event_type);
        assert_eq!(got.schema_version, want.schema_version);
        assert_eq!(got.data.get(), want.data.get(), "at {}", want.position);
        assert_eq!(got.metadata, want.metadata);
        assert_eq!(got.recorded_at, want.recorded_at);
    }
}

/// Writes a row that cannot be read back (custom metadata that is not an object)
/// into `stream`, behind the store's back, at a position inside the read
/// horizon (a transaction's own position, as the store assigns them).
/// Returns its position.
async fn insert_corrupt_row(
    store: &PostgresEventStore,
    stream: &str,
    version: i64,
) -> GlobalPosition {
    let schema = &store.config().schema;
    let position: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "INSERT INTO {schema}.events (global_position, event_id, stream_id, stream_version, event_type, schema_version, event_data, metadata, occurred_at, correlation_id) \
         VALUES ((pg_current_xact_id()::text::bigint << 20) + 1, $1, $2, $3, 'Deposited', 1, '{{\"amount\": 1}}', '[1, 2]', now(), gen_random_uuid()) \
         RETURNING global_position"
    )))
    .bind(uuid::Uuid::now_v7())
    .bind(stream)
    .bind(version)
    .fetch_one(&direct_pool().await)
    .await
    .unwrap();
    GlobalPosition::new(position as u64)
}

/// Records what it applies, under a chosen strategy.
#[derive(Clone)]
struct Strict {
    name: String,
    strategy: ErrorStrategy,
    seen: Arc<Mutex<Vec<GlobalPosition>>>,
}

impl Projection for Strict {
    type Event = AccountEvent;
    fn name(&self) -> &str {
        &self.name
    }
    fn filter(&self) -> EventFilter {
        EventFilter::all().stream_prefix("bad-")
    }
    fn error_strategy(&self) -> ErrorStrategy {
        self.strategy.clone()
    }
    async fn apply(&mut self, event: RecordedEvent<AccountEvent>) -> Result<(), BoxError> {
        self.seen.lock().unwrap().push(event.position);
        Ok(())
    }
}

/// A hand-inserted row that cannot be read, between good events: a
/// subscriber gets every good event before it, one `CorruptRow` naming it,
/// then the events after it; a `Skip` runner applies all good events and
/// records the bad one in `projection_skips`; a `Stop` runner stops on it
/// with its checkpoint just before it, and an operator passes it with
/// `PostgresCheckpointStore::skip` (refused while events would be passed
/// unrecorded), after which the runner applies the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_row_is_passed_after_every_good_event_and_recorded() {
    let (store, _) = named_store(None).await;
    let good = StreamId::new("bad-good").unwrap();
    let positions = |outcome: eventcore::AppendOutcome| {
        let (first, last) = outcome.positions.unwrap();
        (first.get()..=last.get())
            .map(GlobalPosition::new)
            .collect::<Vec<_>>()
    };
    let before = positions(
        seed(
            &store,
            &good,
            (1..=3).map(|amount| AccountEvent::Deposited { amount }),
        )
        .await
        .unwrap(),
    );
    let bad = insert_corrupt_row(&store, "bad-row", 1).await;
    let after = positions(
        seed(
            &store,
            &good,
            (4..=5).map(|amount| AccountEvent::Deposited { amount }),
        )
        .await
        .unwrap(),
    );
    let good_ones: Vec<_> = before.iter().chain(&after).copied().collect();

    let mut live = Box::pin(subscribe(
        store.clone(),
        SubscriptionOptions::default()
            .filter(EventFilter::all().stream_prefix("bad-"))
            .poll_interval(Duration::from_millis(50)),
    ));
    let mut next = async || {
        tokio::time::timeout(PATIENCE, live.next())
            .await
            .expect("delivered in time")
            .expect("the subscription goes on")
    };
    for p in &before {
        assert_eq!(next().await.unwrap().position, *p);
    }
    match next().await {
        Err(Error::CorruptRow {
            position, reason, ..
        }) => {
            assert_eq!(position, Some(bad));
            assert!(reason.contains("metadata"), "{reason}");
        }
        other => panic!("expected the corrupt row, got {other:?}"),
    }
    for p in &after {
        assert_eq!(next().await.unwrap().position, *p);
    }
    let more = tokio::time::timeout(Duration::from_millis(300), live.next()).await;
    assert!(more.is_err(), "the error is not repeated: {more:?}");

    let checkpoints = PostgresCheckpointStore::new(store.clone());
    let skipping = Strict {
        name: "skipping".into(),
        strategy: ErrorStrategy::Skip,
        seen: Arc::default(),
    };
    let summary = ProjectionRunner::new(skipping.clone(), store.clone(), checkpoints.clone())
        .with_options(quick())
        .run_until_caught_up()
        .await
        .unwrap();
    assert_eq!((summary.applied, summary.skipped), (5, 1));
    assert_eq!(*skipping.seen.lock().unwrap(), good_ones);
    let skipped = checkpoints.skipped("skipping").await.unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].position, bad);
    assert!(
        skipped[0].error.contains("metadata"),
        "{}",
        skipped[0].error
    );
    assert_eq!(
        checkpoints.load("skipping").await.unwrap(),
        after.last().copied()
    );

    let stopping = Strict {
        name: "stopping".into(),
        strategy: ErrorStrategy::Stop,
        seen: Arc::default(),
    };
    let stopped = ProjectionRunner::new(stopping.clone(), store.clone(), checkpoints.clone())
        .with_options(quick())
        .run_until_caught_up()
        .await;
    match stopped {
        Err(Error::CorruptRow { position, .. }) => assert_eq!(position, Some(bad)),
        other => panic!("expected the runner to stop on the corrupt row, got {other:?}"),
    }
    assert_eq!(*stopping.seen.lock().unwrap(), before);
    assert_eq!(checkpoints.load("stopping").await.unwrap(), Some(before[2]));

    let gap = skip_when_free(&checkpoints, "stopping", after[0], "wrong one").await;
    assert!(
        matches!(&gap, Err(Error::Projection { .. }) if gap.as_ref().unwrap_err().to_string().contains("between")),
        "{gap:?}"
    );
    skip_when_free(&checkpoints, "stopping", bad, "bad metadata, ticket 12")
        .await
        .unwrap();
    assert_eq!(checkpoints.load("stopping").await.unwrap(), Some(bad));
    let skipped = checkpoints.skipped("stopping").await.unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(
        skipped[0].stream_id,
        Some(StreamId::new("bad-row").unwrap())
    );
    assert!(
        skipped[0].error.contains("ticket 12"),
        "{}",
        skipped[0].error
    );
    let backwards = skip_when_free(&checkpoints, "stopping", before[0], "late").await;
    assert!(backwards.is_err(), "never backwards");
    let summary = ProjectionRunner::new(stopping.clone(), store.clone(), checkpoints.clone())
        .with_options(quick())
        .run_until_caught_up()
        .await
        .unwrap();
    assert_eq!(summary.applied, 2);
    assert_eq!(*stopping.seen.lock().unwrap(), good_ones);
}

/// `skip`, retried while a runner that just stopped still lets go of its
/// lease connection.
async fn skip_when_free(
    checkpoints: &PostgresCheckpointStore,
    projection: &str,
    position: GlobalPosition,
    reason: &str,
) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match checkpoints.skip(projection, position, reason).await {
            Err(e)
                if e.to_string().contains("active") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// The fence, in the caller's transaction: a checkpoint write in flight
/// holds the row, so a takeover (the generation bump) waits for it to
/// commit; after the takeover the old holder's `save_in` fails with
/// `LeaseLost`, its transaction's other writes roll back with it, and its
/// lease reports the loss at once. A checkpoint store holding no lease
/// cannot write checkpoints at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn save_in_is_fenced_in_the_callers_transaction() {
    let (store, _) = named_store(None).await;
    let schema = store.config().schema.clone();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {schema}.effects (x INT NOT NULL)"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let insert = format!("INSERT INTO {schema}.effects (x) VALUES ($1)");
    let checkpoints = PostgresCheckpointStore::new(store.clone());
    let lease = checkpoints
        .try_acquire("fenced")
        .await
        .unwrap()
        .expect("free");
    assert!(lease.is_held().await);
    assert_eq!(checkpoints.load("fenced").await.unwrap(), None);

    // Unnamed statements in a transaction: what a transaction pooler needs.
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(AssertSqlSafe(insert.clone()))
        .persistent(false)
        .bind(1)
        .execute(&mut *tx)
        .await
        .unwrap();
    checkpoints
        .save_in(&mut tx, "fenced", GlobalPosition::new(5))
        .await
        .unwrap();
    // Another runner's takeover, as the store bumps the generation.
    let bump = {
        let pool = direct_pool().await;
        let schema = schema.clone();
        tokio::spawn(async move {
            sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(format!(
                "UPDATE {schema}.projection_checkpoints SET generation = generation + 1 \
                 WHERE projection = 'fenced' RETURNING position"
            )))
            .fetch_one(&pool)
            .await
            .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !bump.is_finished(),
        "the takeover waits for the write in flight"
    );
    tx.commit().await.unwrap();
    assert_eq!(bump.await.unwrap(), Some(5), "and then sees its checkpoint");

    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(AssertSqlSafe(insert))
        .persistent(false)
        .bind(2)
        .execute(&mut *tx)
        .await
        .unwrap();
    let stale = checkpoints
        .save_in(&mut tx, "fenced", GlobalPosition::new(9))
        .await;
    assert!(matches!(stale, Err(Error::LeaseLost { .. })), "{stale:?}");
    drop(tx);
    let effects: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT x FROM {schema}.effects ORDER BY x"
    )))
    .fetch_all(&direct_pool().await)
    .await
    .unwrap();
    assert_eq!(effects, [1], "the stale transaction's writes rolled back");
    assert_eq!(
        checkpoints.load("fenced").await.unwrap(),
        Some(GlobalPosition::new(5))
    );
    tokio::time::timeout(Duration::from_secs(1), lease.lost())
        .await
        .expect("the lease reports the loss");
    assert!(!lease.is_held().await);
    assert!(matches!(
        checkpoints.save("fenced", GlobalPosition::new(10)).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        checkpoints.reset("fenced").await,
        Err(Error::LeaseLost { .. })
    ));

    let unrelated = PostgresCheckpointStore::new(store.clone());
    let mut conn = store.pool().acquire().await.unwrap();
    let no_lease = unrelated
        .save_in(&mut conn, "fenced", GlobalPosition::new(11))
        .await;
    assert!(
        matches!(&no_lease, Err(Error::Projection { source, .. }) if source.to_string().contains("no lease")),
        "{no_lease:?}"
    );
}

/// Regression (issue 14, item 5): with a standby runner waiting, the active
/// runner's lease connection is terminated while 8 writers append. The
/// standby takes over; the old runner stops at once with `LeaseLost`; and
/// every event is applied exactly once through the exactly-once recipe:
/// the read model's rows, one per application, equal the events, compared
/// without deduplicating.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standby_takes_over_and_every_event_is_applied_exactly_once() {
    const WRITERS: usize = 8;
    let (active_store, active_app) = named_store(None).await;
    let schema = active_store.config().schema.clone();
    let (standby_store, _) = named_store(Some(&schema)).await;
    let (writer_store, _) = named_store(Some(&schema)).await;
    let admin = direct_pool().await;
    let count = |runner: &'static str| {
        let pool = admin.clone();
        let sql = format!("SELECT count(*) FROM {schema}.applied WHERE runner LIKE $1");
        async move {
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                .bind(runner)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let runner_task = |store: PostgresEventStore, runner: &'static str| {
        tokio::spawn(async move {
            let projection = AppliedRecorder::<AccountEvent>::new(&store)
                .await
                .runner(runner)
                .stream_prefix("load-")
                .pause_before_checkpoint(Duration::from_millis(3));
            let checkpoints = projection.checkpoints();
            let mut runner =
                ProjectionRunner::new(projection, store, checkpoints).with_options(RunnerOptions {
                    checkpoint_every: 200,
                    ..quick()
                });
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            (
                stop,
                tokio::spawn(async move {
                    runner
                        .run_continuous(async {
                            let _ = stopped.await;
                        })
                        .await
                }),
            )
        })
    };

    let writing = Arc::new(AtomicBool::new(true));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, writing) = (writer_store.clone(), Arc::clone(&writing));
            tokio::spawn(async move {
                let s = StreamId::new(format!("load-{w}")).unwrap();
                let mut n = 0;
                while writing.load(Ordering::Relaxed) {
                    seed(&store, &s, [AccountEvent::Deposited { amount: n }])
                        .await
                        .unwrap();
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                n
            })
        })
        .collect();

    let (_stop_active, active) = runner_task(active_store.clone(), "active").await.unwrap();
    eventually_async("the active runner applies events", async || {
        count("active").await >= 200
    })
    .await;
    let (stop_standby, standby) = runner_task(standby_store.clone(), "standby").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count("standby").await, 0, "the standby waits");

    if pooled() {
        // Behind a transaction pooler the lease is a row the runner renews:
        // its renewals stop counting (as if its link had died for the whole
        // time to live) and the row expires at once.
        let expired = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {schema}.projection_leases SET expires_at = clock_timestamp() \
             WHERE projection = $1 AND application = $2"
        )))
        .bind(AppliedRecorder::<AccountEvent>::NAME)
        .bind(&active_app)
        .execute(&admin)
        .await
        .unwrap();
        assert_eq!(expired.rows_affected(), 1, "one lease row");
    } else {
        // Kill the active runner's lease connection only (the backend
        // holding its advisory lock); its pool connections live on.
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(a.pid)) FROM pg_stat_activity a \
             WHERE a.application_name = $1 \
               AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory')",
        )
        .bind(&active_app)
        .fetch_one(&admin)
        .await
        .unwrap();
        assert_eq!(killed, 1, "one lease connection");
    }
    let killed_at = std::time::Instant::now();
    let result = tokio::time::timeout(PATIENCE, active)
        .await
        .expect("the old runner stops")
        .unwrap();
    let stopped_after = killed_at.elapsed();
    assert!(
        matches!(result, Err(Error::LeaseLost { .. })),
        "the old runner reports the lost lease: {result:?}"
    );
    assert!(
        stopped_after < Duration::from_secs(2),
        "the old runner stopped {stopped_after:?} after its lease died"
    );
    eventually_async("the standby takes over", async || {
        count("standby").await > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    writing.store(false, Ordering::Relaxed);
    let mut written = 0;
    for writer in writers {
        written += writer.await.unwrap();
    }

    let expected: Vec<i64> =
        eventcore::testing::settled_positions(&writer_store, "load-", written as usize)
            .await
            .into_iter()
            .map(|p| p.get() as i64)
            .collect();
    assert_eq!(expected.len(), written as usize);
    eventually_async("the standby caught up", async || {
        count("%").await >= expected.len() as i64
    })
    .await;
    // Room for a stray late application to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_standby.send(()).unwrap();
    standby.await.unwrap().unwrap();

    let applied: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT position FROM {schema}.applied ORDER BY position"
    )))
    .fetch_all(&admin)
    .await
    .unwrap();
    let twice: Vec<(uuid::Uuid, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT event_id, count(*) FROM {schema}.applied GROUP BY event_id HAVING count(*) > 1"
    )))
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(
        twice.is_empty(),
        "{} events applied more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    eventcore::testing::assert_same_sequence(
        "every event applied exactly once (no deduplication)",
        &applied,
        &expected,
    );
    assert!(count("active").await > 0 && count("standby").await > 0);
}

/// Waits until the async `done()` holds, polling; panics after PATIENCE.
async fn eventually_async(what: &str, done: impl AsyncFn() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting: {what}"));
}

/// Regression (issue 14, item 10): a transaction holding an xid in another
/// connection keeps a committed event unreadable. The store names that
/// transaction's backend, and `run_until_caught_up` with a catch-up timeout
/// gives up with a `CatchUpTimeout` naming its pid and age instead of
/// waiting forever; once it commits, the runner catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catching_up_behind_an_open_transaction_times_out_naming_it() {
    let (store, _) = named_store(None).await;
    let mut blocker = sqlx::PgConnection::connect(test_database_url())
        .await
        .unwrap();
    let blocker_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut blocker)
        .await
        .unwrap();
    let mut tx = blocker.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *tx)
        .await
        .unwrap();
    let opened = std::time::Instant::now();
    seed(
        &store,
        &StreamId::new("load-held").unwrap(),
        [AccountEvent::Deposited { amount: 1 }],
    )
    .await
    .unwrap();

    // The oldest open transaction is ours, unless another session in the
    // cluster opened one even earlier and still holds it.
    let is_ours_or_older =
        |b: &eventcore::ReadBlocker| b.pid == Some(blocker_pid as u32) || b.age >= opened.elapsed();
    let named = store
        .read_blocker()
        .await
        .unwrap()
        .expect("something holds readers back");
    assert!(
        is_ours_or_older(&named),
        "{named} (ours: pid {blocker_pid})"
    );

    let ledger = Ledger {
        name: "held".into(),
        seen: Arc::default(),
    };
    let mut runner = ProjectionRunner::new(
        ledger.clone(),
        store.clone(),
        PostgresCheckpointStore::new(store.clone()),
    )
    .with_options(RunnerOptions {
        catch_up_timeout: Some(Duration::from_secs(1)),
        ..quick()
    });
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(PATIENCE, runner.run_until_caught_up())
        .await
        .expect("gave up in time");
    let waited = started.elapsed();
    let Err(Error::Projection { source, .. }) = &result else {
        panic!("expected a catch-up timeout, got {result:?}");
    };
    let timeout = source
        .downcast_ref::<CatchUpTimeout>()
        .unwrap_or_else(|| panic!("expected a catch-up timeout, got {result:?}"));
    let blocker_seen = timeout.blocker.as_ref().expect("the blocker is named");
    assert!(
        is_ours_or_older(blocker_seen),
        "{blocker_seen} (ours: pid {blocker_pid})"
    );
    if blocker_seen.pid == Some(blocker_pid as u32) {
        let message = result.as_ref().unwrap_err().to_string();
        assert!(message.contains(&format!("pid {blocker_pid}")), "{message}");
        assert!(blocker_seen.age >= Duration::from_secs(1), "{blocker_seen}");
    }
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert!(ledger.seen.lock().unwrap().is_empty());

    tx.commit().await.unwrap();
    let summary = tokio::time::timeout(PATIENCE, runner.run_until_caught_up())
        .await
        .expect("caught up once the transaction ended")
        .unwrap();
    assert_eq!(summary.applied, 1);
}
