//! A live read model: the balance of every account, kept up to date by a
//! [`Projection`] that follows the account streams in global order.
//!
//! The same [`BalanceProjection`] runs on two read models ([`ReadModel`]):
//!
//! * **In memory**, a `HashMap` next to an
//!   [`InMemoryCheckpointStore`](eventcore::InMemoryCheckpointStore). The
//!   runner saves its checkpoint every so often, so after a restart it may
//!   deliver a few events again (at-least-once); `apply` is idempotent
//!   because each account remembers the last position it applied.
//! * **PostgreSQL**, a table `<schema>.account_balances` next to the store's
//!   events, written by [`PgBalances`], a [`PostgresProjection`]: the runner
//!   hands it each page of events inside a transaction that also moves the
//!   projection's checkpoint and checks its lease ([`Transactional`]), so
//!   the effect is exactly once: a crash keeps both or neither, a page
//!   delivered again is not applied again, and a runner that lost its lease
//!   to another commits nothing.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use eventcore::{BoxError, ErrorStrategy, EventFilter, GlobalPosition, Projection, RecordedEvent};
use eventcore_postgres::{
    PostgresCheckpointStore, PostgresEventStore, PostgresProjection, Transactional,
};
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};

use crate::domain::{AccountEvent, STREAM_PREFIX};

/// The projection's name: the key of its checkpoint and of its runner lease.
pub(crate) const NAME: &str = "bank.balances";

/// Balances per account name, as a read model reports them.
pub(crate) type Balances = BTreeMap<String, i128>;

/// The account an event belongs to: its stream without the prefix.
fn account_of(event: &RecordedEvent<AccountEvent>) -> Result<&str, BoxError> {
    let stream = event.stream_id.as_str();
    stream
        .strip_prefix(STREAM_PREFIX)
        .ok_or_else(|| format!("'{stream}' is not an account stream").into())
}

/// Follows `account-*` events and keeps one balance per account.
pub(crate) struct BalanceProjection {
    read_model: ReadModel,
    progress: Arc<Progress>,
}

impl BalanceProjection {
    /// A projection writing to `read_model`.
    pub(crate) fn new(read_model: ReadModel) -> Self {
        Self {
            read_model,
            progress: Arc::default(),
        }
    }

    /// Live counters, readable while a runner owns the projection.
    pub(crate) fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    /// Every account's balance as the read model has it.
    pub(crate) async fn balances(&self) -> anyhow::Result<Balances> {
        match &self.read_model {
            ReadModel::Memory(m) => Ok(m
                .rows
                .iter()
                .map(|(account, row)| (account.clone(), row.balance))
                .collect()),
            ReadModel::Postgres(pg) => pg.get_ref().balances().await,
        }
    }
}

impl Projection for BalanceProjection {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        NAME
    }

    fn filter(&self) -> EventFilter {
        EventFilter::all().stream_prefix(STREAM_PREFIX)
    }

    /// A skipped event would leave a balance wrong for good, so never skip:
    /// retry (a lost connection heals), then stop the runner loudly.
    fn error_strategy(&self) -> ErrorStrategy {
        ErrorStrategy::Retry {
            max_attempts: 5,
            base_delay: Duration::from_millis(50),
        }
    }

    async fn apply(&mut self, event: RecordedEvent<AccountEvent>) -> Result<(), BoxError> {
        self.apply_batch(vec![event]).await
    }

    /// A page at a time; on PostgreSQL one transaction with the checkpoint.
    /// (If it fails, the runner delivers the page's events one by one
    /// through `apply` to find the culprit.)
    async fn apply_batch(
        &mut self,
        events: Vec<RecordedEvent<AccountEvent>>,
    ) -> Result<(), BoxError> {
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(());
        };
        let total = events.len() as u64;
        let fresh = match &mut self.read_model {
            ReadModel::Memory(m) => m.apply(&events)?,
            ReadModel::Postgres(pg) => {
                pg.apply_batch(events).await?;
                total
            }
        };
        self.progress.record(last, fresh, total);
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), BoxError> {
        match &mut self.read_model {
            ReadModel::Memory(m) => m.rows.clear(),
            ReadModel::Postgres(pg) => pg.reset().await?,
        }
        self.progress.reset();
        Ok(())
    }
}

/// Counters shared with whoever watches the projection.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    applied: AtomicU64,
    duplicates: AtomicU64,
    last_position: AtomicU64,
}

impl Progress {
    /// A batch of `total` events up to `last`, `fresh` of which changed a
    /// balance.
    fn record(&self, last: GlobalPosition, fresh: u64, total: u64) {
        self.applied.fetch_add(fresh, Ordering::Relaxed);
        self.duplicates
            .fetch_add(total.saturating_sub(fresh), Ordering::Relaxed);
        self.last_position.fetch_max(last.get(), Ordering::Release);
    }

    fn reset(&self) {
        self.applied.store(0, Ordering::Relaxed);
        self.duplicates.store(0, Ordering::Relaxed);
        self.last_position.store(0, Ordering::Release);
    }

