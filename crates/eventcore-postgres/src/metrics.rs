//! Pool metrics, background pool monitoring and health checks.

use std::time::{Duration, Instant};

use eventcore::GlobalPosition;
use sqlx::{Connection, PgConnection, Postgres, Row, pool::PoolConnection};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    PostgresError, PostgresEventStore,
    pool::Call,
    pool::Probe,
    redact_secrets,
    schema::{self, SCHEMA_VERSION},
    sql,
};

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

impl PostgresEventStore {
    /// Counts streams and events (a full count: slow on very large stores).
    pub async fn stats(&self) -> Result<StoreStats, PostgresError> {
        let row = self
            .db()
            .call("stats", Call::Read, |conn| {
                Box::pin(async move {
                    sqlx::query(sql::sql(&self.sql().select_stats))
                        .persistent(self.named())
                        .fetch_one(&mut **conn)
                        .await
                        .map_err(|e| self.map_err("stats", e))
                })
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
        let metrics = self.db().metrics();
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
        self.db().bounded("health_check", self.check_health()).await
    }

    async fn check_health(&self) -> Result<HealthStatus, PostgresError> {
        let mut problems = Vec::new();
        let started = Instant::now();
        let probe = self.db().probe().await;
        let mut pool_exhausted = false;
        let mut unreachable_reason = None;
        let mut conn = match probe {
            Probe::Pooled(conn) => Some(Checked::Pooled(conn)),
            Probe::Direct {
                conn,
                pool_busy,
                waited,
            } => {
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
                        waited,
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
            match sqlx::raw_sql(sql::SELECT_ONE).execute(c.conn()).await {
                Ok(_) => reachable = true,
                Err(e) => {
                    // A pooled connection may have died with the server
                    // that had it; ask the server as it is now.
                    let cause = match self.db().direct().await {
                        Ok(fresh) => {
                            *c = Checked::Direct(fresh);
                            reachable = sqlx::raw_sql(sql::SELECT_ONE)
                                .execute(c.conn())
                                .await
                                .is_ok();
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
        // Behind a transaction pooler the checks run in one transaction,
        // the only way their statements stay on one server connection.
        let mut checks = conn.as_mut().filter(|_| reachable);
        if let Some(c) = checks.as_mut()
            && let Err(e) = self.db().begin_on(c.conn()).await
        {
            problems.push(format!(
                "cannot open a transaction for the checks: {}",
                redact_secrets(&e.to_string())
            ));
            checks = None;
        }
        if let Some(c) = checks {
            let schema = self.config().schema.as_str();
            match schema::read_version(c.conn(), self.sql()).await {
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
                match crate::counter::read(c.conn(), self.sql()).await {
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
            match sqlx::query(sql::SELECT_HORIZON)
                .persistent(self.named())
                .fetch_one(c.conn())
                .await
            {
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
            if let Err(e) = self.db().end_on(c.conn()).await {
                tracing::debug!(error = %e, "ending the health check's transaction failed");
                if let Checked::Pooled(c) = c {
                    c.close_on_drop();
                }
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
        let max_lag = self.config().max_replica_lag;
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

    pub(crate) fn no_answer(after: Duration) -> Self {
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
