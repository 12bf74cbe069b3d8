//! The one owner of the store's connections: acquiring them (a failure
//! there is a [`ConnectError`]), parking and reusing them between calls,
//! replacing a pooled connection found dead, the client-side deadline of
//! every call, and the pool's statistics. Every query of the crate runs on
//! a connection handed out here.
//!
//! sqlx pings a connection each time it returns to its pool: one extra
//! round trip and one server wake-up per call, which costs a single-event
//! append a large share of its throughput. So a connection whose call
//! completed cleanly is parked here and taken again by the next call.
//! Parked connections stay checked out of the sqlx pool, so they count
//! against `max_connections`; a reaper hands back any connection idle for
//! more than [`IDLE_RETURN`], and every connection goes back after
//! [`MAX_PARKED`] however busy (so sqlx's `max_lifetime` applies, and your
//! own `pool().acquire()` calls wait at most about that long even while the
//! store keeps every connection busy). The store's background work
//! (NOTIFY, LISTEN, projection leases) has connections of its own.
//!
//! Behind a transaction pooler ([`Pooler::Transaction`](crate::Pooler)),
//! every call's work runs inside one explicit transaction opened here,
//! which also carries `query_timeout` (`SET LOCAL statement_timeout`, one
//! simple-protocol round trip with the `BEGIN`), and its statements are
//! unnamed ([`Pool::named`]): the pooler keeps one server connection for a
//! client only while a transaction is open, so nothing may be prepared
//! for later, and an unnamed statement outside a transaction may be bound
//! on another client's server connection.
//!
//! Whether a connection may be reused is decided by [`Pool::call`] alone,
//! from how the call's work ended: completed, successfully or with an
//! answer of the server that leaves the session usable. A connection whose
//! work did not complete (cancelled, cut off by the deadline) or failed on
//! the connection itself is closed, never parked.

use std::{
    future::Future,
    ops::{Deref, DerefMut},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use eventcore::Error;
use sqlx::{
    Connection, PgConnection, PgPool, Postgres, Transaction,
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tracing::Instrument;

use sqlx::postgres::PgTransactionManager;
use sqlx_core::transaction::TransactionManager;

use crate::{
    PoolMetrics, PostgresConfig, PostgresError,
    error::{connection_lost, map_sqlx},
    instrument,
    metrics::Cause,
};

/// Parked connections idle longer than this go back to the sqlx pool.
pub(crate) const IDLE_RETURN: Duration = Duration::from_millis(200);
/// Connections kept (in use or parked) longer than this go back too, so a
/// caller waiting in the sqlx pool gets one within this long even while
/// the store is busy.
pub(crate) const MAX_PARKED: Duration = Duration::from_secs(1);

/// Added to `connect_timeout + query_timeout` for the client-side deadline
/// of one attempt, for the round trips the server's timeout does not cover.
const CLIENT_DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// How long a health check waits for a pooled connection before it
/// connects on its own to find out why there is none.
const PROBE_WAIT: Duration = Duration::from_millis(500);

/// A call's work on a connection: borrows it for the call only.
pub(crate) type Work<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

/// Whether a store call writes, so that a lost answer means the write may
/// have committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Read,
    Write,
}

/// A connection could not be had: the connect failed or the pool had none
/// free in time. Kept apart from errors on an established connection,
/// which may be a stale pooled connection worth replacing at once; a failed
/// connect is retried only by the caller's policy, with backoff.
#[derive(Debug, thiserror::Error)]
#[error("no connection: {0}")]
pub(crate) struct ConnectError(#[source] pub(crate) sqlx::Error);

/// The store's connections.
#[derive(Debug)]
pub(crate) struct Pool {
    sqlx: PgPool,
    parked: Arc<Parked>,
    stats: Stats,
    deadline: Duration,
    connect_timeout: Duration,
    test_before_acquire: bool,
    max_connections: u32,
    query_timeout: Duration,
    /// Behind a transaction pooler: the statement that opens each call's
    /// transaction and sets its timeout.
    begin: Option<String>,
}

/// Counters updated on every acquisition.
#[derive(Debug, Default)]
struct Stats {
    acquisitions: AtomicU64,
    acquire_nanos: AtomicU64,
    timeouts: AtomicU64,
    peak: AtomicU32,
}

/// Connections between calls, most recently parked last, and the task
/// that hands idle ones back.
#[derive(Debug, Default)]
struct Parked {
    idle: Mutex<Vec<Idle>>,
    reaper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug)]
struct Idle {
    conn: PoolConnection<Postgres>,
    idle_since: Instant,
    taken_at: Instant,
}

/// A connection on loan to one call. Parked again on drop only if the call
/// marked it reusable; closed otherwise.
#[derive(Debug)]
pub(crate) struct Conn<'p> {
    conn: Option<PoolConnection<Postgres>>,
    taken_at: Instant,
    reusable: bool,
    parked: &'p Parked,
}