    /// Events that changed a balance.
    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Events delivered again and ignored.
    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// The position of the last event handled (`START` before the first).
    pub(crate) fn last_position(&self) -> GlobalPosition {
        GlobalPosition::new(self.last_position.load(Ordering::Acquire))
    }
}

/// The two homes of the balances.
pub(crate) enum ReadModel {
    /// A map in this process.
    Memory(MemoryBalances),
    /// A table next to the events, written in the runner's transactions.
    Postgres(Box<Transactional<PgBalances>>),
}

impl ReadModel {
    /// An empty in-memory read model.
    pub(crate) fn memory() -> Self {
        ReadModel::Memory(MemoryBalances::default())
    }

    /// The table in `store`'s schema, created if missing. `checkpoints`
    /// must be (a clone of) the checkpoint store the projection's runner is
    /// given: the checkpoint written with the rows is fenced by the lease
    /// that runner holds through it.
    pub(crate) async fn postgres(
        store: &PostgresEventStore,
        checkpoints: PostgresCheckpointStore,
    ) -> anyhow::Result<Self> {
        let balances = PgBalances::create(store).await?;
        Ok(ReadModel::Postgres(Box::new(Transactional::new(
            balances,
            checkpoints,
        ))))
    }

    /// Where the balances live, for printing.
    pub(crate) fn describe(&self) -> String {
        match self {
            ReadModel::Memory(_) => "a HashMap in memory".into(),
            ReadModel::Postgres(pg) => format!("PostgreSQL table {}", pg.get_ref().table),
        }
    }
}

/// Balances in a map; each row remembers the last position it applied.
#[derive(Debug, Default)]
pub(crate) struct MemoryBalances {
    rows: HashMap<String, Row>,
}

#[derive(Debug, Default)]
struct Row {
    balance: i128,
    last_position: GlobalPosition,
}

impl MemoryBalances {
    /// Applies the events not applied yet; returns how many that was.
    fn apply(&mut self, events: &[RecordedEvent<AccountEvent>]) -> Result<u64, BoxError> {
        let mut fresh = 0;
        for event in events {
            let row = self.rows.entry(account_of(event)?.to_owned()).or_default();
            // An account's events arrive in global order, so anything at or
            // before its last position is a redelivery.
            if event.position > row.last_position {
                row.balance += event.event.delta();
                row.last_position = event.position;
                fresh += 1;
            }
        }
        Ok(fresh)
    }
}

/// Balances in `<schema>.account_balances`. Exactly-once delivery is the
/// runner's ([`Transactional`]), so the SQL just adds.
pub(crate) struct PgBalances {
    pool: PgPool,
    table: String,
    upsert: Arc<str>,
    select: Arc<str>,
    delete: Arc<str>,
}

impl PgBalances {
    async fn create(store: &PostgresEventStore) -> anyhow::Result<Self> {
        // The schema name was validated by the store's config (letters,
        // digits and `_`), so it is safe to format into SQL.
        let table = format!("{}.account_balances", store.config().schema);
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {table} (account TEXT PRIMARY KEY, balance BIGINT NOT NULL)"
        );
        sqlx::raw_sql(AssertSqlSafe(ddl))
            .execute(store.pool())
            .await
            .with_context(|| format!("cannot create {table}"))?;
        // A page's deltas summed per account, in one statement.
        let upsert = format!(
            "INSERT INTO {table} AS b (account, balance) \
             SELECT account, sum(delta)::bigint \
             FROM unnest($1::text[], $2::bigint[]) AS e(account, delta) GROUP BY account \
             ON CONFLICT (account) DO UPDATE SET balance = b.balance + excluded.balance"
        );
        Ok(Self {
            pool: store.pool().clone(),
            upsert: upsert.into(),
            select: format!("SELECT account, balance FROM {table}").into(),
            delete: format!("DELETE FROM {table}").into(),
            table,
        })
    }

    async fn balances(&self) -> anyhow::Result<Balances> {
        let rows: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(Arc::clone(&self.select)))
            .fetch_all(&self.pool)
            .await
            .with_context(|| format!("cannot read {}", self.table))?;
        Ok(rows
            .into_iter()
            .map(|(account, balance)| (account, i128::from(balance)))
            .collect())
    }
}

