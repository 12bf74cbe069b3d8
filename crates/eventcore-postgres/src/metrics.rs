//! Pool metrics, background pool monitoring and health checks.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use eventcore::GlobalPosition;
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row, pool::PoolConnection};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    PostgresError, PostgresEventStore, redact_secrets,
    schema::{self, SCHEMA_VERSION},
    sql,
    store::Call,
};

/// Counters updated on every connection acquisition.
#[derive(Debug, Default)]
pub(crate) struct PoolStats {
    acquisitions: AtomicU64,
    acquire_nanos: AtomicU64,
    timeouts: AtomicU64,
    peak: AtomicU32,
}

impl PoolStats {
    pub(crate) fn record_acquire(&self, waited: Duration, ok: bool, pool_size: u32) {
        if ok {
            self.acquisitions.fetch_add(1, Ordering::Relaxed);
            self.acquire_nanos
                .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
        } else {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        self.peak.fetch_max(pool_size, Ordering::Relaxed);
    }
}

/// A snapshot of the connection pool.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolMetrics {
    /// Connections open now (in use plus idle).
    pub current_connections: u32,
    /// Open connections not in use.
    pub idle_connections: u32,
    /// The pool's limit.
    pub max_connections: u32,
    /// Connections in use as a share of the limit, 0-100.
    pub utilization_percent: f64,
    /// Acquisitions that failed (pool timeout or connect error) since start.
    pub connection_timeouts: u64,
    /// Mean wait for a connection over all successful acquisitions.
    pub avg_acquisition_time: Duration,
    /// Most connections seen open at once.
    pub peak_connections: u32,
    /// Successful acquisitions since start.
    pub total_acquisitions: u64,
}

/// What [`PostgresEventStore::health_check`] found.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HealthStatus {
    /// Reachable, a connection to be had from the pool, schema current and
    /// intact, and nothing holding the read horizon back for more than
    /// [`HealthStatus::HORIZON_WARNING`]. Exactly when `problems` is empty.
    pub is_healthy: bool,
    /// Whether a round trip succeeded (on a pooled connection, or on one of
    /// the check's own when the pool had none to give).
    pub database_reachable: bool,
    /// Time of that round trip (including acquiring a connection).
    pub database_latency: Duration,
    /// Every pool connection was in use for the whole wait (the database
    /// itself may be fine: see `database_reachable`). Reported as
    /// `pool exhausted: N/N in use`.
    pub pool_exhausted: bool,
    /// Why the database could not be reached, in short: `connection
    /// refused`, `no answer within 10s (connect timed out)`,
    /// `authentication failed`, ... (`None` while reachable). `problems`
    /// has the underlying error too.
    pub unreachable_reason: Option<String>,
    /// Objects the store relies on that are missing from its schema or
    /// disabled: `table events missing`, `trigger events_append_only
    /// disabled`, ... (empty when intact or not checked).
    pub missing_objects: Vec<String>,
    /// Schema version in the database (`None`: not initialized or unreachable).
    pub schema_version: Option<i32>,
    /// Schema version this release expects.
    pub expected_schema_version: i32,
    /// `$all` readers see events below this position; newer ones wait for
    /// older transactions to finish.
    pub read_horizon: Option<GlobalPosition>,
    /// The cluster's transaction counter next to the store's newest
    /// position (`None`: not read). Unhealthy when it is behind (a logical
    /// restore that did not advance it), past the range positions can
    /// encode, or close to its end; see "Backup and restore" in
    /// `docs/operations.md`.
    pub transaction_counter: Option<crate::TransactionCounter>,
    /// Age of the oldest transaction holding a transaction id anywhere in
    /// the cluster. While it runs, `$all` readers and subscriptions cannot
    /// move past events committed after it started.
    pub oldest_transaction_age: Option<Duration>,
    /// The pool at the time of the check.
    pub pool: PoolMetrics,
    /// Every read replica ([`PostgresConfig::read_replicas`](crate::PostgresConfig::read_replicas)),
    /// its lag and state. A replica that is unreachable, no standby, not
    /// receiving WAL, or behind by more than
    /// [`PostgresConfig::max_replica_lag`](crate::PostgresConfig::max_replica_lag)
    /// makes the store unhealthy: its readers fall behind or fail.
    pub replicas: Vec<crate::ReplicaStatus>,
    /// Human-readable reasons for `is_healthy == false`.
    pub problems: Vec<String>,
}

