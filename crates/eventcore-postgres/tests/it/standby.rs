//! Reads from a hot standby and failover safety, on real clusters of
//! `scripts/dev-db` (`standby-url`, `standby-stop`, `standby-start`,
//! `standby-promote`).
//!
//! The tests share one standby, so they take [`STANDBY`] in turn (one of
//! them stops and restarts it). When `scripts/dev-db` has no standby to
//! give (DATABASE_URL is another server: exit status 4), they pass without
//! running unless `EVENTCORE_REQUIRE_STANDBY=1` (set by `scripts/test`),
//! which turns "unavailable" into a failure.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use eventcore::{
    CheckpointStore, Error, EventFilter, EventStore, GlobalPosition, ProjectionRunner,
    RunnerOptions, StreamId, SubscriptionOptions, subscribe,
    testing::{bank::AccountEvent, seed},
};
use eventcore_postgres::{
    PostgresCheckpointStore, PostgresConfigBuilder, PostgresError, PostgresEventStore,
    ProjectionRequest,
};
use futures::StreamExt;

use super::projections::Ledger;

use eventcore_test_support::{DEV_DB, config, fresh_schema, store_with, test_database_url};

const PATIENCE: Duration = Duration::from_secs(60);

/// One standby test at a time.
static STANDBY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const UNAVAILABLE: i32 = 4;