/// An error a call's work may end with: a store error, or one that wraps
/// one (the call path looks inside for stale connections and lost writes).
pub(crate) trait CallError: From<Error> {
    /// The store error this is, if it is one.
    fn store(&self) -> Option<&Error>;
    /// This as a store error, or itself.
    fn into_store(self) -> Result<Error, Self>;
}

impl CallError for Error {
    fn store(&self) -> Option<&Error> {
        Some(self)
    }
    fn into_store(self) -> Result<Error, Self> {
        Ok(self)
    }
}

impl CallError for PostgresError {
    fn store(&self) -> Option<&Error> {
        match self {
            PostgresError::Store(e) => Some(e),
            _ => None,
        }
    }
    fn into_store(self) -> Result<Error, Self> {
        match self {
            PostgresError::Store(e) => Ok(e),
            other => Err(other),
        }
    }
}

impl Pool {
    /// A lazily connecting sqlx pool per `config`, once the database has
    /// answered (see [`first_connection`]).
    pub(crate) async fn connect(config: &PostgresConfig) -> Result<PgPool, PostgresError> {
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(config.min_connections)
            .acquire_timeout(config.connect_timeout)
            .idle_timeout(config.idle_timeout)
            .max_lifetime(config.max_lifetime)
            .test_before_acquire(config.test_before_acquire)
            .connect_lazy_with(config.connect_options()?);
        first_connection(&pool, config.connect_timeout).await?;
        Ok(pool)
    }

    /// A lazily connecting sqlx pool to the read replica at `url`, with the
    /// primary's settings but none kept idle. Nothing is awaited: a replica
    /// that is down when the store starts fails its reads (transiently)
    /// until it is back, and the store starts anyway.
    pub(crate) fn replica(config: &PostgresConfig, url: &str) -> Result<PgPool, PostgresError> {
        Ok(PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(0)
            .acquire_timeout(config.connect_timeout)
            .idle_timeout(config.idle_timeout)
            .max_lifetime(config.max_lifetime)
            .test_before_acquire(config.test_before_acquire)
            .connect_lazy_with(config.connect_options_for("read_replicas", url)?))
    }

    pub(crate) fn new(sqlx: PgPool, config: &PostgresConfig) -> Self {
        Self {
            sqlx,
            parked: Arc::default(),
            stats: Stats::default(),
            deadline: config
                .connect_timeout
                .saturating_add(config.query_timeout)
                .saturating_add(CLIENT_DEADLINE_MARGIN),
            connect_timeout: config.connect_timeout,
            test_before_acquire: config.test_before_acquire,
            max_connections: config.max_connections,
            query_timeout: config.query_timeout,
            begin: config.transaction_pooled().then(|| {
                // Digits and "ms", made here: nothing to inject.
                format!(
                    "BEGIN; SET LOCAL statement_timeout = '{}'",
                    config.statement_timeout()
                )
            }),
        }
    }

    /// Whether statements may be prepared once per connection and kept
    /// (named); `false` behind a transaction pooler, where they run unnamed.
    pub(crate) fn named(&self) -> bool {
        self.begin.is_none()
    }