impl HealthStatus {
    /// A transaction older than this is reported as holding readers back.
    pub const HORIZON_WARNING: Duration = Duration::from_secs(30);
}

/// Stops background pool monitoring when dropped or [`stopped`](Self::stop).
#[derive(Debug)]
pub struct PoolMonitor {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl PoolMonitor {
    /// Stops monitoring and waits for the task to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PoolMonitor {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Size of the store, for the admin CLI and dashboards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStats {
    /// Number of streams with at least one event.
    pub streams: i64,
    /// Number of events.
    pub events: i64,
    /// Highest global position written (`None`: empty store).
    pub max_position: Option<GlobalPosition>,
}

/// How the store's recent appends served `read_all`
/// ([`PostgresConfig::recent_appends_bytes`](crate::PostgresConfig::recent_appends_bytes)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentAppendStats {
    /// Events held now (none while the store has no live subscriber).
    pub held: usize,
    /// Events `read_all` took from memory since the store was created.
    pub hits: u64,
    /// Events a positions-first read had to fetch whole (appended elsewhere,
    /// or no longer held).
    pub misses: u64,
}

impl PostgresEventStore {
    /// Counters of the recent-append memory. Cheap: no I/O.
    pub fn recent_append_stats(&self) -> RecentAppendStats {
        self.inner.recent.stats()
    }

    /// Counts streams and events (a full count: slow on very large stores).
    pub async fn stats(&self) -> Result<StoreStats, PostgresError> {
        let query = sqlx::query(sql::sql(&self.inner.sql.select_stats)).fetch_one(self.pool());
        let row = self
            .bounded("stats", Call::Read, async {
                query.await.map_err(|e| self.map_err("stats", e))
            })
            .await?;
        let get = |i| {
            row.try_get::<Option<i64>, _>(i)
                .map_err(|e| self.map_err("stats", e))
        };
        Ok(StoreStats {
            streams: get(0)?.unwrap_or(0),
            events: get(1)?.unwrap_or(0),
            max_position: get(2)?.map(|p| GlobalPosition::new(p as u64)),
        })
    }

    /// Current pool metrics. Cheap: reads counters, no I/O.
    pub fn get_pool_metrics(&self) -> PoolMetrics {
        let pool = self.pool();
        let stats = &self.inner.stats;
        let current = pool.size();
        // Connections parked by the store between operations are idle too.
        let idle = pool
            .num_idle()
            .saturating_add(self.inner.conns.idle_count()) as u32;
        let max = self.inner.config.max_connections.max(1);
        let acquisitions = stats.acquisitions.load(Ordering::Relaxed);
        let nanos = stats.acquire_nanos.load(Ordering::Relaxed);
        let metrics = PoolMetrics {
            current_connections: current,
            idle_connections: idle,
            max_connections: max,
            utilization_percent: f64::from(current.saturating_sub(idle)) * 100.0 / f64::from(max),
            connection_timeouts: stats.timeouts.load(Ordering::Relaxed),
            avg_acquisition_time: Duration::from_nanos(
                nanos.checked_div(acquisitions).unwrap_or(0),
            ),
            peak_connections: stats.peak.load(Ordering::Relaxed).max(current),
            total_acquisitions: acquisitions,
        };
        crate::instrument::pool(&metrics);
        metrics
    }

