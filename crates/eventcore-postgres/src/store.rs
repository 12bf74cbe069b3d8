//! The PostgreSQL [`EventStore`].

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Instant};

use chrono::{DateTime, Utc};
use eventcore::{
    AppendOutcome, AppendRequest, Error, EventId, EventMetadata, EventStore, ExpectedVersion,
    GlobalPosition, StoredEvent, StreamId, StreamVersion, VersionConflict,
};
use sqlx::{
    Connection, PgConnection, PgPool, Postgres, Row,
    postgres::{PgArguments, PgPoolOptions, PgRow},
    query::Query,
    types::Json,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    PostgresConfig, PostgresError,
    conn_cache::{Conn, ConnCache},
    error::{CONFLICT_SQLSTATE, connection_lost, constraint, db_error_parts, map_sqlx, sqlstate},
    instrument,
    jsonb::{JsonbColumn, JsonbParam, MetadataColumn, TimestampColumn},
    metrics::PoolStats,
    notify::Notifier,
    recent::RecentAppends,
    sql::{Statements, sql},
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
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) config: PostgresConfig,
    pub(crate) sql: Statements,
    pub(crate) stats: PoolStats,
    pub(crate) notifier: Notifier,
    pub(crate) conns: Arc<ConnCache>,
    pub(crate) recent: RecentAppends,
}

/// How an [`ExpectedVersion`] travels to the append statements and the
/// `append_to_streams` function (`$2` / `p_expected`): an exact version as
/// itself, the others as negative codes no version can take. The one place
/// the encoding is written on this side; the SQL reads it back in sql.rs and
/// migrations/0003_lean_write_path.sql.
mod expectation {
    pub(crate) const ANY: i64 = -1;
    pub(crate) const NO_STREAM: i64 = -2;
    pub(crate) const STREAM_EXISTS: i64 = -3;
}

/// The code of `expected` for `stream`; a version beyond `i64::MAX` (which
/// would collide with the codes above) is refused.
fn expectation_code(stream: &StreamId, expected: ExpectedVersion) -> Result<i64, Error> {
    Ok(match expected {
        ExpectedVersion::Any => expectation::ANY,
        ExpectedVersion::NoStream => expectation::NO_STREAM,
        ExpectedVersion::StreamExists => expectation::STREAM_EXISTS,
        ExpectedVersion::Exact(v) => i64::try_from(v.get()).map_err(|_| Error::InvalidAppend {
            reason: format!(
                "stream '{stream}' is expected at version {v}, beyond the largest a stream can reach ({})",
                i64::MAX
            ),
        })?,
    })
}

/// What one send of an append found.
enum Attempt {
    Written(AppendOutcome),
    /// Nothing was written: stream `index` of the request was at `actual`.
    Conflict {
        index: usize,
        actual: u64,
        id_seen: bool,
    },
}

/// The append's parameters as column arrays, built once per request and
/// reused by retries.
struct AppendParams<'a> {
    streams: Vec<&'a str>,
    expected: Vec<i64>,
    event_ids: Vec<Uuid>,
    event_types: Vec<&'a str>,
    schema_versions: Vec<i32>,
    data: Vec<JsonbParam<'a>>,
    metadata: Vec<Json<&'a EventMetadata>>,
}

impl<'a> AppendParams<'a> {
    /// Binds the per-event arrays, in the order both multi-event statements
    /// take them: ids, types, schema versions, data, metadata.
    fn bind_events<'q>(
        &'q self,
        query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        query
            .bind(&self.event_ids)
            .bind(&self.event_types)
            .bind(&self.schema_versions)
            .bind(&self.data)
            .bind(&self.metadata)
    }

    fn new(request: &'a AppendRequest) -> Result<Self, Error> {
        let n = request.event_count();
        let mut p = AppendParams {
            streams: Vec::with_capacity(request.streams().len()),
            expected: Vec::with_capacity(request.streams().len()),
            event_ids: Vec::with_capacity(n),
            event_types: Vec::with_capacity(n),
            schema_versions: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
        };
        for s in request.streams() {
            p.streams.push(s.stream_id.as_str());
            p.expected.push(expectation_code(&s.stream_id, s.expected)?);
            for e in &s.events {
                p.event_ids.push(e.event_id.as_uuid());
                p.event_types.push(&e.event_type);
                p.schema_versions.push(e.schema_version as i32);
                p.data.push(JsonbParam(&e.data));
                p.metadata.push(Json(&e.metadata));
            }
        }
        Ok(p)
    }
}

