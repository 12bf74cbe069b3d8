//! The contract of transactional PostgreSQL projections
//! ([`PostgresProjection`] run through [`Transactional`]): the read model,
//! the checkpoint and the lease fence commit together, exactly once.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use eventcore::{
    BoxError, CheckpointStore, Error, ErrorStrategy, EventFilter, EventStore, GlobalPosition,
    Projection, RecordedEvent, StreamId,
    testing::{bank::AccountEvent, seed, settled_positions},
};
use eventcore_postgres::{
    PostgresCheckpointStore, PostgresEventStore, PostgresProjection, Transactional,
};
use eventcore_test_support::fresh_store;
use sqlx::{AssertSqlSafe, Postgres, Transaction};

/// One row per applied event (a second application would violate the
/// primary key), in `<schema>.seen`. Fails on a deposit of `poison`.
struct Seen {
    table: String,
    category: String,
    poison: Option<u64>,
    /// Calls of `apply` with at least one event.
    calls: Arc<AtomicUsize>,
}

impl Seen {
    async fn new(store: &PostgresEventStore, category: &str) -> Self {
        let table = format!("{}.seen", store.config().schema);
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE TABLE {table} (position BIGINT PRIMARY KEY, stream_id TEXT NOT NULL)"
        )))
        .execute(store.pool())
        .await
        .unwrap();
        Self {
            table,
            category: category.to_owned(),
            poison: None,
            calls: Arc::default(),
        }
    }
}

impl PostgresProjection for Seen {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "seen"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::all().stream_prefix(self.category.clone())
    }

    fn error_strategy(&self) -> ErrorStrategy {
        ErrorStrategy::Stop
    }

    async fn apply(
        &mut self,
        tx: &mut Transaction<'static, Postgres>,
        events: &[RecordedEvent<AccountEvent>],
    ) -> Result<(), BoxError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        for e in events {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {} (position, stream_id) VALUES ($1, $2)",
                self.table
            )))
            .bind(e.position.get() as i64)
            .bind(e.stream_id.as_str())
            .execute(&mut **tx)
            .await?;
            if let AccountEvent::Deposited { amount } = e.event
                && Some(amount) == self.poison
            {
                return Err(format!("poison deposit of {amount}").into());
            }
        }
        Ok(())
    }

    async fn reset(&mut self, tx: &mut Transaction<'static, Postgres>) -> Result<(), BoxError> {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {}", self.table)))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

async fn rows(store: &PostgresEventStore) -> Vec<GlobalPosition> {
    let table = format!("{}.seen", store.config().schema);
    let rows: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT position FROM {table} ORDER BY position"
    )))
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|p| GlobalPosition::new(p as u64))
        .collect()
}

async fn deposits(store: &PostgresEventStore, category: &str, amounts: &[u64]) {
    let stream = StreamId::new(format!("{category}1")).unwrap();
    seed(
        store,
        &stream,
        amounts
            .iter()
            .map(|&amount| AccountEvent::Deposited { amount }),
    )
    .await
    .unwrap();
}

/// Every event once in the read model, with the checkpoint at the last;
/// a rebuild empties the model and the checkpoint in one transaction and
/// replays to the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_and_checkpoint_commit_together_and_rebuild_together() {
    let store = fresh_store().await;
    deposits(&store, "acct-", &[1, 2, 3, 4, 5]).await;
    seed(
        &store,
        &StreamId::new("other-1").unwrap(),
        [AccountEvent::Deposited { amount: 9 }],
    )
    .await
    .unwrap();
    let expected = settled_positions(&store, "acct-", 5).await;
    let seen = Seen::new(&store, "acct-").await;
    let calls = Arc::clone(&seen.calls);
    let mut runner = Transactional::runner(seen, &store);
    let summary = runner.run_until_caught_up().await.unwrap();
    assert_eq!(summary.applied, 5);
    assert_eq!(rows(&store).await, expected);
    assert_eq!(
        calls.load(Ordering::Relaxed),
        1,
        "one page, one transaction"
    );
    let checkpoints = PostgresCheckpointStore::new(store.clone());
    assert!(checkpoints.load("seen").await.unwrap() >= Some(expected[4]));

    let rebuilt = runner.rebuild().await.unwrap();
    assert_eq!(rebuilt.applied, 5);
    assert_eq!(
        rows(&store).await,
        expected,
        "no duplicate key: reset first"
    );
}

