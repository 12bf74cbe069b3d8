//! Read models in PostgreSQL, updated in the same transaction as their
//! checkpoint and lease fence: [`PostgresProjection`], run through
//! [`Transactional`].

use std::sync::Arc;

use eventcore::{
    BoxError, ErrorStrategy, Event, EventFilter, GlobalPosition, Projection, ProjectionRunner,
    RecordedEvent,
};
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Transaction};

use crate::{PostgresCheckpointStore, PostgresEventStore, sql};

/// `$1` projection name, `$2` the lease generation of the runner. Its
/// checkpoint, the row locked until the transaction ends; no row once
/// another runner took the lease (the fence).
const SELECT_CHECKPOINT_FENCED: &str = "SELECT position FROM {schema}.projection_checkpoints \
     WHERE projection = $1 AND generation = $2 FOR UPDATE";

/// A read model kept in the store's PostgreSQL database, exactly once:
/// each batch of events is applied inside a transaction that the runner
/// commits together with the projection's checkpoint and lease fence. A
/// crash keeps both or neither; a runner that lost its lease to another
/// commits nothing; a batch delivered again (a restart, a lost commit
/// acknowledgement) is not applied twice.
///
/// Run it with [`Transactional::runner`]:
///
/// ```no_run
/// use eventcore::{BoxError, RecordedEvent, testing::bank::AccountEvent};
/// use eventcore_postgres::{PostgresConfig, PostgresEventStore, PostgresProjection, Transactional};
/// use sqlx::{Postgres, Transaction};
///
/// struct Deposits;
///
/// impl PostgresProjection for Deposits {
///     type Event = AccountEvent;
///
///     fn name(&self) -> &str {
///         "deposits"
///     }
///
///     async fn apply(
///         &mut self,
///         tx: &mut Transaction<'static, Postgres>,
///         events: &[RecordedEvent<AccountEvent>],
///     ) -> Result<(), BoxError> {
///         for e in events {
///             if let AccountEvent::Deposited { amount } = e.event {
///                 sqlx::query("INSERT INTO deposits (stream_id, amount) VALUES ($1, $2)")
///                     .bind(e.stream_id.as_str())
///                     .bind(amount as i64)
///                     .execute(&mut **tx)
///                     .await?;
///             }
///         }
///         Ok(())
///     }
///
///     async fn reset(&mut self, tx: &mut Transaction<'static, Postgres>) -> Result<(), BoxError> {
///         sqlx::query("DELETE FROM deposits").execute(&mut **tx).await?;
///         Ok(())
///     }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresEventStore::new(PostgresConfig::new("postgres://localhost/bank")).await?;
/// let mut runner = Transactional::runner(Deposits, &store);
/// runner.run_until_caught_up().await?;
/// # Ok(()) }
/// ```
///
/// Keep the read model in the database: state held in the value itself is
/// not rolled back with a failed transaction.
pub trait PostgresProjection: Send {
    /// The events it reads.
    type Event: Event;

    /// Unique name: the key of its checkpoint and of its runner lease.
    fn name(&self) -> &str;

    /// Which events to deliver. Default: all.
    fn filter(&self) -> EventFilter {
        EventFilter::all()
    }

    /// What to do when a batch fails (the runner then delivers its events
    /// one at a time, each in its own transaction, to find the one that
    /// fails) or an event cannot be decoded. Default: retry, then stop.
    fn error_strategy(&self) -> ErrorStrategy {
        ErrorStrategy::default()
    }

    /// Applies `events` (in global order, none applied before) inside `tx`.
    /// Do not commit or roll back: return `Ok` and the runner commits the
    /// transaction with the checkpoint; return an error (`?` on any sqlx
    /// error does) and nothing of it commits.
    fn apply(
        &mut self,
        tx: &mut Transaction<'static, Postgres>,
        events: &[RecordedEvent<Self::Event>],
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Empties the read model for a rebuild, inside the transaction that
    /// also forgets the checkpoint. Default: nothing.
    fn reset(
        &mut self,
        _tx: &mut Transaction<'static, Postgres>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        async move { Ok(()) }
    }
}

/// Runs a [`PostgresProjection`] as a [`Projection`]: each page of events
/// the runner hands over becomes one transaction holding the projection's
/// writes, its checkpoint and the check of its lease generation.
///
/// In that transaction the checkpoint row is read and locked first (a
/// runner that lost its lease stops there, with
/// [`Error::LeaseLost`](eventcore::Error::LeaseLost)), and events at or
/// below it are dropped: a page delivered again after a commit whose
/// acknowledgement was lost is not applied twice.
pub struct Transactional<P> {
    projection: P,
    checkpoints: PostgresCheckpointStore,
    select_checkpoint: Arc<str>,
}

impl<P: PostgresProjection> Transactional<P> {
    /// `projection`, checkpointed in `checkpoints`, which must be (a clone
    /// of) the checkpoint store its runner is given: the lease that fences
    /// its writes is the runner's. [`runner`](Self::runner) does that for
    /// you.
    pub fn new(projection: P, checkpoints: PostgresCheckpointStore) -> Self {
        let schema = sql::quote_ident(&checkpoints.store.config().schema);
        Self {
            projection,
            select_checkpoint: Arc::from(SELECT_CHECKPOINT_FENCED.replace("{schema}", &schema)),
            checkpoints,
        }
    }