impl PostgresProjection for PgBalances {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        NAME
    }

    async fn apply(
        &mut self,
        tx: &mut Transaction<'static, Postgres>,
        events: &[RecordedEvent<AccountEvent>],
    ) -> Result<(), BoxError> {
        let mut accounts = Vec::with_capacity(events.len());
        let mut deltas = Vec::with_capacity(events.len());
        for event in events {
            accounts.push(account_of(event)?);
            deltas.push(i64::try_from(event.event.delta())?);
        }
        sqlx::query(AssertSqlSafe(Arc::clone(&self.upsert)))
            .bind(&accounts)
            .bind(&deltas)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn reset(&mut self, tx: &mut Transaction<'static, Postgres>) -> Result<(), BoxError> {
        sqlx::query(AssertSqlSafe(Arc::clone(&self.delete)))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use eventcore::{
        CheckpointStore, EventStore, InMemoryCheckpointStore, InMemoryEventStore, ProjectionRunner,
        StreamId, testing::seed,
    };
    use uuid::Uuid;

    use super::*;
    use crate::domain::AccountId;

    fn id(name: &str) -> AccountId {
        AccountId::new(name).unwrap()
    }

    fn opened(initial_deposit: u64) -> AccountEvent {
        AccountEvent::Opened {
            owner: "someone".into(),
            initial_deposit,
        }
    }

    /// Writes both legs of a transfer the way the `Transfer` command does.
    async fn transfer(store: &InMemoryEventStore, from: &str, to: &str, amount: u64) {
        let transfer_id = Uuid::now_v7();
        let out = AccountEvent::TransferredOut {
            amount,
            to: id(to),
            transfer_id,
        };
        let inn = AccountEvent::TransferredIn {
            amount,
            from: id(from),
            transfer_id,
        };
        seed(store, id(from).stream(), [out]).await.unwrap();
        seed(store, id(to).stream(), [inn]).await.unwrap();
    }

    /// alice 100 - 30 + 5 - 15 = 60, bob 50 + 30 = 80, carol 0 + 15 = 15;
    /// plus an event outside `account-*` that the filter must ignore.
    async fn scripted_history() -> InMemoryEventStore {
        let store = InMemoryEventStore::new();
        seed(&store, id("alice").stream(), [opened(100)])
            .await
            .unwrap();
        seed(&store, id("bob").stream(), [opened(50)])
            .await
            .unwrap();
        seed(&store, id("carol").stream(), [opened(0)])
            .await
            .unwrap();
        transfer(&store, "alice", "bob", 30).await;
        seed(
            &store,
            id("alice").stream(),
            [AccountEvent::Deposited { amount: 5 }],
        )
        .await
        .unwrap();
        let elsewhere = StreamId::new("audit-log").unwrap();
        seed(
            &store,
            &elsewhere,
            [AccountEvent::Deposited { amount: 999 }],
        )
        .await
        .unwrap();
        transfer(&store, "alice", "carol", 15).await;
        store
    }

    fn expected() -> Balances {
        [("alice", 60), ("bob", 80), ("carol", 15)]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b))
            .collect()
    }

    #[tokio::test]
    async fn the_projection_folds_a_scripted_history_into_balances() {
        let store = scripted_history().await;
        let mut runner = ProjectionRunner::new(
            BalanceProjection::new(ReadModel::memory()),
            store.clone(),
            InMemoryCheckpointStore::new(),
        );
        let summary = runner.run_until_caught_up().await.unwrap();
        assert_eq!(summary.applied, 8, "the audit-log event is filtered out");
        assert_eq!(runner.projection().balances().await.unwrap(), expected());
        let progress = runner.projection().progress();
        assert_eq!(progress.applied(), 8);
        assert_eq!(progress.duplicates(), 0);
        assert_eq!(
            progress.last_position(),
            store.head_position().await.unwrap()
        );

        // A rebuild forgets everything and arrives at the same balances.
        let rebuilt = runner.rebuild().await.unwrap();
        assert_eq!(rebuilt.applied, 8);
        assert_eq!(runner.projection().balances().await.unwrap(), expected());
    }

    #[tokio::test]
    async fn applying_the_same_event_twice_does_not_double_count() {
        let store = scripted_history().await;
        let mut runner = ProjectionRunner::new(
            BalanceProjection::new(ReadModel::memory()),
            store.clone(),
            InMemoryCheckpointStore::new(),
        );
        runner.run_until_caught_up().await.unwrap();
        let mut projection = runner.into_projection();

        // Every account event again, straight into `apply`.
        let all = store.read_all(GlobalPosition::START, 100).await.unwrap();
        let filter = projection.filter();
        for stored in all.iter().filter(|e| filter.matches(e)) {
            let event = stored.decode::<AccountEvent>().unwrap();
            projection.apply(event.clone()).await.unwrap();
            projection.apply(event).await.unwrap();
        }
        assert_eq!(projection.balances().await.unwrap(), expected());
        assert_eq!(projection.progress().duplicates(), 16);

        // A runner resuming from a stale checkpoint (a crash before the
        // last save) redelivers the tail: nothing changes either.
        let checkpoints = InMemoryCheckpointStore::new();
        checkpoints.save(NAME, all[2].position).await.unwrap();
        let mut resumed = ProjectionRunner::new(projection, store, checkpoints);
        let summary = resumed.run_until_caught_up().await.unwrap();
        assert_eq!(
            summary.applied, 5,
            "the 5 account events after the checkpoint"
        );
        assert_eq!(resumed.projection().balances().await.unwrap(), expected());
        assert_eq!(resumed.projection().progress().applied(), 8);
    }
}
