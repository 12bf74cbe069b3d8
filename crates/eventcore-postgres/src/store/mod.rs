//! The PostgreSQL [`EventStore`]: the type, its constructors and the trait
//! impl. The append path is in `append`, reads in `read`; connections,
//! deadlines and the replacement of dead pooled connections in
//! [`crate::pool`].

mod append;
mod read;

use std::sync::Arc;

use eventcore::{
    AppendOutcome, AppendRequest, Error, EventStore, GlobalPosition, StoredEvent, StreamId,
    StreamVersion,
};
use sqlx::PgPool;

use crate::{
    PostgresConfig, PostgresError, error::map_sqlx, notify::Notifier, pool::Pool,
    replica::Replicas, sql::Statements,
};

/// The production event store: every guarantee of [`EventStore`] on PostgreSQL.
///
/// * One append is one round trip and one transaction. A single-stream
///   append is one statement that checks and bumps its stream row and
///   inserts its events; a multi-stream append calls the
///   `append_to_streams` function, which runs that statement per stream
///   (and locks each check-only stream's row) in stream-id order. Stream
///   rows are the locks: no global lock, no SERIALIZABLE, no deadlocks.
/// * The global position encodes the writing transaction's id, and `$all`
///   readers stop below the oldest transaction still running, so they never
///   skip an event that commits late (see `docs/adr/0001-global-order.md`).
/// * Every call is bounded on the client's clock (`connect_timeout +
///   query_timeout` and a 1 s margin), so a server that goes silent fails it
///   instead of hanging it. The store retries nothing but a pooled
///   connection found dead; transient faults go to the caller, whose
///   [`RetryPolicy`](eventcore::RetryPolicy) (the executor's, or
///   [`RetryPolicy::retry`](eventcore::RetryPolicy::retry) around direct
///   calls) owns backoff and the total deadline. A write whose answer was
///   lost fails with [`Error::OutcomeUnknown`]; re-sending the same append is
///   recognised by its event ids.
///
/// Cloning is cheap and shares the pool.
#[derive(Clone)] // Debug: config.rs (redacts the password)
pub struct PostgresEventStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Pool,
    config: PostgresConfig,
    sql: Statements,
    notifier: Notifier,
    /// Read replicas (see [`PostgresConfig::read_replicas`]).
    replicas: Replicas,
}

impl PostgresEventStore {
    /// Connects a pool per `config` (validated first). Call
    /// [`initialize`](Self::initialize) before first use of a new database.
    pub async fn new(config: PostgresConfig) -> Result<Self, PostgresError> {
        config.validate()?;
        let pool = Pool::connect(&config).await?;
        let replicas = Replicas::new(&config)?;
        Ok(Self::assemble(pool, config, replicas))
    }

    /// Wraps an existing pool. The pool's own settings apply; of `config`'s
    /// pool settings only `max_connections` is used (for metrics, and as
    /// the bound on replacing dead pooled connections), and `query_timeout`
    /// is enforced only if the pool's connections set `statement_timeout`
    /// themselves. Read replicas get pools of their own, per `config`.
    pub fn from_pool(pool: PgPool, config: PostgresConfig) -> Result<Self, PostgresError> {
        config.validate()?;
        let replicas = Replicas::new(&config)?;
        Ok(Self::assemble(pool, config, replicas))
    }

    fn assemble(pool: PgPool, config: PostgresConfig, replicas: Replicas) -> Self {
        // Wake-ups use notify_url, else the pool's own connect options (a
        // pool given to `from_pool` has its own), except through a
        // transaction pooler. `validate` checked notify_url.
        let wake = match config.notify_options() {
            Ok(Some(_)) if config.notify_url.is_none() => Some((*pool.connect_options()).clone()),
            Ok(options) => options,
            Err(_) => Some((*pool.connect_options()).clone()),
        };
        Self {
            inner: Arc::new(Inner {
                db: Pool::new(pool, &config),
                sql: Statements::new(&config.schema),
                notifier: Notifier::new(&config.schema, config.notify_interval, wake),
                replicas,
                config,
            }),
        }
    }

    /// The connection pool, for queries of your own (read models in the
    /// same database, say).
    pub fn pool(&self) -> &PgPool {
        self.inner.db.sqlx()
    }

    /// The configuration in force.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// The store's connections: every query runs on one of them.
    pub(crate) fn db(&self) -> &Pool {
        &self.inner.db
    }

    /// The read replicas.
    pub(crate) fn replicas(&self) -> &Replicas {
        &self.inner.replicas
    }

    /// Whether statements are prepared once per connection (named), or
    /// unnamed behind a transaction pooler (see [`crate::Pooler`]).
    pub(crate) fn named(&self) -> bool {
        self.inner.db.named()
    }

    /// The store's statements, for its schema.
    pub(crate) fn sql(&self) -> &Statements {
        &self.inner.sql
    }

    pub(crate) fn map_err(&self, operation: &'static str, e: sqlx::Error) -> Error {
        map_sqlx(operation, self.inner.config.query_timeout, e)
    }

    /// New events may be readable: wakes this process's subscribers and
    /// the NOTIFY task.
    fn appended(&self) {
        self.inner.notifier.appended(self.pool());
    }
}

impl EventStore for PostgresEventStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, Error> {
        self.write(request).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        self.stream_events(stream, from, limit).await
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        self.events_after(after, limit).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, Error> {
        self.version_of(stream).await
    }

    async fn read_streams_to_end(
        &self,
        streams: &[(StreamId, StreamVersion)],
    ) -> Result<Vec<Vec<StoredEvent>>, Error> {
        self.streams_to_end(streams).await
    }

    async fn head_position(&self) -> Result<GlobalPosition, Error> {
        self.head().await
    }

    fn commit_signal(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        Some(self.inner.notifier.subscribe(self.pool()))
    }

    async fn read_blocker(&self) -> Result<Option<eventcore::ReadBlocker>, Error> {
        self.oldest_open_transaction().await
    }
}
