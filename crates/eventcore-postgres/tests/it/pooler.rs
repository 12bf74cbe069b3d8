//! The store behind PgBouncer in transaction mode (`scripts/dev-db
//! pgbouncer-url`, whose pool `scripts/test` sizes to 2 server
//! connections). Run by `scripts/test` in its PgBouncer pass only.

use std::{collections::BTreeSet, time::Duration};

use eventcore::{
    CheckpointStore, EventStore, StreamId, StreamVersion, SubscriptionOptions, subscribe,
    testing::{bank::AccountEvent, seed},
};
use eventcore_postgres::{
    Pooler, PostgresCheckpointStore, PostgresConfigBuilder, PostgresError, PostgresEventStore,
};
use futures::StreamExt;
use sqlx::{
    ConnectOptions, Row,
    postgres::{PgConnectOptions, PgConnection},
};

use eventcore_test_support::{config, fresh_schema, pgbouncer_url, store_with, test_database_url};

/// A store on PgBouncer with the pooler setting and no direct connection.
fn pooled_config(schema: &str) -> PostgresConfigBuilder {
    PostgresConfigBuilder::new()
        .database_url(pgbouncer_url())
        .pooler(Pooler::Transaction)
        .schema(schema)
        .max_connections(4)
        .min_connections(0)
}

/// PgBouncer's `default_pool_size`, read from its admin console.
async fn pgbouncer_pool_size() -> i64 {
    let options: PgConnectOptions = pgbouncer_url().parse().unwrap();
    let mut console: PgConnection = options
        .database("pgbouncer")
        .extra_float_digits(None)
        .connect()
        .await
        .expect("PgBouncer's admin console");
    let rows = sqlx::raw_sql("SHOW CONFIG")
        .fetch_all(&mut console)
        .await
        .unwrap();
    let size = rows
        .iter()
        .find(|r| r.get::<String, _>(0) == "default_pool_size")
        .map(|r| r.get::<String, _>(1))
        .expect("default_pool_size in SHOW CONFIG");
    size.parse().unwrap()
}

/// Without the setting the store cannot even connect through PgBouncer:
/// it refuses the startup `options` that carry `statement_timeout`.
#[tokio::test]
async fn without_the_setting_pgbouncer_refuses_the_connection() {
    let direct = PostgresConfigBuilder::new()
        .database_url(pgbouncer_url())
        .schema(fresh_schema())
        .build()
        .unwrap();
    match PostgresEventStore::new(direct).await {
        Err(PostgresError::Connect(e)) => {
            let code = e.as_database_error().and_then(|d| d.code());
            assert_eq!(code.as_deref(), Some("08P01"), "{e}");
        }
        other => panic!("expected a refused connection, got {other:?}"),
    }
}

