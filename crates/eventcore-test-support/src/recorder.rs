//! The exactly-once recipe as a test projection.

use std::{marker::PhantomData, sync::Arc, time::Duration};

use eventcore::{BoxError, Event, EventFilter, Projection, RecordedEvent};
use eventcore_postgres::{PostgresCheckpointStore, PostgresEventStore};
use sqlx::{AssertSqlSafe, PgPool};

/// Records every event it applies as a row of `<schema>.applied`
/// (`event_id`, `position`, `runner`), inserted in the same transaction
/// that saves its checkpoint with
/// [`save_in`](PostgresCheckpointStore::save_in): the exactly-once recipe.
/// Nothing deduplicates, so a second application of an event is a second
/// row, and [`applications`] shows it.
pub struct AppliedRecorder<E> {
    pool: PgPool,
    checkpoints: PostgresCheckpointStore,
    insert: Arc<str>,
    runner: &'static str,
    filter: EventFilter,
    pause: Duration,
    event: PhantomData<fn() -> E>,
}

impl<E> AppliedRecorder<E> {
    /// The projection's name, under which its checkpoint is saved.
    pub const NAME: &'static str = "applied";

    /// A recorder on `store`'s schema, creating `applied` if it is not
    /// there yet. It applies every event, as runner `""`.
    pub async fn new(store: &PostgresEventStore) -> Self {
        let schema = &store.config().schema;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS \"{schema}\".applied \
             (event_id UUID NOT NULL, position BIGINT NOT NULL, runner TEXT NOT NULL)"
        )))
        .execute(store.pool())
        .await
        .expect("create the applied table");
        Self {
            pool: store.pool().clone(),
            checkpoints: PostgresCheckpointStore::new(store.clone()),
            insert: format!(
                "INSERT INTO \"{schema}\".applied (event_id, position, runner) \
                 SELECT id, p, $3 FROM unnest($1::uuid[], $2::bigint[]) AS e(id, p)"
            )
            .into(),
            runner: "",
            filter: EventFilter::all(),
            pause: Duration::ZERO,
            event: PhantomData,
        }
    }

    /// Labels its rows `runner`, to tell runners apart.
    pub fn runner(mut self, runner: &'static str) -> Self {
        self.runner = runner;
        self
    }

    /// Applies only the events of streams whose id starts with `prefix`.
    pub fn stream_prefix(mut self, prefix: &str) -> Self {
        self.filter = EventFilter::all().stream_prefix(prefix);
        self
    }

    /// Waits `pause` between the rows and the checkpoint: widens the window
    /// in which a runner that lost its lease has a transaction in flight.
    pub fn pause_before_checkpoint(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    /// The checkpoint store it saves to, for the runner.
    pub fn checkpoints(&self) -> PostgresCheckpointStore {
        self.checkpoints.clone()
    }
}

impl<E: Event> Projection for AppliedRecorder<E> {
    type Event = E;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn filter(&self) -> EventFilter {
        self.filter.clone()
    }

    async fn apply(&mut self, event: RecordedEvent<E>) -> Result<(), BoxError> {
        self.apply_batch(vec![event]).await
    }

    async fn apply_batch(&mut self, events: Vec<RecordedEvent<E>>) -> Result<(), BoxError> {
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(());
        };
        let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.event_id.as_uuid()).collect();
        let positions = events
            .iter()
            .map(|e| i64::try_from(e.position.get()))
            .collect::<Result<Vec<i64>, _>>()?;
        let mut tx = self.pool.begin().await?;
        // Unnamed, in a transaction: what a transaction pooler needs.
        sqlx::query(AssertSqlSafe(Arc::clone(&self.insert)))
            .persistent(false)
            .bind(&ids)
            .bind(&positions)
            .bind(self.runner)
            .execute(&mut *tx)
            .await?;
        if !self.pause.is_zero() {
            tokio::time::sleep(self.pause).await;
        }
        self.checkpoints.save_in(&mut tx, Self::NAME, last).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Rows of `<schema>.applied`, and how many distinct events they are.
pub async fn applications(store: &PostgresEventStore) -> (i64, i64) {
    let schema = &store.config().schema;
    // In a transaction, unnamed: safe through a transaction pooler too.
    let mut tx = store.pool().begin().await.expect("begin");
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*), count(DISTINCT event_id) FROM \"{schema}\".applied"
    )))
    .persistent(false)
    .fetch_one(&mut *tx)
    .await
    .expect("count the applied rows")
}
