//! Pool metrics, background pool monitoring and health checks.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use eventcore::GlobalPosition;
use sqlx::Row;
use tokio::{sync::watch, task::JoinHandle};

use crate::{PostgresError, PostgresEventStore, schema::SCHEMA_VERSION, sql};

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
pub struct HealthStatus {
    /// Reachable, schema current, and nothing holding the read horizon back
    /// for more than [`HealthStatus::HORIZON_WARNING`].
    pub is_healthy: bool,
    /// Whether a round trip succeeded.
    pub database_reachable: bool,
    /// Time of that round trip (including acquiring a connection).
    pub database_latency: Duration,
    /// Schema version in the database (`None`: not initialized or unreachable).
    pub schema_version: Option<i32>,
    /// Schema version this release expects.
    pub expected_schema_version: i32,
    /// `$all` readers see events below this position; newer ones wait for
    /// older transactions to finish.
    pub read_horizon: Option<GlobalPosition>,
    /// Age of the oldest transaction holding a transaction id anywhere in
    /// the cluster. While it runs, `$all` readers and subscriptions cannot
    /// move past events committed after it started.
    pub oldest_transaction_age: Option<Duration>,
    /// The pool at the time of the check.
    pub pool: PoolMetrics,
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
        let row = sqlx::query(sql::sql(&self.inner.sql.select_stats))
            .fetch_one(self.pool())
            .await
            .map_err(|e| self.map_err("stats", e))?;
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
        let idle = (pool.num_idle() + self.inner.conns.idle_count()) as u32;
        let max = self.inner.config.max_connections.max(1);
        let acquisitions = stats.acquisitions.load(Ordering::Relaxed);
        let nanos = stats.acquire_nanos.load(Ordering::Relaxed);
        PoolMetrics {
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
        }
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

    /// Checks reachability, latency, schema version, the read horizon and
    /// the pool. Database problems are reported in the status (with
    /// `is_healthy = false`), not as errors.
    pub async fn health_check(&self) -> Result<HealthStatus, PostgresError> {
        let mut problems = Vec::new();
        let started = Instant::now();
        let reachable = match sqlx::query(sql::SELECT_ONE).execute(self.pool()).await {
            Ok(_) => true,
            Err(e) => {
                problems.push(format!("database unreachable: {e}"));
                false
            }
        };
        let latency = started.elapsed();
        let mut schema_version = None;
        let mut read_horizon = None;
        let mut oldest_transaction_age = None;
        if reachable {
            match self.schema_version().await {
                Ok(v) => schema_version = v,
                Err(e) => problems.push(format!("cannot read schema version: {e}")),
            }
            if schema_version != Some(SCHEMA_VERSION) {
                problems.push(format!(
                    "schema version is {schema_version:?}, expected {SCHEMA_VERSION}: run initialize()"
                ));
            }
            match sqlx::query(sql::SELECT_HORIZON)
                .fetch_one(self.pool())
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
                Err(e) => problems.push(format!("cannot read transaction horizon: {e}")),
            }
            if let Some(age) = oldest_transaction_age.filter(|a| *a > HealthStatus::HORIZON_WARNING)
            {
                problems.push(format!(
                    "a transaction has been open for {age:?}: $all readers and subscriptions cannot pass it"
                ));
            }
        }
        Ok(HealthStatus {
            is_healthy: problems.is_empty(),
            database_reachable: reachable,
            database_latency: latency,
            schema_version,
            expected_schema_version: SCHEMA_VERSION,
            read_horizon,
            oldest_transaction_age,
            pool: self.get_pool_metrics(),
            problems,
        })
    }
}