    /// Behind a transaction pooler, opens a transaction (with the timeout)
    /// on `conn`, a connection the store uses outside [`call`](Self::call)
    /// (a health check's); nothing otherwise. [`end_on`](Self::end_on)
    /// ends it.
    pub(crate) async fn begin_on(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        match &self.begin {
            None => Ok(()),
            Some(begin) => {
                let statement =
                    sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(begin.to_owned()));
                PgTransactionManager::begin(conn, Some(statement)).await
            }
        }
    }

    /// Rolls back what [`begin_on`](Self::begin_on) opened.
    pub(crate) async fn end_on(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        match &self.begin {
            None => Ok(()),
            Some(_) => PgTransactionManager::rollback(conn).await,
        }
    }

    /// After a statement of a call's work failed: behind a transaction
    /// pooler the call's transaction is aborted, so it is rolled back and a
    /// new one opened for the statements that follow (as each statement
    /// of a direct connection is its own transaction); nothing otherwise.
    pub(crate) async fn restart_on(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.begin.is_some() {
            self.end_on(conn).await?;
            self.begin_on(conn).await?;
        }
        Ok(())
    }

    /// `work` inside a transaction of its own on `conn`, committed if it
    /// succeeds and rolled back otherwise (behind a transaction pooler).
    /// The flag: the session is fit for reuse as far as the transaction's
    /// ends go (`BEGIN`, `COMMIT` or the rollback did not fail).
    async fn in_transaction<'p, T, E, F>(
        &self,
        operation: &'static str,
        begin: &str,
        conn: &mut Conn<'p>,
        work: &mut F,
    ) -> (Result<T, E>, bool)
    where
        E: CallError,
        F: for<'c> FnMut(&'c mut Conn<'p>) -> Work<'c, T, E>,
    {
        let map = |e| E::from(map_sqlx(operation, self.query_timeout, e));
        let statement = sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(begin.to_owned()));
        if let Err(e) = PgTransactionManager::begin(conn, Some(statement)).await {
            return (Err(map(e)), false);
        }
        match work(conn).await {
            Ok(value) => match PgTransactionManager::commit(conn).await {
                Ok(()) => (Ok(value), true),
                Err(e) => (Err(map(e)), false),
            },
            Err(e) => {
                let rolled_back = PgTransactionManager::rollback(conn).await.is_ok();
                (Err(e), rolled_back)
            }
        }
    }

    /// The sqlx pool, for the application's own queries and for the
    /// background tasks' connect options.
    pub(crate) fn sqlx(&self) -> &PgPool {
        &self.sqlx
    }

    /// The longest one attempt of a call may take on the client's clock: a
    /// connection within `connect_timeout`, the statement within
    /// `query_timeout` (which the server enforces, unless it went silent),
    /// and a margin for the round trips around them.
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    /// One call: `work` runs on a connection of this pool, bounded by
    /// [`deadline`](Self::deadline), and runs again, on a fresh connection,
    /// only when it ran into a pooled connection that had died while parked
    /// (a server restart, a terminated backend), at most once per pooled
    /// connection. Nothing else is retried here: transient faults go to the
    /// caller, whose [`RetryPolicy`](eventcore::RetryPolicy) owns backoff
    /// and the total deadline.
    ///
    /// For a write (`Call::Write`), a lost connection or the client
    /// deadline leaves the outcome unknown: that is
    /// [`Error::OutcomeUnknown`], and after such a failure only a definite
    /// answer of a re-send (its outcome, a conflict, a duplicate id) is
    /// passed on as it is.
    ///
    /// Each attempt runs in a span `eventcore.attempt` with its number; the
    /// call is counted in the store's metrics.
    pub(crate) async fn call<'p, T, E, F>(
        &'p self,
        operation: &'static str,
        kind: Call,
        mut work: F,
    ) -> Result<T, E>
    where
        E: CallError,
        F: for<'c> FnMut(&'c mut Conn<'p>) -> Work<'c, T, E>,
    {
        let started = Instant::now();
        let mut stale_left = self.max_connections;
        let mut in_doubt = false;
        let mut number = 0_u32;
        let result = loop {
            number += 1;
            let span = tracing::debug_span!("eventcore.attempt", operation, attempt = number);
            let attempt = async {
                let mut conn = self.acquire(operation).await?;
                let (result, ends_fine) = match &self.begin {
                    None => (work(&mut conn).await, true),
                    Some(begin) => {
                        self.in_transaction(operation, begin, &mut conn, &mut work)
                            .await
                    }
                };
                conn.reusable = ends_fine
                    && match &result {
                        Ok(_) => true,
                        Err(e) => e.store().is_none_or(leaves_session_usable),
                    };
                result
            };
            // A server that went silent answers nothing, not even the
            // server-side `statement_timeout`: only the client's clock ends it.
            let (result, silent) =
                match tokio::time::timeout(self.deadline, attempt.instrument(span)).await {
                    Ok(result) => (result, false),
                    Err(_) => {
                        let timeout = Error::Timeout {
                            operation,
                            elapsed: self.deadline,
                        };
                        (Err(E::from(timeout)), true)
                    }
                };
            let e = match result {
                Ok(value) => break Ok(value),
                Err(e) => e,
            };
            let stale = e.store().is_some_and(is_stale_connection);
            let written = kind == Call::Write && (stale || silent);
            if stale && stale_left > 0 {
                stale_left -= 1;
                // Its parked siblings are most likely dead too: let sqlx
                // test them rather than failing on each in turn.
                self.release_parked();
                tracing::debug!(operation, "stale pooled connection; retrying");
                instrument::stale_retry(operation);
                in_doubt |= written;
                continue;
            }
            let settled = e.store().is_none_or(|e| {
                matches!(
                    e,
                    Error::Conflict(_)
                        | Error::DuplicateEventId { .. }
                        | Error::InvalidAppend { .. }
                )
            });
            break Err(if written || (in_doubt && !settled) {
                match e.into_store() {
                    Ok(e) => E::from(outcome_unknown(operation, e)),
                    Err(other) => other,
                }
            } else {
                e
            });
        };
        let failed = result
            .as_ref()
            .err()
            .map(|e| e.store().is_some_and(Error::is_transient));
        instrument::call_finished(operation, started.elapsed(), failed);
        result
    }

    /// Bounds `work`, which takes its connections otherwise (a health
    /// check's probes, a [`detached`](Self::detached) connection), by the
    /// same client deadline and metrics as [`call`](Self::call).
    pub(crate) async fn bounded<T, E: From<Error>>(
        &self,
        operation: &'static str,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let span = tracing::debug_span!("eventcore.call", operation);
        let result = tokio::time::timeout(self.deadline, work.instrument(span)).await;
        // The work's own error type says nothing of transience; a missed
        // deadline is transient.
        let failed = match &result {
            Ok(Ok(_)) => None,
            Ok(Err(_)) => Some(false),
            Err(_) => Some(true),
        };
        instrument::call_finished(operation, started.elapsed(), failed);
        result.unwrap_or_else(|_| {
            Err(Error::Timeout {
                operation,
                elapsed: self.deadline,
            }
            .into())
        })
    }

    /// A transaction on a connection of the sqlx pool, for work that is not
    /// bounded by the store (the application's projection code,
    /// migrations). The connection goes back to sqlx when it ends, which
    /// rolls back what was not committed. Behind a transaction pooler it
    /// carries `query_timeout` itself, since no session does.
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let started = Instant::now();
        let tx = match &self.begin {
            None => self.sqlx.begin().await,
            Some(begin) => {
                self.sqlx
                    .begin_with(sqlx::AssertSqlSafe(begin.clone()))
                    .await
            }
        };
        self.record_acquire(started, tx.is_ok());
        tx
    }

    /// A connection of the sqlx pool for long work the store does not bound
    /// as a whole (an operator's `verify`). It goes back to sqlx when
    /// dropped, which tests it before handing it out again.
    pub(crate) async fn detached(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let started = Instant::now();
        let conn = self.sqlx.acquire().await;
        self.record_acquire(started, conn.is_ok());
        conn
    }

    /// Takes a connection, parked or from sqlx, recording wait time and
    /// timeouts. A failure here is a failed connect or an exhausted pool,
    /// never a stale connection: it is reported as [`Error::Unavailable`]
    /// whose source is a [`ConnectError`], and nothing was sent.
    async fn acquire(&self, operation: &'static str) -> Result<Conn<'_>, Error> {
        let started = Instant::now();
        if let Some(mut conn) = self.take_parked()
            && (!self.test_before_acquire || Connection::ping(&mut *conn).await.is_ok())
        {
            self.record_acquire(started, true);
            return Ok(conn);
        }
        let result = self.sqlx.acquire().await;
        self.record_acquire(started, result.is_ok());
        match result {
            Ok(conn) => {
                self.start_reaper();
                Ok(Conn {
                    conn: Some(conn),
                    taken_at: Instant::now(),
                    reusable: false,
                    parked: &self.parked,
                })
            }
            Err(source) => Err(Error::Unavailable {
                operation,
                source: Box::new(ConnectError(source)),
            }),
        }
    }

    fn record_acquire(&self, started: Instant, ok: bool) {
        let waited = started.elapsed();
        let s = &self.stats;
        if ok {
            s.acquisitions.fetch_add(1, Ordering::Relaxed);
            s.acquire_nanos
                .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
        } else {
            s.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        s.peak.fetch_max(self.sqlx.size(), Ordering::Relaxed);
        instrument::acquired(waited, ok);
    }

    fn take_parked(&self) -> Option<Conn<'_>> {
        let idle = self.parked.lock().pop()?;
        Some(Conn {
            conn: Some(idle.conn),
            taken_at: idle.taken_at,
            reusable: false,
            parked: &self.parked,
        })
    }

    /// Returns every parked connection to the sqlx pool.
    pub(crate) fn release_parked(&self) {
        drop(std::mem::take(&mut *self.parked.lock()));
    }

    fn start_reaper(&self) {
        let mut reaper = self.parked.reaper.lock().unwrap_or_else(|e| e.into_inner());
        if reaper.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let parked = Arc::downgrade(&self.parked);
        *reaper = Some(runtime.spawn(async move {
            let mut ticker = tokio::time::interval(IDLE_RETURN / 2);
            loop {
                ticker.tick().await;
                let Some(parked) = parked.upgrade() else {
                    return;
                };
                parked.reap();
            }
        }));
    }

    /// The pool now. Cheap: reads counters, no I/O.
    pub(crate) fn metrics(&self) -> PoolMetrics {
        let s = &self.stats;
        let current = self.sqlx.size();
        // Connections parked between calls are idle too.
        let idle = self
            .sqlx
            .num_idle()
            .saturating_add(self.parked.lock().len()) as u32;
        let max = self.max_connections.max(1);
        let acquisitions = s.acquisitions.load(Ordering::Relaxed);
        let nanos = s.acquire_nanos.load(Ordering::Relaxed);
        PoolMetrics {
            current_connections: current,
            idle_connections: idle,
            max_connections: max,
            utilization_percent: f64::from(current.saturating_sub(idle)) * 100.0 / f64::from(max),
            connection_timeouts: s.timeouts.load(Ordering::Relaxed),
            avg_acquisition_time: Duration::from_nanos(
                nanos.checked_div(acquisitions).unwrap_or(0),
            ),
            peak_connections: s.peak.load(Ordering::Relaxed).max(current),
            total_acquisitions: acquisitions,
        }
    }

    /// For a health check: a pooled connection if the pool has one within
    /// half a second (or `connect_timeout`, if shorter); else a direct one,
    /// which tells an exhausted pool from an unreachable server. Parked
    /// connections are handed back first: they are not in use.
    pub(crate) async fn probe(&self) -> Probe {
        self.release_parked();
        let wait = self.connect_timeout.min(PROBE_WAIT);
        match tokio::time::timeout(wait, self.sqlx.acquire()).await {
            Ok(Ok(conn)) => return Probe::Pooled(conn),
            // Refused connects are retried by sqlx until its timeout; other
            // errors (authentication, say) come back at once and say it all.
            Ok(Err(e)) if !matches!(e, sqlx::Error::PoolTimedOut) => {
                return Probe::Unreachable(Cause::of(&e));
            }
            _ => {}
        }
        let pool_busy = self.sqlx.size() >= self.sqlx.options().get_max_connections()
            && self.sqlx.num_idle() == 0;
        match self.direct().await {
            Ok(conn) => Probe::Direct {
                conn,
                pool_busy,
                waited: wait,
            },
            Err(cause) => Probe::Unreachable(cause),
        }
    }

    /// One connection outside the pool, with the pool's connect options,
    /// within `connect_timeout`.
    pub(crate) async fn direct(&self) -> Result<PgConnection, Cause> {
        let options = self.sqlx.connect_options();
        let timeout = self.connect_timeout;
        match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(Cause::of(&e)),
            Err(_) => Err(Cause::no_answer(timeout)),
        }
    }

    /// The pool's connect options (they hold the password: never print
    /// them), for connections of their own (projection leases).
    pub(crate) fn connect_options(&self) -> Arc<PgConnectOptions> {
        self.sqlx.connect_options()
    }
}