    /// Logs pool metrics every `interval` as `tracing` events (target
    /// `eventcore_postgres::pool`): info normally, warn above 80 %
    /// utilization or when acquisitions time out. Runs until the returned
    /// handle is stopped or dropped. Needs a Tokio runtime.
    pub fn start_pool_monitoring(&self, interval: Duration) -> PoolMonitor {
        let (stop, mut stopped) = watch::channel(false);
        let store = self.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            let mut last_timeouts = 0;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.changed() => return,
                }
                let m = store.get_pool_metrics();
                let new_timeouts = m.connection_timeouts - last_timeouts;
                last_timeouts = m.connection_timeouts;
                if m.utilization_percent > 80.0 || new_timeouts > 0 {
                    tracing::warn!(
                        target: "eventcore_postgres::pool",
                        current = m.current_connections,
                        idle = m.idle_connections,
                        utilization_percent = m.utilization_percent,
                        new_timeouts,
                        avg_acquisition_us = m.avg_acquisition_time.as_micros() as u64,
                        "connection pool under pressure"
                    );
                } else {
                    tracing::info!(
                        target: "eventcore_postgres::pool",
                        current = m.current_connections,
                        idle = m.idle_connections,
                        utilization_percent = m.utilization_percent,
                        peak = m.peak_connections,
                        avg_acquisition_us = m.avg_acquisition_time.as_micros() as u64,
                        "connection pool"
                    );
                }
            }
        });
        PoolMonitor {
            stop,
            task: Some(task),
        }
    }

    /// Checks reachability, latency, the schema (version, and that the
    /// tables, indexes, function and append-only triggers the store relies
    /// on are there and enabled), the read horizon and the pool. Database
    /// problems are reported in the status (with `is_healthy = false`), not
    /// as errors.
    ///
    /// It tells an exhausted pool from an unreachable database: when the
    /// pool has no connection to give within half a second (or
    /// `connect_timeout`, if shorter), the check opens one connection of
    /// its own (bounded by `connect_timeout`). If that works, the database
    /// is reachable, the checks run on it, and the pool is reported
    /// (`pool exhausted: N/N in use`); if not, its error says why
    /// (`connection refused`, no answer, authentication, ...). So a closed
    /// port is reported in about half a second, a silent server within
    /// `connect_timeout` and a half.
    pub async fn health_check(&self) -> Result<HealthStatus, PostgresError> {
        // The probes bound themselves; the client deadline covers a server
        // that answers them and then goes silent.
        self.bounded("health_check", Call::Read, self.check_health())
            .await
    }

    async fn check_health(&self) -> Result<HealthStatus, PostgresError> {
        let mut problems = Vec::new();
        let started = Instant::now();
        let connect_timeout = self.inner.config.connect_timeout;
        // Connections parked by the store between operations are not in
        // use: hand them back so the check can have one.
        self.inner.conns.clear();
        let probe = probe(self.pool(), connect_timeout).await;
        let mut pool_exhausted = false;
        let mut unreachable_reason = None;
        let mut conn = match probe {
            Probe::Pooled(conn) => Some(Checked::Pooled(conn)),
            Probe::Direct { conn, pool_busy } => {
                let m = self.get_pool_metrics();
                pool_exhausted = pool_busy;
                problems.push(if pool_busy {
                    format!(
                        "pool exhausted: {}/{} in use (the database is reachable)",
                        m.max_connections, m.max_connections
                    )
                } else {
                    format!(
                        "the pool gave no connection within {:?} ({}/{} open), though the database accepts one",
                        pool_wait(connect_timeout),
                        m.current_connections,
                        m.max_connections
                    )
                });
                Some(Checked::Direct(conn))
            }
            Probe::Unreachable(cause) => {
                problems.push(format!("database unreachable: {}", cause.text()));
                unreachable_reason = Some(cause.reason);
                None
            }
        };
        let mut reachable = false;
        if let Some(c) = conn.as_mut() {
            match sqlx::query(sql::SELECT_ONE).execute(c.conn()).await {
                Ok(_) => reachable = true,
                Err(e) => {
                    // A pooled connection may have died with the server
                    // that had it; ask the server as it is now.
                    let cause = match direct(self.pool(), connect_timeout).await {
                        Ok(fresh) => {
                            *c = Checked::Direct(fresh);
                            reachable =
                                sqlx::query(sql::SELECT_ONE).execute(c.conn()).await.is_ok();
                            (!reachable).then(|| Cause::of(&e))
                        }
                        Err(cause) => Some(cause),
                    };
                    if let Some(cause) = cause {
                        problems.push(format!("database unreachable: {}", cause.text()));
                        unreachable_reason = Some(cause.reason);
                    }
                }
            }
        }
        let latency = started.elapsed();
        let mut schema_version = None;
        let mut missing_objects = Vec::new();
        let mut read_horizon = None;
        let mut oldest_transaction_age = None;
        let mut transaction_counter = None;
        if let Some(c) = conn.as_mut().filter(|_| reachable) {
            let schema = self.inner.config.schema.as_str();
            match schema::read_version(c.conn(), &self.inner.sql).await {
                Ok(v) => schema_version = v,
                Err(e) => problems.push(format!(
                    "cannot read schema version: {}",
                    redact_secrets(&e.to_string())
                )),
            }
            match schema_version {
                Some(v) if v > SCHEMA_VERSION => problems.push(format!(
                    "schema version {v} is newer than this release knows ({SCHEMA_VERSION}): \
                     writes are refused; upgrade eventcore-postgres"
                )),
                Some(v) => {
                    if v < SCHEMA_VERSION {
                        problems.push(format!(
                            "schema version is {v}, expected {SCHEMA_VERSION}: run initialize()"
                        ));
                    }
                    match schema::find_damage(c.conn(), schema, v).await {
                        Ok(missing) => {
                            if !missing.is_empty() {
                                problems.push(format!(
                                    "schema {schema} is damaged: {}; restore it from a backup",
                                    missing.join(", ")
                                ));
                            }
                            missing_objects = missing;
                        }
                        Err(e) => problems.push(format!(
                            "cannot check the schema's objects: {}",
                            redact_secrets(&e.to_string())
                        )),
                    }
                }
                None => problems.push(format!(
                    "schema {schema} is not initialized (schema version none, expected \
                     {SCHEMA_VERSION}): run initialize()"
                )),
            }
            if schema_version.is_some() {
                match crate::counter::read(c.conn(), &self.inner.sql).await {
                    Ok(counter) => {
                        problems.extend(counter.problem(schema));
                        transaction_counter = Some(counter);
                    }
                    Err(e) => problems.push(format!(
                        "cannot read the transaction counter: {}",
                        redact_secrets(&e.to_string())
                    )),
                }
            }
            match sqlx::query(sql::SELECT_HORIZON).fetch_one(c.conn()).await {
                Ok(row) => {
                    read_horizon = row
                        .try_get::<i64, _>(0)
                        .ok()
                        .map(|h| GlobalPosition::new(h as u64));
                    oldest_transaction_age = row
                        .try_get::<Option<f64>, _>(1)
                        .ok()
                        .flatten()
                        .map(|s| Duration::from_secs_f64(s.max(0.0)));
                }
                Err(e) => problems.push(format!(
                    "cannot read transaction horizon: {}",
                    redact_secrets(&e.to_string())
                )),
            }
            if let Some(age) = oldest_transaction_age.filter(|a| *a > HealthStatus::HORIZON_WARNING)
            {
                problems.push(format!(
                    "a transaction has been open for {age:?}: $all readers and subscriptions cannot pass it"
                ));
            }
        }
        if let Some(Checked::Direct(c)) = conn {
            let _ = c.close().await;
        }
        let mut replicas = Vec::new();
        if reachable {
            match self.replica_lag().await {
                Ok(found) => replicas = found,
                Err(e) => problems.push(format!(
                    "cannot read replication lag: {}",
                    redact_secrets(&e.to_string())
                )),
            }
        }
        let max_lag = self.inner.config.max_replica_lag;
        problems.extend(replicas.iter().filter_map(|r| r.problem(max_lag)));
        Ok(HealthStatus {
            replicas,
            is_healthy: problems.is_empty(),
            database_reachable: reachable,
            database_latency: latency,
            schema_version,
            expected_schema_version: SCHEMA_VERSION,
            read_horizon,
            transaction_counter,
            oldest_transaction_age,
            pool: self.get_pool_metrics(),
            pool_exhausted,
            unreachable_reason,
            missing_objects,
            problems,
        })
    }
}