impl PostgresEventStore {
    /// Connects a pool per `config` (validated first). Call
    /// [`initialize`](Self::initialize) before first use of a new database.
    pub async fn new(config: PostgresConfig) -> Result<Self, PostgresError> {
        config.validate()?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(config.min_connections)
            .acquire_timeout(config.connect_timeout)
            .idle_timeout(config.idle_timeout)
            .max_lifetime(config.max_lifetime)
            .test_before_acquire(config.test_before_acquire)
            .connect_lazy_with(config.connect_options()?);
        crate::metrics::first_connection(&pool, config.connect_timeout).await?;
        Ok(Self::assemble(pool, config))
    }

    /// Wraps an existing pool. The pool's own settings apply; of `config`
    /// only the schema, size limit and retry policy are used, and
    /// `query_timeout` is enforced only if the pool's connections set
    /// `statement_timeout` themselves.
    pub fn from_pool(pool: PgPool, config: PostgresConfig) -> Result<Self, PostgresError> {
        config.validate()?;
        Ok(Self::assemble(pool, config))
    }

    fn assemble(pool: PgPool, config: PostgresConfig) -> Self {
        // Wake-ups use notify_url, else the pool's own connect options (a
        // pool given to `from_pool` has its own), except through a
        // transaction pooler. `validate` checked notify_url.
        let wake = match config.notify_options() {
            Ok(Some(_)) if config.notify_url.is_none() => {
                Some((*pool.connect_options()).clone())
            }
            Ok(options) => options,
            Err(_) => Some((*pool.connect_options()).clone()),
        };
        Self {
            inner: Arc::new(Inner {
                sql: Statements::new(&config.schema),
                notifier: Notifier::new(&config.schema, config.notify_interval, wake),
                conns: Arc::default(),
                recent: RecentAppends::new(config.recent_appends_bytes),
                pool,
                config,
                stats: PoolStats::default(),
            }),
        }
    }