    /// A runner of `projection` on `store`'s events, with a checkpoint
    /// store of its own next to them.
    pub fn runner(
        projection: P,
        store: &PostgresEventStore,
    ) -> ProjectionRunner<Self, PostgresEventStore, PostgresCheckpointStore> {
        let checkpoints = PostgresCheckpointStore::new(store.clone());
        ProjectionRunner::new(
            Self::new(projection, checkpoints.clone()),
            store.clone(),
            checkpoints,
        )
    }

    /// The projection.
    pub fn get_ref(&self) -> &P {
        &self.projection
    }

    /// The projection, mutably.
    pub fn get_mut(&mut self) -> &mut P {
        &mut self.projection
    }

    /// The projection, unwrapped.
    pub fn into_inner(self) -> P {
        self.projection
    }
}

/// The checkpoint of `name`, read on `conn` under a row lock and fenced:
/// `Err(LeaseLost)` if another runner holds the lease. (A function, not a
/// method: the projection itself need not be `Sync`.)
async fn checkpoint_in(
    checkpoints: &PostgresCheckpointStore,
    select: &Arc<str>,
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<GlobalPosition>, eventcore::Error> {
    let generation = checkpoints.generation(name)?;
    let row: Option<Option<i64>> = sqlx::query_scalar(AssertSqlSafe(Arc::clone(select)))
        .persistent(checkpoints.store.named())
        .bind(name)
        .bind(generation)
        .fetch_optional(conn)
        .await
        .map_err(|e| checkpoints.store.map_err("projection checkpoint", e))?;
    match row {
        // No row: another runner's generation. (Never `Ok`.)
        None => checkpoints.fenced(name, 0).map(|()| None),
        Some(position) => Ok(position.map(|p| GlobalPosition::new(p as u64))),
    }
}

impl<P: PostgresProjection> Projection for Transactional<P> {
    type Event = P::Event;

    fn name(&self) -> &str {
        self.projection.name()
    }

    fn filter(&self) -> EventFilter {
        self.projection.filter()
    }

    fn error_strategy(&self) -> ErrorStrategy {
        self.projection.error_strategy()
    }

    async fn apply(&mut self, event: RecordedEvent<P::Event>) -> Result<(), BoxError> {
        self.apply_batch(vec![event]).await
    }

    async fn apply_batch(
        &mut self,
        mut events: Vec<RecordedEvent<P::Event>>,
    ) -> Result<(), BoxError> {
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(());
        };
        let name = self.projection.name().to_owned();
        let store = &self.checkpoints.store;
        let op = "projection transaction";
        let mut tx = store.db().begin().await.map_err(|e| store.map_err(op, e))?;
        if let Some(done) =
            checkpoint_in(&self.checkpoints, &self.select_checkpoint, &mut tx, &name).await?
        {
            events.retain(|e| e.position > done);
        }
        if !events.is_empty() {
            self.projection.apply(&mut tx, &events).await?;
        }
        self.checkpoints.save_in(&mut tx, &name, last).await?;
        tx.commit().await.map_err(|e| store.map_err(op, e))?;
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), BoxError> {
        let name = self.projection.name().to_owned();
        let store = &self.checkpoints.store;
        let op = "projection reset";
        let mut tx = store.db().begin().await.map_err(|e| store.map_err(op, e))?;
        self.checkpoints.reset_in(&mut tx, &name).await?;
        self.projection.reset(&mut tx).await?;
        tx.commit().await.map_err(|e| store.map_err(op, e))?;
        Ok(())
    }
}