/// What asking for a connection for a health check found.
pub(crate) enum Probe {
    Pooled(PoolConnection<Postgres>),
    /// The pool gave none within `waited`, but the database took a direct
    /// connection; `pool_busy`: every pool connection was in use.
    Direct {
        conn: PgConnection,
        pool_busy: bool,
        waited: Duration,
    },
    Unreachable(Cause),
}

impl Parked {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn park(&self, conn: PoolConnection<Postgres>, taken_at: Instant) {
        if taken_at.elapsed() < MAX_PARKED {
            self.lock().push(Idle {
                conn,
                idle_since: Instant::now(),
                taken_at,
            });
        }
    }

    /// Hands stale parked connections back to the sqlx pool.
    fn reap(&self) {
        let stale: Vec<Idle> = {
            let mut idle = self.lock();
            let (keep, stale) = std::mem::take(&mut *idle).into_iter().partition(|p| {
                p.idle_since.elapsed() < IDLE_RETURN && p.taken_at.elapsed() < MAX_PARKED
            });
            *idle = keep;
            stale
        };
        drop(stale);
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        if let Some(task) = self
            .reaper
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl Deref for Conn<'_> {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.conn.as_deref().expect("present until drop")
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_deref_mut().expect("present until drop")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.reusable {
            self.parked.park(conn, self.taken_at);
        } else {
            // Failed, or abandoned mid-statement (a client deadline): sqlx
            // would ping it before pooling it again, and a ping to a server
            // that went silent never returns, holding the pool slot.
            conn.close_on_drop();
        }
    }
}