/// A batch that fails leaves neither rows nor checkpoint: the runner then
/// applies its events one at a time, each with its checkpoint, up to the
/// one that fails, and stops there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_commits_nothing_of_itself() {
    let store = fresh_store().await;
    deposits(&store, "acct-", &[1, 2, 66, 4]).await;
    let positions = settled_positions(&store, "acct-", 4).await;
    let mut seen = Seen::new(&store, "acct-").await;
    seen.poison = Some(66);
    let mut runner = Transactional::runner(seen, &store);
    let err = runner.run_until_caught_up().await.unwrap_err();
    assert!(
        matches!(&err, Error::Projection { position: Some(p), .. } if *p == positions[2]),
        "{err}"
    );
    // The poison's own row rolled back with its transaction.
    assert_eq!(rows(&store).await, positions[..2]);
    let checkpoints = PostgresCheckpointStore::new(store.clone());
    assert_eq!(checkpoints.load("seen").await.unwrap(), Some(positions[1]));
}

/// A page delivered again (its commit's acknowledgement was lost, or the
/// runner restarted from an older checkpoint) is not applied again: the
/// transaction drops what its locked checkpoint already covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_delivered_twice_is_applied_once() {
    let store = fresh_store().await;
    deposits(&store, "acct-", &[1, 2, 3]).await;
    let positions = settled_positions(&store, "acct-", 3).await;
    let page: Vec<_> = store
        .read_all(GlobalPosition::START, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.decode::<AccountEvent>().unwrap())
        .collect();
    let checkpoints = PostgresCheckpointStore::new(store.clone());
    let _lease = checkpoints.try_acquire("seen").await.unwrap().unwrap();
    let seen = Seen::new(&store, "acct-").await;
    let calls = Arc::clone(&seen.calls);
    let mut projection = Transactional::new(seen, checkpoints.clone());
    projection.apply_batch(page[..2].to_vec()).await.unwrap();
    // Again, and overlapping: only the third event is new.
    projection.apply_batch(page.clone()).await.unwrap();
    projection.apply_batch(page.clone()).await.unwrap();
    assert_eq!(rows(&store).await, positions);
    assert_eq!(
        calls.load(Ordering::Relaxed),
        2,
        "the last page was all old"
    );
    assert_eq!(checkpoints.load("seen").await.unwrap(), Some(positions[2]));
}

/// A runner whose lease another took (its generation bumped) commits
/// nothing, and learns that it lost the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_lost_its_lease_commits_nothing() {
    let store = fresh_store().await;
    deposits(&store, "acct-", &[1, 2]).await;
    let _ = settled_positions(&store, "acct-", 2).await;
    let page: Vec<_> = store
        .read_all(GlobalPosition::START, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.decode::<AccountEvent>().unwrap())
        .collect();
    let checkpoints = PostgresCheckpointStore::new(store.clone());
    let lease = checkpoints.try_acquire("seen").await.unwrap().unwrap();
    let mut projection = Transactional::new(Seen::new(&store, "acct-").await, checkpoints);
    // What a takeover does to the row: a new generation.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "UPDATE {}.projection_checkpoints SET generation = generation + 1 WHERE projection = 'seen'",
        store.config().schema
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let err = projection.apply_batch(page).await.unwrap_err();
    assert!(
        matches!(err.downcast_ref::<Error>(), Some(Error::LeaseLost { .. })),
        "{err}"
    );
    assert!(rows(&store).await.is_empty());
    assert!(!lease.is_held().await, "the lease is known to be lost");
}