/// Runs `scripts/dev-db ARGS` for the test database (or, with `dir`, a
/// throwaway cluster of its own there); stdout, or `None` when it has no
/// standby to offer (exit status 4) and none is required.
fn dev_db(dir: Option<&str>, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new(DEV_DB);
    cmd.args(args);
    match dir {
        Some(dir) => {
            cmd.env("EVENTCORE_DEV_DB_DIR", dir)
                .env_remove("DATABASE_URL")
                .env_remove("EVENTCORE_DEV_DB_PORT")
                .env_remove("EVENTCORE_STANDBY_URL");
        }
        None => {
            cmd.env("DATABASE_URL", test_database_url());
        }
    }
    let out = cmd.output().expect("run scripts/dev-db");
    if out.status.code() == Some(UNAVAILABLE) {
        let required = std::env::var("EVENTCORE_REQUIRE_STANDBY").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "EVENTCORE_REQUIRE_STANDBY=1 but scripts/dev-db {args:?} has no standby: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "standby test not run: scripts/dev-db {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    assert!(
        out.status.success(),
        "scripts/dev-db {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

/// The shared standby's URL, if there is one.
fn standby_url() -> Option<String> {
    dev_db(None, &["standby-url"])
}

/// A writer store on the primary and a reader store (same schema) that
/// reads from `standby`.
async fn stores(standby: &str) -> (PostgresEventStore, PostgresEventStore) {
    let writer = store_with(config().build().unwrap()).await;
    let reader = PostgresEventStore::new(
        config()
            .schema(writer.config().schema.clone())
            .read_replica(standby)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    (writer, reader)
}

/// Runs `sql` on `url`.
async fn exec(url: &str, sql: &'static str) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    sqlx::raw_sql(sql).execute(&pool).await.unwrap();
    pool.close().await;
}

/// The projection tests' runner options, checkpointing every 20 events.
fn quick() -> RunnerOptions {
    RunnerOptions {
        checkpoint_every: 20,
        ..super::projections::quick()
    }
}

/// 16 writers on the primary, `per_writer` appends each and more until
/// `during` is done (it gets the count of appends so far); a subscriber
/// and a projection read from the reader's standby. Both must see every
/// event once, in order.
async fn sixteen_writers_followed_on_the_standby<F: Future<Output = ()>>(
    writer: &PostgresEventStore,
    reader: &PostgresEventStore,
    per_writer: u64,
    during: impl FnOnce(Arc<AtomicUsize>) -> F,
) {
    let written = Arc::new(AtomicUsize::new(0));
    let during_done = Arc::new(AtomicBool::new(false));
    let ledger = Ledger::new("ledger");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let (reader, ledger) = (reader.clone(), ledger.clone());
        tokio::spawn(async move {
            let checkpoints = PostgresCheckpointStore::new(reader.clone());
            ProjectionRunner::new(ledger, reader, checkpoints)
                .with_options(quick())
                .run_continuous(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let mut live = Box::pin(subscribe(
        reader.clone(),
        SubscriptionOptions::default()
            .filter(EventFilter::all().stream_prefix("load-"))
            .poll_interval(Duration::from_millis(50)),
    ));
    let writers = futures::future::join_all((0..16).map(|w| {
        let (writer, written, during_done) = (writer.clone(), written.clone(), during_done.clone());
        async move {
            let s = StreamId::new(format!("load-{}", w % 5)).unwrap();
            let mut i = 0;
            while i < per_writer || !during_done.load(Ordering::Relaxed) {
                seed(&writer, &s, [AccountEvent::Deposited { amount: i }])
                    .await
                    .unwrap();
                written.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }));
    let during = during(written.clone());
    futures::future::join(writers, async {
        during.await;
        during_done.store(true, Ordering::Relaxed);
    })
    .await;
    let total = written.load(Ordering::Relaxed);
    let expected = eventcore::testing::settled_positions(writer, "load-", total).await;
    let mut delivered = Vec::new();
    while delivered.len() < expected.len() {
        let event = tokio::time::timeout(PATIENCE, live.next())
            .await
            .expect("the subscriber on the standby got every event in time")
            .expect("subscriptions never end")
            .expect("no error");
        delivered.push(event.position);
    }
    eventcore::testing::assert_same_sequence(
        "subscriber on the standby: every event once, in order",
        &delivered,
        &expected,
    );
    tokio::time::timeout(PATIENCE, async {
        while ledger.seen.lock().unwrap().len() < expected.len() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the projection on the standby caught up");
    stop.send(()).unwrap();
    let summary = runner.await.unwrap().unwrap();
    eventcore::testing::assert_same_sequence(
        "projection on the standby: every event once, in order",
        &ledger.seen.lock().unwrap(),
        &expected,
    );
    assert_eq!(summary.checkpoint, expected.last().copied());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_writers_a_subscriber_and_a_projection_on_the_standby() {
    let _one = STANDBY.lock().await;
    let Some(standby) = standby_url() else { return };
    let (writer, reader) = stores(&standby).await;
    sixteen_writers_followed_on_the_standby(&writer, &reader, 25, |_| async {}).await;
    let lag = reader.replica_lag().await.unwrap();
    assert_eq!(lag.len(), 1);
    assert!(lag[0].in_recovery && lag[0].receiving, "{lag:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_standby_stopped_and_restarted_mid_run_skips_nothing() {
    let _one = STANDBY.lock().await;
    let Some(standby) = standby_url() else { return };
    let (writer, reader) = stores(&standby).await;
    let (w, r) = (writer.clone(), reader.clone());
    sixteen_writers_followed_on_the_standby(&w, &r, 20, |written| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::task::spawn_blocking(|| dev_db(None, &["standby-stop"]).expect("standby to stop"))
            .await
            .unwrap();
        // Down: the readers' reads fail (transiently: they retry) instead
        // of going elsewhere, while the writers go on.
        let head = writer.head_position().await.unwrap();
        let read = reader.read_all(head, 1).await;
        assert!(read.as_ref().is_err_and(Error::is_transient), "{read:?}");
        let at_stop = written.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            written.load(Ordering::Relaxed) > at_stop,
            "events were appended while the standby was down"
        );
        tokio::task::spawn_blocking(|| dev_db(None, &["standby-start"]).expect("standby to start"))
            .await
            .unwrap();
    })
    .await;
}

/// Replay paused on the standby: a replica read does not see the append,
/// the wait for its commit token times out with `ReplicaBehind`, health
/// reports the lag; once replay resumes the wait returns and both reads
/// see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_waits_for_the_standby_to_replay_the_commit() {
    let _one = STANDBY.lock().await;
    let Some(standby) = standby_url() else { return };
    let (writer, _) = stores(&standby).await;
    let reader = PostgresEventStore::new(
        config()
            .schema(writer.config().schema.clone())
            .read_replica(&standby)
            .max_replica_lag(Duration::from_millis(50))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let account = StreamId::new("ryw").unwrap();
    // The schema first, so that only the append below is held back.
    let schema_done = seed(
        &writer,
        &StreamId::new("warm-up").unwrap(),
        [AccountEvent::Deposited { amount: 1 }],
    )
    .await
    .unwrap();
    let warm = writer.commit_token(&schema_done).await.unwrap();
    reader.wait_for_replicas(&warm, PATIENCE).await.unwrap();
    exec(&standby, "SELECT pg_wal_replay_pause()").await;
    let outcome = seed(&writer, &account, [AccountEvent::Deposited { amount: 7 }])
        .await
        .unwrap();
    let token = writer.commit_token(&outcome).await.unwrap();
    let unseen = reader
        .read_stream(&account, eventcore::StreamVersion::new(1), 10)
        .await;
    let behind = reader
        .wait_for_replicas(&token, Duration::from_millis(200))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let paused_health = reader.health_check().await;
    exec(&standby, "SELECT pg_wal_replay_resume()").await;

    assert!(unseen.unwrap().is_empty(), "not replayed yet, so not read");
    assert!(
        matches!(behind, Err(PostgresError::ReplicaBehind { lsn, .. }) if lsn == token.lsn),
        "{behind:?}"
    );
    let health = paused_health.unwrap();
    assert!(
        health.replicas[0].lag_bytes > 0 && health.replicas[0].lag > Duration::from_millis(50),
        "{:?}",
        health.replicas
    );
    assert!(!health.is_healthy);
    assert!(
        health
            .problems
            .iter()
            .any(|p| p.contains("behind the primary")),
        "{:?}",
        health.problems
    );

    reader
        .wait_for_replicas(&token, PATIENCE)
        .await
        .expect("replayed once resumed");
    let read = reader
        .read_stream(&account, eventcore::StreamVersion::new(1), 10)
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(Some(read[0].position), token.position);
    let all = reader.read_all(GlobalPosition::START, 100).await.unwrap();
    assert_eq!(all.last().map(|e| e.position), token.position);
    // Caught up: no lag in bytes or seconds, however old the last commit.
    let lag = reader.replica_lag().await.unwrap();
    assert_eq!(
        (lag[0].lag_bytes, lag[0].lag),
        (0, Duration::ZERO),
        "{lag:?}"
    );
}

/// A throwaway cluster with a standby of its own; promoting it is a
/// failover. A projection checkpointed on the old primary must not resume
/// on the promoted standby until an operator accepts the new history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_resuming_after_a_promotion_stops_until_the_history_is_accepted() {
    // Gate on the shared standby: without one, no cluster of our own either.
    if standby_url().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ec-failover-{}", uuid::Uuid::now_v7().simple()));
    let dir = dir.to_str().unwrap().to_owned();
    struct Destroy(String);
    impl Drop for Destroy {
        fn drop(&mut self) {
            let _ = dev_db(Some(&self.0), &["destroy"]);
        }
    }
    let _destroy = Destroy(dir.clone());
    let primary_url = dev_db(Some(&dir), &["url"]).unwrap();
    let standby = dev_db(Some(&dir), &["standby-url"]).unwrap();
    let schema = fresh_schema();
    let on = |url: &str| {
        PostgresConfigBuilder::new()
            .database_url(url)
            .schema(schema.clone())
            .min_connections(0)
            .build()
            .unwrap()
    };
    let primary = store_with(on(&primary_url)).await;
    let account = StreamId::new("load-failover").unwrap();
    seed(
        &primary,
        &account,
        (0..5).map(|amount| AccountEvent::Deposited { amount }),
    )
    .await
    .unwrap();
    let ledger = Ledger::new("ledger");
    let mut runner = ProjectionRunner::new(
        ledger.clone(),
        primary.clone(),
        PostgresCheckpointStore::new(primary.clone()),
    )
    .with_options(quick());
    let summary = runner.run_until_caught_up().await.unwrap();
    let checkpoint = summary.checkpoint.expect("checkpointed");
    let before = primary.history().await.unwrap();
    let token = primary
        .commit_token(
            &seed(&primary, &account, [AccountEvent::Deposited { amount: 5 }])
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    // Everything is on the standby before it is promoted.
    let watcher = PostgresEventStore::new(
        PostgresConfigBuilder::new()
            .database_url(&primary_url)
            .schema(schema.clone())
            .read_replica(&standby)
            .min_connections(0)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    watcher.wait_for_replicas(&token, PATIENCE).await.unwrap();
    dev_db(Some(&dir), &["standby-promote"]).unwrap();

    let promoted = PostgresEventStore::new(on(&standby)).await.unwrap();
    let after = promoted.history().await.unwrap();
    assert_eq!(after.system_identifier, before.system_identifier);
    assert_eq!(
        after.timeline,
        before.timeline + 1,
        "promotion bumps the timeline"
    );
    let checkpoints = PostgresCheckpointStore::new(promoted.clone());
    let resumed = ProjectionRunner::new(ledger.clone(), promoted.clone(), checkpoints.clone())
        .with_options(quick())
        .run_until_caught_up()
        .await;
    match &resumed {
        Err(Error::HistoryChanged {
            subject,
            recorded,
            current,
        }) => {
            assert!(subject.contains("ledger"), "{subject}");
            assert_eq!(recorded, &before.to_string());
            assert_eq!(current, &after.to_string());
        }
        other => panic!("expected HistoryChanged, got {other:?}"),
    }
    // A subscription position stamped on the old primary is refused too.
    let stamped = primary.stamp(checkpoint).await.unwrap();
    assert!(matches!(
        promoted.resume_after(&stamped).await,
        Err(Error::HistoryChanged { .. })
    ));

    // The operator vouches for the new history (nothing was lost here):
    // the runner resumes at its checkpoint and applies only what is new.
    promoted
        .accept_projection_history("ledger", &ProjectionRequest::new("test"))
        .await
        .unwrap();
    assert_eq!(checkpoints.load("ledger").await.unwrap(), Some(checkpoint));
    let applied_before = ledger.seen.lock().unwrap().len();
    let summary = ProjectionRunner::new(ledger.clone(), promoted.clone(), checkpoints)
        .with_options(quick())
        .run_until_caught_up()
        .await
        .unwrap();
    assert_eq!(summary.applied, 1);
    assert_eq!(ledger.seen.lock().unwrap().len(), applied_before + 1);
}

/// The same refusal without a second cluster: the checkpoint's stamp is
/// changed behind a running runner's back (as if the primary had been
/// replaced under it). Its next checkpoint write fails, the runner stops
/// with `HistoryChanged` (not a projection error its strategy would
/// skip), and a new runner refuses to load the checkpoint; a rebuild
/// request starts over on the current history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_of_another_history_stops_the_runner_until_rebuilt() {
    let store = store_with(config().build().unwrap()).await;
    let account = StreamId::new("load-sim").unwrap();
    seed(
        &store,
        &account,
        (0..3).map(|amount| AccountEvent::Deposited { amount }),
    )
    .await
    .unwrap();
    let ledger = Ledger::new("ledger");
    let options = RunnerOptions {
        checkpoint_every: 1,
        ..quick()
    };
    let checkpoints = PostgresCheckpointStore::new(store.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let (store, ledger, checkpoints) = (store.clone(), ledger.clone(), checkpoints.clone());
        tokio::spawn(async move {
            ProjectionRunner::new(ledger, store, checkpoints)
                .with_options(options)
                .run_continuous(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    tokio::time::timeout(PATIENCE, async {
        while ledger.seen.lock().unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let pool = sqlx::PgPool::connect(test_database_url()).await.unwrap();
    let schema = &store.config().schema;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.projection_checkpoints SET system_identifier = system_identifier + 1"
    )))
    .execute(&pool)
    .await
    .unwrap();
    seed(&store, &account, [AccountEvent::Deposited { amount: 3 }])
        .await
        .unwrap();
    let stopped_with = tokio::time::timeout(PATIENCE, runner)
        .await
        .expect("the runner stops")
        .unwrap();
    let _ = stop;
    assert!(
        matches!(&stopped_with, Err(Error::HistoryChanged { subject, .. }) if subject.contains("ledger")),
        "{stopped_with:?}"
    );
    let loaded = checkpoints.load("ledger").await;
    assert!(
        matches!(loaded, Err(Error::HistoryChanged { .. })),
        "{loaded:?}"
    );

    store
        .request_projection_rebuild("ledger", &ProjectionRequest::new("test"))
        .await
        .unwrap();
    let summary = ProjectionRunner::new(ledger.clone(), store.clone(), checkpoints.clone())
        .with_options(quick())
        .run_until_caught_up()
        .await
        .unwrap();
    assert_eq!(summary.applied, 4, "a rebuild replays every event");
    assert_eq!(
        checkpoints.load("ledger").await.unwrap(),
        summary.checkpoint
    );
    pool.close().await;
}

/// Replay cancels standby reads that hold back what it must apply
/// (recovery conflicts, SQLSTATE 40001): with `max_standby_streaming_delay
/// = 0`, an exclusive lock on the events table taken on the primary again
/// and again cancels the readers' queries on the standby while 16 writers
/// write. Subscriber and projection
/// retry them (transient) and still see every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovery_conflicts_on_the_standby_are_retried_and_skip_nothing() {
    let _one = STANDBY.lock().await;
    let Some(standby) = standby_url() else { return };
    exec(&standby, "ALTER SYSTEM SET max_standby_streaming_delay = 0").await;
    exec(&standby, "SELECT pg_reload_conf()").await;
    let (writer, reader) = stores(&standby).await;
    let schema = writer.config().schema.clone();
    let primary = sqlx::PgPool::connect(test_database_url()).await.unwrap();
    let on_standby = sqlx::PgPool::connect(&standby).await.unwrap();
    let conflicts = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT confl_snapshot + confl_lock + confl_bufferpin FROM pg_stat_database_conflicts \
             WHERE datname = current_database()",
        )
        .fetch_one(&on_standby)
        .await
        .unwrap()
    };
    let before = conflicts().await;
    let (p, s) = (primary.clone(), schema.clone());
    sixteen_writers_followed_on_the_standby(&writer, &reader, 20, |_| async move {
        // Until replay has cancelled a reader's query (bounded).
        let started = std::time::Instant::now();
        while conflicts().await == before && started.elapsed() < Duration::from_secs(30) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "BEGIN; LOCK TABLE {s}.events IN ACCESS EXCLUSIVE MODE; COMMIT"
            )))
            .execute(&p)
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let after = conflicts().await;
    exec(&standby, "ALTER SYSTEM RESET max_standby_streaming_delay").await;
    exec(&standby, "SELECT pg_reload_conf()").await;
    assert!(
        after > before,
        "replay cancelled standby queries ({before} -> {after})"
    );
    primary.close().await;
    on_standby.close().await;
}