/// Whether the session a call's work ended with `e` on is still fit for
/// the next call: the server answered (a conflict, a constraint, a
/// serialization abort, a bad row), as opposed to a lost connection, a
/// timeout or a protocol failure, after which its state is unknown.
fn leaves_session_usable(e: &Error) -> bool {
    match e {
        Error::Unavailable { .. } | Error::Timeout { .. } | Error::OutcomeUnknown { .. } => false,
        Error::Backend { source, .. } | Error::Aborted { source, .. } => source
            .downcast_ref::<sqlx::Error>()
            .is_none_or(|e| matches!(e, sqlx::Error::Database(_)) && !connection_lost(e)),
        _ => true,
    }
}

/// Whether `e` is an established connection found dead (terminated by the
/// server or cut), as opposed to a failed connect ([`ConnectError`]) or the
/// server refusing work right now.
fn is_stale_connection(e: &Error) -> bool {
    let Error::Unavailable { source, .. } = e else {
        return false;
    };
    source
        .downcast_ref::<sqlx::Error>()
        .is_some_and(connection_lost)
}

/// A write whose outcome `e` hid.
fn outcome_unknown(operation: &'static str, e: Error) -> Error {
    match e {
        Error::OutcomeUnknown { .. } => e,
        other => Error::OutcomeUnknown {
            operation,
            source: Box::new(other),
        },
    }
}

/// Waits for the pool's first connection like `PgPoolOptions::connect_with`,
/// but reports a database that refuses or does not answer at once, with
/// the real cause (`connection refused`), instead of "pool timed out" after
/// the whole `connect_timeout`.
async fn first_connection(pool: &PgPool, connect_timeout: Duration) -> Result<(), PostgresError> {
    let started = Instant::now();
    match tokio::time::timeout(connect_timeout.min(PROBE_WAIT), pool.acquire()).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) if !matches!(e, sqlx::Error::PoolTimedOut) => {
            return Err(PostgresError::Connect(e));
        }
        _ => {}
    }
    let options = pool.connect_options();
    let left = connect_timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(e)) => return Err(PostgresError::Connect(e)),
        Err(_) => {
            return Err(PostgresError::Connect(sqlx::Error::Io(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {connect_timeout:?}"),
                ),
            )));
        }
    }
    // The server answers: the pool's own attempt will succeed or say why.
    pool.acquire()
        .await
        .map(drop)
        .map_err(PostgresError::Connect)
}
