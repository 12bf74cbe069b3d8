//! Subscriptions and projection runners on PostgreSQL under writers and
//! faults.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use eventcore::{
    BoxError, EventFilter, GlobalPosition, Projection, ProjectionRunner, RecordedEvent,
    RunnerOptions, StreamId, SubscriptionOptions, subscribe,
    testing::{bank::AccountEvent, seed},
};
use eventcore_postgres::{PostgresCheckpointStore, PostgresEventStore};
use futures::StreamExt;
use sqlx::Connection;

use crate::support::{config, database_url, store_with};

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
    let admin = sqlx::PgPool::connect(database_url()).await.unwrap();
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

/// Records the positions it applies.
#[derive(Clone)]
struct Ledger {
    name: String,
    seen: Arc<Mutex<Vec<GlobalPosition>>>,
}

#[eventcore::async_trait]
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

fn quick() -> RunnerOptions {
    RunnerOptions {
        batch_size: 100,
        poll_interval: Duration::from_millis(50),
        checkpoint_every: 1,
        lease_retry: Duration::from_millis(25),
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

/// The active runner's process "dies" (its lease connection is terminated):
/// a standby runner in another "process" takes over from the checkpoint and
/// nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standby_takes_over_when_the_active_runner_dies() {
    let (active_store, active_app) = named_store(None).await;
    let schema = active_store.config().schema.clone();
    let (standby_store, _) = named_store(Some(&schema)).await;
    let account = StreamId::new("load-takeover").unwrap();
    seed(
        &active_store,
        &account,
        (0..20).map(|amount| AccountEvent::Deposited { amount }),
    )
    .await
    .unwrap();

    let first = Ledger {
        name: "takeover".into(),
        seen: Arc::default(),
    };
    let active = {
        let (store, first) = (active_store.clone(), first.clone());
        tokio::spawn(async move {
            let checkpoints = PostgresCheckpointStore::new(store.clone());
            let mut runner = ProjectionRunner::new(first, store, checkpoints).with_options(quick());
            runner.run_continuous(futures::future::pending()).await
        })
    };
    eventually("active runner caught up", || {
        first.seen.lock().unwrap().len() >= 20
    })
    .await;

    let second = Ledger {
        name: "takeover".into(),
        seen: Arc::default(),
    };
    let standby = {
        let (store, second) = (standby_store.clone(), second.clone());
        tokio::spawn(async move {
            let checkpoints = PostgresCheckpointStore::new(store.clone());
            let mut runner =
                ProjectionRunner::new(second, store, checkpoints).with_options(quick());
            runner.run_continuous(futures::future::pending()).await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        second.seen.lock().unwrap().is_empty(),
        "the standby waits while the active runner lives"
    );

    assert!(terminate(&active_app).await >= 1);
    // New events after the crash: the active runner notices its lost lease
    // at its next checkpoint and stops; the standby takes them.
    seed(
        &standby_store,
        &account,
        (20..30).map(|amount| AccountEvent::Deposited { amount }),
    )
    .await
    .unwrap();
    let result = tokio::time::timeout(PATIENCE, active)
        .await
        .expect("the dead runner stops")
        .unwrap();
    assert!(
        result.is_err(),
        "the runner whose lease died reports it: {result:?}"
    );
    let expected = eventcore::testing::settled_positions(&standby_store, "load-takeover", 30).await;
    eventually("the standby took over and caught up", || {
        second.seen.lock().unwrap().last() == expected.last()
    })
    .await;
    standby.abort();
    let mut union: Vec<_> = first
        .seen
        .lock()
        .unwrap()
        .iter()
        .chain(second.seen.lock().unwrap().iter())
        .copied()
        .collect();
    union.sort();
    union.dedup();
    eventcore::testing::assert_same_sequence("nothing lost across the takeover", &union, &expected);
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
    let mut blocker = sqlx::PgConnection::connect(database_url()).await.unwrap();
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

/// A store with a live subscriber keeps what it appends and serves its
/// subscriber's reads from memory, fetching only what other processes
/// wrote. With writers on the subscriber's store and on a second store of
/// the same schema (single events, several events per append, two-stream
/// appends), the subscriber gets exactly what a plain read of the log
/// returns, field for field, and both the memory and the fetch were used.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn own_appends_are_read_from_memory_and_match_the_log() {
    use eventcore::{AppendRequest, EventMetadata, EventStore, ExpectedVersion, NewEvent};

    let local = store_with(config().build().unwrap()).await;
    let schema = local.config().schema.clone();
    let foreign = store_with(config().schema(&schema).build().unwrap()).await;
    let plain = store_with(
        config()
            .schema(&schema)
            .recent_appends_bytes(0)
            .build()
            .unwrap(),
    )
    .await;
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
        assert_eq!(got.data.to_value().unwrap(), want.data.to_value().unwrap());
        assert_eq!(got.metadata, want.metadata);
        assert_eq!(got.recorded_at, want.recorded_at);
    }
    let stats = local.recent_append_stats();
    assert!(stats.hits > 0, "own appends read from memory: {stats:?}");
    assert!(stats.misses > 0, "foreign appends fetched: {stats:?}");
    assert!(stats.held > 0, "held while subscribed: {stats:?}");
    assert_eq!(plain.recent_append_stats().hits, 0);

    // With the subscriber gone, the next append lets go of everything.
    drop(live);
    seed(
        &local,
        &StreamId::new("mem-after").unwrap(),
        [AccountEvent::Deposited { amount: 1 }],
    )
    .await
    .unwrap();
    assert_eq!(local.recent_append_stats().held, 0);
}