/// How long a health check waits for a pooled connection before it
/// connects on its own to find out why there is none.
const POOL_WAIT: Duration = Duration::from_millis(500);

fn pool_wait(connect_timeout: Duration) -> Duration {
    connect_timeout.min(POOL_WAIT)
}

/// The connection a health check runs on.
enum Checked {
    Pooled(PoolConnection<Postgres>),
    Direct(PgConnection),
}

impl Checked {
    fn conn(&mut self) -> &mut PgConnection {
        match self {
            Checked::Pooled(c) => c,
            Checked::Direct(c) => c,
        }
    }
}

/// What asking for a connection found.
enum Probe {
    Pooled(PoolConnection<Postgres>),
    /// The pool gave none in time, but the database took a direct
    /// connection; `pool_busy`: every pool connection was in use.
    Direct {
        conn: PgConnection,
        pool_busy: bool,
    },
    Unreachable(Cause),
}

/// Why the database could not be reached.
pub(crate) struct Cause {
    /// Short and stable: `connection refused`, `no answer within 2s`,
    /// `authentication failed`, ...
    pub(crate) reason: String,
    /// The underlying error, password redacted.
    pub(crate) detail: Option<String>,
}

impl Cause {
    pub(crate) fn of(e: &sqlx::Error) -> Self {
        use std::io::ErrorKind;
        let reason = match e {
            sqlx::Error::Io(io) => match io.kind() {
                ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
                    "connection reset".to_owned()
                }
                ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe => {
                    "connection closed by the server".to_owned()
                }
                ErrorKind::TimedOut => "connect timed out".to_owned(),
                _ => "network error".to_owned(),
            },
            sqlx::Error::Tls(_) => "TLS handshake failed".to_owned(),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some("28P01" | "28000") => "authentication failed".to_owned(),
                Some("3D000") => "database does not exist".to_owned(),
                Some("57P03") => "the server is starting up or shutting down".to_owned(),
                Some("53300") => "too many connections".to_owned(),
                _ => "refused by the server".to_owned(),
            },
            sqlx::Error::PoolTimedOut => "no connection in time".to_owned(),
            sqlx::Error::PoolClosed => "the pool is closed".to_owned(),
            _ => "cannot connect".to_owned(),
        };
        Self {
            reason,
            detail: Some(redact_secrets(&e.to_string())),
        }
    }

    fn no_answer(after: Duration) -> Self {
        Self {
            reason: format!("no answer within {after:?} (connect timed out)"),
            detail: None,
        }
    }

    /// `reason (detail)`.
    pub(crate) fn text(&self) -> String {
        match &self.detail {
            Some(d) => format!("{} ({d})", self.reason),
            None => self.reason.clone(),
        }
    }
}