    /// The connection pool, for queries of your own (read models in the
    /// same database, say).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The configuration in force.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// A transaction on a connection of the pool, for statements the store
    /// runs outside [`call`](Self::call). Behind a transaction pooler it
    /// carries `query_timeout` itself (`SET LOCAL`), since no session does.
    pub(crate) async fn transaction(
        &self,
    ) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = self.inner.pool.begin().await?;
        if self.inner.config.transaction_pooled() {
            crate::sql::set_local_timeout(&mut tx, &self.inner.config).await?;
        }
        Ok(tx)
    }

    /// Takes a connection, recording wait time and timeouts for
    /// [`get_pool_metrics`](Self::get_pool_metrics). A failure here is a
    /// failed connect or an exhausted pool, never a stale connection: it is
    /// reported as [`Error::Unavailable`] whose source is a [`ConnectError`],
    /// and nothing was sent.
    pub(crate) async fn acquire(&self, operation: &'static str) -> Result<Conn, Error> {
        let started = Instant::now();
        if let Some(mut conn) = self.inner.conns.take()
            && (!self.inner.config.test_before_acquire
                || Connection::ping(&mut *conn).await.is_ok())
        {
            self.inner
                .stats
                .record_acquire(started.elapsed(), true, self.inner.pool.size());
            instrument::acquired(started.elapsed(), true);
            return Ok(conn);
        }
        let result = self.inner.pool.acquire().await;
        self.inner
            .stats
            .record_acquire(started.elapsed(), result.is_ok(), self.inner.pool.size());
        instrument::acquired(started.elapsed(), result.is_ok());
        result
            .map(|c| self.inner.conns.wrap(c))
            .map_err(|source| Error::Unavailable {
                operation,
                source: Box::new(ConnectError(source)),
            })
    }

    pub(crate) fn map_err(&self, operation: &'static str, e: sqlx::Error) -> Error {
        map_sqlx(operation, self.inner.config.query_timeout, e)
    }

    /// The longest one attempt of a store call may take on the client's
    /// clock: a connection within `connect_timeout`, the statement within
    /// `query_timeout` (which the server enforces, unless it went silent),
    /// and a margin for the round trips around them.
    pub(crate) fn call_deadline(&self) -> std::time::Duration {
        let c = &self.inner.config;
        c.connect_timeout
            .saturating_add(c.query_timeout)
            .saturating_add(CLIENT_DEADLINE_MARGIN)
    }

    /// Bounds `work`, which uses the pool directly (administrative calls,
    /// health, projection bookkeeping), by the same client deadline as
    /// [`call`](Self::call), without its retry of stale connections. A
    /// write cut off by it may have committed ([`Error::OutcomeUnknown`]).
    pub(crate) async fn bounded<T, E: From<Error>>(
        &self,
        operation: &'static str,
        kind: Call,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let deadline = self.call_deadline();
        let started = Instant::now();
        let span = tracing::debug_span!("eventcore.call", operation);
        let result = tokio::time::timeout(deadline, work.instrument(span)).await;
        // The work's own error type says nothing of transience; a missed
        // deadline is transient.
        let failed = match &result {
            Ok(Ok(_)) => None,
            Ok(Err(_)) => Some(false),
            Err(_) => Some(true),
        };
        instrument::call_finished(operation, started.elapsed(), failed);
        match result {
            Ok(result) => result,
            Err(_) => {
                let timeout = Error::Timeout {
                    operation,
                    elapsed: deadline,
                };
                Err(match kind {
                    Call::Read => timeout,
                    Call::Write => outcome_unknown(operation, timeout),
                }
                .into())
            }
        }
    }

    /// One store call. `attempt` takes a connection and runs its
    /// statements; it is bounded by [`call_deadline`](Self::call_deadline)
    /// and repeated only when it ran into a pooled connection that had died
    /// while parked (a server restart or a terminated backend), on a fresh
    /// one, at most once per pooled connection. Nothing else is retried here:
    /// transient faults go to the caller, whose [`RetryPolicy`] owns backoff
    /// and the total deadline.
    ///
    /// For a write (`Call::Write`), a lost connection or the client
    /// deadline leaves the outcome unknown: that is
    /// [`Error::OutcomeUnknown`], and after such a failure only a definite
    /// answer of a re-send (its outcome, a conflict, a duplicate id) is
    /// passed on as it is.
    ///
    /// [`RetryPolicy`]: eventcore::RetryPolicy
    pub(crate) async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        kind: Call,
        attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let started = Instant::now();
        let result = self.attempts(operation, kind, attempt).await;
        let failed = result.as_ref().err().map(Error::is_transient);
        instrument::call_finished(operation, started.elapsed(), failed);
        result
    }

    /// [`call`](Self::call)'s attempts, each in a span with its number.
    async fn attempts<T, F, Fut>(
        &self,
        operation: &'static str,
        kind: Call,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let deadline = self.call_deadline();
        let mut stale_left = self.inner.config.max_connections;
        let mut in_doubt = None;
        let mut number = 0_u32;
        loop {
            number += 1;
            let span = tracing::debug_span!("eventcore.attempt", operation, attempt = number);
            // A server that went silent answers nothing, not even the
            // server-side `statement_timeout`: only the client's clock ends it.
            let (result, silent) =
                match tokio::time::timeout(deadline, attempt().instrument(span)).await {
                    Ok(result) => (result, false),
                    Err(_) => {
                        let timeout = Error::Timeout {
                            operation,
                            elapsed: deadline,
                        };
                        (Err(timeout), true)
                    }
                };
            let e = match result {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            let stale = is_stale_connection(&e);
            let written = kind == Call::Write && (stale || silent);
            if stale && stale_left > 0 {
                stale_left -= 1;
                // Its parked siblings are most likely dead too: let sqlx
                // test them rather than failing on each in turn.
                self.inner.conns.clear();
                tracing::debug!(operation, error = %e, "stale pooled connection; retrying");
                instrument::stale_retry(operation);
                if written {
                    in_doubt = Some(e);
                }
                continue;
            }
            let settled = matches!(
                e,
                Error::Conflict(_) | Error::DuplicateEventId { .. } | Error::InvalidAppend { .. }
            );
            return Err(match (written, in_doubt) {
                (true, _) => outcome_unknown(operation, e),
                (false, Some(_)) if !settled => outcome_unknown(operation, e),
                _ => e,
            });
        }
    }

    async fn append_once(
        &self,
        request: &AppendRequest,
        p: &AppendParams<'_>,
    ) -> Result<AppendOutcome, Error> {
        let mut conn = self.acquire("append").await?;
        let attempt = if request.streams().len() == 1 && !p.event_ids.is_empty() {
            self.append_to_stream(&mut conn, request, p).await
        } else {
            self.append_to_streams(&mut conn, request, p).await
        };
        conn.finished(&attempt);
        match attempt {
            Ok(Attempt::Written(outcome)) => Ok(outcome),
            Ok(Attempt::Conflict {
                index,
                actual,
                id_seen,
            }) => {
                // The events may already be stored by an earlier send whose
                // acknowledgement was lost: then this is a replay, not a
                // conflict.
                if id_seen && let Some(outcome) = self.replay(&mut conn, request, p).await? {
                    return Ok(outcome);
                }
                let s = &request.streams()[index];
                Err(VersionConflict {
                    stream_id: s.stream_id.clone(),
                    expected: s.expected,
                    actual: StreamVersion::new(actual),
                }
                .into())
            }
            Err(e) => match db_error_parts(&e) {
                // Another append stored one of these ids first: either this
                // is a re-send, or a genuine clash.
                Some((code, Some(c)))
                    if code == sqlstate::UNIQUE_VIOLATION
                        && c == constraint::EVENTS_EVENT_ID_KEY =>
                {
                    match self.replay(&mut conn, request, p).await? {
                        Some(outcome) => Ok(outcome),
                        None => Err(self.map_err("append", e)),
                    }
                }
                // Cannot happen while every writer locks the stream row; if
                // a foreign writer raced us, retrying is right.
                Some((code, Some(c)))
                    if code == sqlstate::UNIQUE_VIOLATION
                        && c == constraint::EVENTS_STREAM_VERSION_KEY =>
                {
                    Err(Error::Aborted {
                        operation: "append",
                        source: Box::new(e),
                    })
                }
                _ => Err(self.map_err("append", e)),
            },
        }
    }

    /// The common case, events for one stream: one statement, which is its
    /// own transaction.
    async fn append_to_stream(
        &self,
        conn: &mut PgConnection,
        request: &AppendRequest,
        p: &AppendParams<'_>,
    ) -> Result<Attempt, sqlx::Error> {
        let stream = &request.streams()[0];
        let n = p.event_ids.len() as i64;
        match self.write_stream(conn, request, p).await? {
            Some((version, first)) => Ok(Attempt::Written(AppendOutcome {
                stream_versions: BTreeMap::from([(
                    stream.stream_id.clone(),
                    StreamVersion::new(version as u64),
                )]),
                positions: Some((
                    GlobalPosition::new(first as u64),
                    GlobalPosition::new((first + n - 1) as u64),
                )),
                replayed: false,
            })),
            None => self.single_stream_conflict(conn, p).await,
        }
    }

    /// Several streams, or check-only ones: one call of the
    /// `append_to_streams` function, which runs the one-stream statement for
    /// each stream (and locks each check-only stream's row) in stream-id
    /// order, so every writer takes row locks in one global order and none
    /// deadlocks. A failed expectation rolls everything back (SQLSTATE
    /// EC002); the actual versions are read afterwards.
    async fn append_to_streams(
        &self,
        conn: &mut PgConnection,
        request: &AppendRequest,
        p: &AppendParams<'_>,
    ) -> Result<Attempt, sqlx::Error> {
        let streams = request.streams();
        // Positions follow the request's order whatever the lock order.
        let mut offsets = Vec::with_capacity(streams.len());
        let mut total = 0_i32;
        for s in streams {
            offsets.push(total);
            total += s.events.len() as i32;
        }
        let mut order: Vec<usize> = (0..streams.len()).collect();
        order.sort_unstable_by_key(|&i| streams[i].stream_id.as_str());
        // The per-stream columns, in lock order.
        let mut sorted_streams = Vec::with_capacity(order.len());
        let mut sorted_expected = Vec::with_capacity(order.len());
        let mut sorted_counts = Vec::with_capacity(order.len());
        let mut sorted_offsets = Vec::with_capacity(order.len());
        for &i in &order {
            sorted_streams.push(p.streams[i]);
            sorted_expected.push(p.expected[i]);
            sorted_counts.push(streams[i].events.len() as i32);
            sorted_offsets.push(offsets[i]);
        }
        let query = sqlx::query(sql(&self.inner.sql.append_to_streams))
            .bind(&sorted_streams)
            .bind(&sorted_expected)
            .bind(&sorted_counts)
            .bind(&sorted_offsets);
        let result = p.bind_events(query).fetch_one(&mut *conn).await;
        let row = match result {
            Ok(row) => row,
            Err(e) if db_error_parts(&e).is_some_and(|(code, _)| code == CONFLICT_SQLSTATE) => {
                return self.conflict_among(conn, request, p, e).await;
            }
            Err(e) => return Err(e),
        };
        let base: Option<i64> = row.try_get(0)?;
        let versions: Vec<i64> = row.try_get(1)?;
        let mut outcome = AppendOutcome {
            stream_versions: BTreeMap::new(),
            positions: base.map(|base| {
                (
                    GlobalPosition::new(base as u64 + 1),
                    GlobalPosition::new(base as u64 + total as u64),
                )
            }),
            replayed: false,
        };
        for (&i, v) in order.iter().zip(versions) {
            if !streams[i].events.is_empty() {
                outcome
                    .stream_versions
                    .insert(streams[i].stream_id.clone(), StreamVersion::new(v as u64));
            }
        }
        Ok(Attempt::Written(outcome))
    }

    /// After `append_to_streams` found a failed expectation (everything
    /// rolled back): the first stream, in request order, whose expectation
    /// the current versions break. Should none (a stream expected to exist
    /// was created meanwhile), the original error goes up as a transient
    /// abort and the append is retried.
    async fn conflict_among(
        &self,
        conn: &mut PgConnection,
        request: &AppendRequest,
        p: &AppendParams<'_>,
        raised: sqlx::Error,
    ) -> Result<Attempt, sqlx::Error> {
        let row = sqlx::query(sql(&self.inner.sql.select_conflict_states))
            .bind(&p.streams)
            .bind(&p.event_ids)
            .fetch_one(&mut *conn)
            .await?;
        let versions: Vec<i64> = row.try_get(0)?;
        let id_seen: bool = row.try_get(1)?;
        let broken = request
            .streams()
            .iter()
            .zip(&versions)
            .position(|(s, &v)| !s.expected.is_met_by(StreamVersion::new(v as u64)));
        match broken {
            Some(index) => Ok(Attempt::Conflict {
                index,
                actual: versions[index] as u64,
                id_seen,
            }),
            None => Err(raised),
        }
    }

    /// Writes the events of the request's only stream with its one
    /// statement. Returns the stream's new version and the first event's
    /// position, or `None` if its expectation failed and nothing was written.
    async fn write_stream(
        &self,
        conn: &mut PgConnection,
        request: &AppendRequest,
        p: &AppendParams<'_>,
    ) -> Result<Option<(i64, i64)>, sqlx::Error> {
        let stream = &request.streams()[0];
        let n = stream.events.len();
        let existing = match stream.expected {
            ExpectedVersion::Exact(v) => v > StreamVersion::NONE,
            ExpectedVersion::StreamExists => true,
            ExpectedVersion::Any | ExpectedVersion::NoStream => false,
        };
        let s = &self.inner.sql;
        let (one, many) = if existing {
            (
                &s.append_one_to_existing_stream,
                &s.append_to_existing_stream,
            )
        } else {
            (&s.append_one_to_new_stream, &s.append_to_new_stream)
        };
        if n == 1 {
            let row = sqlx::query(sql(one))
                .bind(p.streams[0])
                .bind(p.expected[0])
                .bind(1_i64)
                .bind(p.event_ids[0])
                .bind(p.event_types[0])
                .bind(p.schema_versions[0])
                .bind(p.data[0])
                .bind(p.metadata[0])
                .fetch_optional(&mut *conn)
                .await?;
            return match row {
                Some(row) => Ok(Some((row.try_get(1)?, row.try_get(0)?))),
                None => Ok(None),
            };
        }
        let query = sqlx::query(sql(many))
            .bind(p.streams[0])
            .bind(p.expected[0])
            .bind(n as i64);
        let row = p.bind_events(query).fetch_one(&mut *conn).await?;
        let version: Option<i64> = row.try_get(0)?;
        let first: Option<i64> = row.try_get(1)?;
        Ok(version.zip(first))
    }

    /// After the single stream failed its expectation (nothing written):
    /// its actual version, and whether any of the append's ids is already
    /// stored (a re-send).
    async fn single_stream_conflict(
        &self,
        conn: &mut PgConnection,
        p: &AppendParams<'_>,
    ) -> Result<Attempt, sqlx::Error> {
        let row = sqlx::query(sql(&self.inner.sql.select_conflict_state))
            .bind(p.streams[0])
            .bind(&p.event_ids)
            .fetch_one(&mut *conn)
            .await?;
        let actual: i64 = row.try_get(0)?;
        Ok(Attempt::Conflict {
            index: 0,
            actual: actual as u64,
            id_seen: row.try_get(1)?,
        })
    }

    /// The original outcome if every event of `request` is already stored on
    /// its stream; `None` if none is; [`Error::DuplicateEventId`] otherwise.
    async fn replay(
        &self,
        conn: &mut PgConnection,
        request: &AppendRequest,
        p: &AppendParams<'_>,
    ) -> Result<Option<AppendOutcome>, Error> {
        let rows = sqlx::query(sql(&self.inner.sql.select_events_by_id))
            .bind(&p.event_ids)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.map_err("append", e))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut stored = BTreeMap::new();
        for row in &rows {
            let id: Uuid = row.try_get(0).map_err(|e| self.map_err("append", e))?;
            let stream: String = row.try_get(1).map_err(|e| self.map_err("append", e))?;
            let version: i64 = row.try_get(2).map_err(|e| self.map_err("append", e))?;
            let position: i64 = row.try_get(3).map_err(|e| self.map_err("append", e))?;
            stored.insert(id, (stream, version as u64, position as u64));
        }
        let mut outcome = AppendOutcome {
            stream_versions: BTreeMap::new(),
            positions: None,
            replayed: true,
        };
        let (mut lo, mut hi) = (u64::MAX, 0);
        for s in request.streams() {
            for e in &s.events {
                match stored.get(&e.event_id.as_uuid()) {
                    Some((stream, version, position)) if stream == s.stream_id.as_str() => {
                        let v = outcome
                            .stream_versions
                            .entry(s.stream_id.clone())
                            .or_default();
                        *v = (*v).max(StreamVersion::new(*version));
                        lo = lo.min(*position);
                        hi = hi.max(*position);
                    }
                    _ => {
                        // Report an id that *is* stored: that is the clash.
                        let event_id = request
                            .event_ids()
                            .find(|id| stored.contains_key(&id.as_uuid()))
                            .unwrap_or(e.event_id);
                        return Err(Error::DuplicateEventId { event_id });
                    }
                }
            }
        }
        outcome.positions = Some((GlobalPosition::new(lo), GlobalPosition::new(hi)));
        Ok(Some(outcome))
    }

    /// `read_all` through the recent appends: positions and record times
    /// from the server (the same horizon, order and limit as a full read),
    /// bodies from memory, and whatever is not held fetched whole, on the
    /// same connection.
    async fn read_all_recent(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        const OP: &str = "read_all";
        let mut conn = self.acquire(OP).await?;
        let positions = sqlx::query(sql(&self.inner.sql.read_all_positions))
            .bind(to_i64(after.get()))
            .bind(to_i64(limit as u64));
        let found = self
            .fetch_rows(&mut conn, OP, positions)
            .await?
            .iter()
            .map(|row| {
                let TimestampColumn(at) = row.try_get_unchecked(1)?;
                Ok((row.try_get_unchecked(0)?, at))
            })
            .collect::<Result<Vec<(i64, DateTime<Utc>)>, sqlx::Error>>()
            .map_err(|e| self.map_err(OP, e))?;
        let lookup = self.inner.recent.lookup(&found);
        if lookup.missing.is_empty() {
            return Ok(lookup.events.into_iter().flatten().collect());
        }
        let missing = sqlx::query(sql(&self.inner.sql.read_events_at)).bind(&lookup.missing);
        let fetched = self.decode_rows(OP, &self.fetch_rows(&mut conn, OP, missing).await?)?;
        let (first, count) = (lookup.missing[0], lookup.missing.len());
        lookup.fill(fetched).ok_or_else(|| Error::CorruptRow {
            what: format!("{count} events from position {first}"),
            position: u64::try_from(first).ok().map(GlobalPosition::new),
            reason: "events below the read horizon were not found on a second read".into(),
        })
    }

    async fn fetch_events(
        &self,
        operation: &'static str,
        query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<StoredEvent>, Error> {
        let mut conn = self.acquire(operation).await?;
        let rows = self.fetch_rows(&mut conn, operation, query).await?;
        self.decode_rows(operation, &rows)
    }

    /// Every row of `query` on `conn`, noting whether the connection came
    /// out of it fit to park.
    async fn fetch_rows(
        &self,
        conn: &mut Conn,
        operation: &'static str,
        query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<PgRow>, Error> {
        let rows = query.fetch_all(&mut **conn).await;
        conn.finished(&rows);
        rows.map_err(|e| self.map_err(operation, e))
    }

    fn decode_rows(
        &self,
        operation: &'static str,
        rows: &[PgRow],
    ) -> Result<Vec<StoredEvent>, Error> {
        let mut last_stream = None;
        rows.iter()
            .map(|row| decode_row(row, &mut last_stream, |e| self.map_err(operation, e)))
            .collect()
    }
}

/// Turns a row of `event_columns!()` into a [`StoredEvent`]; a row whose
/// stored values break the model (bad id, metadata of the wrong shape) is
/// [`Error::CorruptRow`] naming it. `last_stream` carries the previous
/// row's stream id: rows of one stream share it instead of each allocating
/// and validating its own.
fn decode_row(
    row: &PgRow,
    last_stream: &mut Option<StreamId>,
    map: impl Fn(sqlx::Error) -> Error,
) -> Result<StoredEvent, Error> {
    // Unchecked: the columns are ours (`event_columns!()`), so sqlx's
    // per-column type check is skipped; values are still decoded and checked.
    let position: i64 = row.try_get_unchecked(0).map_err(&map)?;
    let stream_id: &str = row.try_get_unchecked(2).map_err(&map)?;
    let stream_version: i64 = row.try_get_unchecked(3).map_err(&map)?;
    let corrupt = |reason: String| Error::CorruptRow {
        what: format!("stream '{stream_id}' version {stream_version} at position {position}"),
        position: u64::try_from(position).ok().map(GlobalPosition::new),
        reason,
    };
    // Past the row's identity every failure is this row's, named by its
    // position so that a reader can record it and read on after it.
    let column = |e: sqlx::Error| match e {
        sqlx::Error::ColumnDecode { index, source } => {
            corrupt(format!("column {index} does not decode: {source}"))
        }
        other => map(other),
    };
    let event_id: Uuid = row.try_get_unchecked(1).map_err(column)?;
    let event_type: String = row.try_get_unchecked(4).map_err(column)?;
    let schema_version: i32 = row.try_get_unchecked(5).map_err(column)?;
    // The payload stays JSON text, unparsed, until someone asks for a type
    // (see `jsonb`). Metadata is parsed once, straight from the column.
    let JsonbColumn(data) = row.try_get_unchecked(6).map_err(column)?;
    let metadata: Result<MetadataColumn, _> = row.try_get_unchecked(7);
    let TimestampColumn(recorded_at) = row.try_get_unchecked(8).map_err(column)?;
    let stream = match last_stream {
        Some(s) if s.as_str() == stream_id => s.clone(),
        _ => {
            let s = StreamId::new(stream_id).map_err(|e| corrupt(e.to_string()))?;
            *last_stream = Some(s.clone());
            s
        }
    };
    Ok(StoredEvent {
        event_id: EventId::from_uuid(event_id).map_err(|e| corrupt(e.to_string()))?,
        stream_id: stream,
        stream_version: StreamVersion::new(stream_version as u64),
        position: GlobalPosition::new(position as u64),
        event_type,
        schema_version: schema_version as u32,
        data,
        metadata: match metadata {
            Ok(MetadataColumn(m)) => m,
            Err(sqlx::Error::ColumnDecode { source, .. }) => {
                return Err(corrupt(format!("metadata does not decode: {source}")));
            }
            Err(e) => return Err(map(e)),
        },
        recorded_at,
    })
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

/// A connection could not be had: the connect failed or the pool had none
/// free in time. Kept apart from errors on an established connection,
/// which may be a stale pooled connection worth replacing at once; a failed
/// connect is retried only by the caller's policy, with backoff.
#[derive(Debug, thiserror::Error)]
#[error("no connection: {0}")]
pub(crate) struct ConnectError(#[source] pub(crate) sqlx::Error);

/// Whether a store call writes, so that a lost answer means the write may
/// have committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Read,
    Write,
}

/// Added to `connect_timeout + query_timeout` for the client-side deadline
/// of one attempt, for the round trips the server's timeout does not cover.
const CLIENT_DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Positions and versions travel as BIGINT; larger values cannot be stored.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl EventStore for PostgresEventStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, Error> {
        request.validate(self.inner.config.max_event_bytes)?;
        crate::schema::ensure_writable(self).await?;
        let events = request.event_count();
        let span = tracing::debug_span!(
            "eventcore.append",
            streams = request.streams().len(),
            events,
            first_stream = request.streams().first().map(|s| s.stream_id.as_str()),
            first_position = tracing::field::Empty,
            replayed = tracing::field::Empty,
        );
        let result = async {
            if request.streams().is_empty() {
                return Ok(AppendOutcome {
                    stream_versions: BTreeMap::new(),
                    positions: None,
                    replayed: false,
                });
            }
            let outcome = {
                let params = AppendParams::new(&request)?;
                self.call("append", Call::Write, || {
                    self.append_once(&request, &params)
                })
                .await?
            };
            if outcome.positions.is_some() && !outcome.replayed {
                // Kept only while someone subscribes here; a replay's events
                // are the earlier send's, which may differ from these.
                if self.inner.notifier.has_subscribers() {
                    self.inner.recent.record(request, &outcome);
                } else {
                    self.inner.recent.clear();
                }
                self.inner.notifier.appended(&self.inner.pool);
            }
            if let Some((first, _)) = outcome.positions {
                tracing::Span::current().record("first_position", first.get());
            }
            tracing::Span::current().record("replayed", outcome.replayed);
            Ok(outcome)
        }
        .instrument(span)
        .await;
        instrument::appended(&result, events);
        result
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        let span = tracing::debug_span!(
            "eventcore.read_stream",
            stream = stream.as_str(),
            from = from.get(),
            limit
        );
        self.call("read_stream", Call::Read, || {
            let query = sqlx::query(sql(&self.inner.sql.read_stream_forward))
                .bind(stream.as_str())
                .bind(to_i64(from.get()))
                .bind(to_i64(limit as u64));
            self.fetch_events("read_stream", query)
        })
        .instrument(span)
        .await
        .inspect(|events| instrument::events_read("read_stream", events.len()))
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        let span = tracing::debug_span!("eventcore.read_all", after = after.get(), limit);
        self.call("read_all", Call::Read, || async {
            if self.inner.recent.covers(after) {
                match self.read_all_recent(after, limit).await {
                    // A bad row among the fetched ones: the full read below
                    // delivers the good rows before it.
                    Err(Error::CorruptRow { .. }) => {}
                    other => return other,
                }
            }
            let query = sqlx::query(sql(&self.inner.sql.read_all_forward))
                .bind(to_i64(after.get()))
                .bind(to_i64(limit as u64));
            let mut conn = self.acquire("read_all").await?;
            let rows = self.fetch_rows(&mut conn, "read_all", query).await?;
            // A bad row must not hold back the good ones before it: the page
            // ends just before it, and the next read, which starts with it,
            // fails with its position, so a reader can record it and pass.
            let mut events = Vec::with_capacity(rows.len());
            let mut last_stream = None;
            for row in &rows {
                match decode_row(row, &mut last_stream, |e| self.map_err("read_all", e)) {
                    Ok(event) => events.push(event),
                    Err(e) if events.is_empty() => return Err(e),
                    Err(_) => break,
                }
            }
            Ok(events)
        })
        .instrument(span)
        .await
        .inspect(|events| instrument::events_read("read_all", events.len()))
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, Error> {
        let span = tracing::debug_span!("eventcore.stream_version", stream = stream.as_str());
        self.call("stream_version", Call::Read, || async {
            let mut conn = self.acquire("stream_version").await?;
            let version = sqlx::query_scalar(sql(&self.inner.sql.select_stream_version))
                .bind(stream.as_str())
                .fetch_optional(&mut *conn)
                .await;
            conn.finished(&version);
            let version: Option<i64> = version.map_err(|e| self.map_err("stream_version", e))?;
            Ok(StreamVersion::new(version.unwrap_or(0) as u64))
        })
        .instrument(span)
        .await
    }

    async fn read_streams_to_end(
        &self,
        streams: &[(StreamId, StreamVersion)],
    ) -> Result<Vec<Vec<StoredEvent>>, Error> {
        /// One round trip covers this many events; longer histories page.
        const BATCH: usize = 5000;
        // One stream (most commands): the plain per-stream read, whose plan
        // is simpler than the multi-stream join.
        if let [(stream, from)] = streams {
            return Ok(vec![self.read_stream_to_end(stream, *from).await?]);
        }
        let ids: Vec<&str> = streams.iter().map(|(s, _)| s.as_str()).collect();
        let lowest = streams.iter().map(|(_, v)| v.get()).min().unwrap_or(1);
        let span = tracing::debug_span!(
            "eventcore.read_streams",
            streams = ids.len(),
            first_stream = ids.first().copied(),
            from = lowest
        );
        let events = self
            .call("read_streams", Call::Read, || {
                let query = sqlx::query(sql(&self.inner.sql.read_streams_forward))
                    .bind(&ids)
                    .bind(to_i64(lowest))
                    .bind(BATCH as i64);
                self.fetch_events("read_streams", query)
            })
            .instrument(span)
            .await?;
        instrument::events_read("read_streams", events.len());
        if events.len() == BATCH {
            // A long history: page through each stream instead.
            return eventcore::read_each_stream(self, streams).await;
        }
        // Rows come grouped by stream in version order; each requested slot
        // takes its stream's rows from its own first version on. A stream
        // requested once (the usual case) gets its rows moved, not copied.
        let mut out: Vec<Vec<StoredEvent>> = vec![Vec::new(); streams.len()];
        for event in events {
            let mut slots = streams
                .iter()
                .enumerate()
                .filter(|(_, (stream, from))| {
                    *stream == event.stream_id && event.stream_version >= *from
                })
                .map(|(slot, _)| slot)
                .peekable();
            while let Some(slot) = slots.next() {
                if slots.peek().is_some() {
                    out[slot].push(event.clone());
                } else {
                    out[slot].push(event);
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn head_position(&self) -> Result<GlobalPosition, Error> {
        let span = tracing::debug_span!("eventcore.head_position");
        self.call("head_position", Call::Read, || async {
            let mut conn = self.acquire("head_position").await?;
            let head = sqlx::query_scalar(sql(&self.inner.sql.select_head_position))
                .fetch_one(&mut *conn)
                .await;
            conn.finished(&head);
            let head: Option<i64> = head.map_err(|e| self.map_err("head_position", e))?;
            Ok(GlobalPosition::new(head.unwrap_or(0) as u64))
        })
        .instrument(span)
        .await
    }

    fn commit_signal(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        Some(self.inner.notifier.subscribe(&self.inner.pool))
    }

    async fn read_blocker(&self) -> Result<Option<eventcore::ReadBlocker>, Error> {
        self.oldest_open_transaction().await
    }
}