/// The silent-wrong-results hazard: sqlx's unnamed statements outside a
/// transaction may run another client's statement on a shared server
/// connection. 16 clients over PgBouncer's 2 server connections, each
/// appending to and reading its own stream with a mix of statements: every
/// answer is the client's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_clients_over_two_server_connections_each_get_their_own_results() {
    const CLIENTS: usize = 16;
    const ROUNDS: u64 = 25;
    assert!(
        pgbouncer_pool_size().await <= 2,
        "the test needs clients to share at most 2 server connections \
         (EVENTCORE_PGBOUNCER_POOL_SIZE=2 scripts/dev-db pgbouncer-url)"
    );
    let schema = fresh_schema();
    store_with(pooled_config(&schema).build().unwrap()).await;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let schema = schema.clone();
            tokio::spawn(async move {
                // One connection per store: 16 clients of PgBouncer.
                let store = PostgresEventStore::new(
                    pooled_config(&schema).max_connections(1).build().unwrap(),
                )
                .await
                .unwrap();
                let stream = StreamId::new(format!("client-{c}")).unwrap();
                for round in 1..=ROUNDS {
                    let amount = c as u64 * 1_000 + round;
                    seed(&store, &stream, [AccountEvent::Deposited { amount }])
                        .await
                        .unwrap();
                    assert_eq!(
                        store.stream_version(&stream).await.unwrap(),
                        StreamVersion::new(round),
                        "client {c}"
                    );
                    let events = store
                        .read_stream(&stream, StreamVersion::new(round), 10)
                        .await
                        .unwrap();
                    assert_eq!(events.len(), 1, "client {c} round {round}");
                    let event = &events[0];
                    assert_eq!(event.stream_id, stream, "client {c}");
                    let data = event.decode::<AccountEvent>().unwrap().event;
                    assert_eq!(data, AccountEvent::Deposited { amount }, "client {c}");
                    // A statement of another shape in between.
                    assert!(store.head_position().await.unwrap() >= event.position);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
}

/// Without a direct `notify_url` nothing listens (a LISTEN through the
/// pooler hears nothing): a subscriber in another process gets every
/// event by polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_notify_url_subscribers_poll_and_miss_nothing() {
    let schema = fresh_schema();
    let writer = store_with(pooled_config(&schema).build().unwrap()).await;
    let reader = PostgresEventStore::new(pooled_config(&schema).build().unwrap())
        .await
        .unwrap();
    let mut live = Box::pin(subscribe(
        reader.clone(),
        SubscriptionOptions::default().poll_interval(Duration::from_millis(100)),
    ));
    let streams: Vec<StreamId> = (0..5)
        .map(|i| StreamId::new(format!("poll-{i}")).unwrap())
        .collect();
    for round in 0..4 {
        for s in &streams {
            seed(&writer, s, [AccountEvent::Deposited { amount: round }])
                .await
                .unwrap();
        }
    }
    let mut seen = BTreeSet::new();
    while seen.len() < 20 {
        let event = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("every event arrives by polling")
            .unwrap()
            .unwrap();
        assert!(seen.insert(event.position), "delivered once");
    }
    let more = tokio::time::timeout(Duration::from_millis(500), live.next()).await;
    assert!(more.is_err(), "nothing beyond the 20 events: {more:?}");
}

/// Lease rows: a second runner waits while the first renews its row past
/// the time to live; the first's release lets it in at once; a runner of a
/// direct store (session advisory lock) and one behind the pooler (row)
/// exclude each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_rows_exclude_renew_release_and_respect_advisory_runners() {
    let schema = fresh_schema();
    let first =
        PostgresCheckpointStore::new(store_with(pooled_config(&schema).build().unwrap()).await);
    let second = PostgresCheckpointStore::new(
        PostgresEventStore::new(pooled_config(&schema).build().unwrap())
            .await
            .unwrap(),
    );
    let lease = first.try_acquire("p").await.unwrap().expect("free");
    // Longer than the rows' 10 s time to live: renewals keep it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    while tokio::time::Instant::now() < deadline {
        assert!(
            second.try_acquire("p").await.unwrap().is_none(),
            "the lease is held"
        );
        assert!(lease.is_held().await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(lease);
    let taken = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(lease) = second.try_acquire("p").await.unwrap() {
                return lease;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("released at once, not at the expiry");

    // A direct store's runner (advisory lock) defers to the live row...
    let direct = PostgresCheckpointStore::new(
        PostgresEventStore::new(
            config()
                .database_url(test_database_url())
                .pooler(Pooler::Direct)
                .schema(&schema)
                .build()
                .unwrap(),
        )
        .await
        .unwrap(),
    );
    assert!(direct.try_acquire("p").await.unwrap().is_none());
    drop(taken);
    let held_directly = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(lease) = direct.try_acquire("p").await.unwrap() {
                return lease;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the row released");
    // ...and a pooled runner to its advisory lock.
    assert!(first.try_acquire("p").await.unwrap().is_none());
    drop(held_directly);
}