/// A pooled connection if the pool has one within [`pool_wait`]; else a
/// direct one, which tells an exhausted pool from an unreachable server.
async fn probe(pool: &PgPool, connect_timeout: Duration) -> Probe {
    match tokio::time::timeout(pool_wait(connect_timeout), pool.acquire()).await {
        Ok(Ok(conn)) => return Probe::Pooled(conn),
        // Refused connects are retried by sqlx until its timeout; other
        // errors (authentication, say) come back at once and say it all.
        Ok(Err(e)) if !matches!(e, sqlx::Error::PoolTimedOut) => {
            return Probe::Unreachable(Cause::of(&e));
        }
        _ => {}
    }
    let pool_busy = pool.size() >= pool.options().get_max_connections() && pool.num_idle() == 0;
    match direct(pool, connect_timeout).await {
        Ok(conn) => Probe::Direct { conn, pool_busy },
        Err(cause) => Probe::Unreachable(cause),
    }
}

/// One connection outside the pool, with the pool's connect options.
async fn direct(pool: &PgPool, connect_timeout: Duration) -> Result<PgConnection, Cause> {
    let options = pool.connect_options();
    match tokio::time::timeout(connect_timeout, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(Cause::of(&e)),
        Err(_) => Err(Cause::no_answer(connect_timeout)),
    }
}

/// Waits for the pool's first connection like `PgPoolOptions::connect_with`,
/// but reports a database that refuses or does not answer at once, with
/// the real cause (`connection refused`), instead of "pool timed out" after
/// the whole `connect_timeout`.
pub(crate) async fn first_connection(
    pool: &PgPool,
    connect_timeout: Duration,
) -> Result<(), PostgresError> {
    let started = Instant::now();
    match tokio::time::timeout(pool_wait(connect_timeout), pool.acquire()).await {
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
