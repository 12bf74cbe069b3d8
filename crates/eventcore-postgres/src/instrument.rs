//! The store's metrics, through the [`metrics`] facade: recorded on every
//! store call, sent wherever the application's recorder sends them, and
//! next to free when no recorder is installed (a load of the global
//! recorder, a no-op handle). Names are listed, with the core's, in
//! `docs/operations.md` and below.
//!
//! Spans: every store call runs in a `tracing` span (`eventcore.append`,
//! `eventcore.read_stream`, ... at debug level, with stream ids, positions
//! and counts; never payloads, metadata or connection strings), each of
//! its attempts in a child span `eventcore.attempt` with the attempt number.

use std::time::Duration;

use eventcore::{AppendOutcome, Error};
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

/// Store calls by `operation` and `outcome` (`ok` | `error`).
pub const STORE_CALLS: &str = "eventcore_store_calls_total";
/// Duration of store calls by `operation`, retries of stale connections
/// included.
pub const STORE_CALL_TIME: &str = "eventcore_store_call_duration_seconds";
/// Transient faults (connection lost or refused, timeouts, serialization
/// aborts, outcome unknown) a store call returned, by `operation`: what
/// the caller's [`RetryPolicy`](eventcore::RetryPolicy) retries.
pub const TRANSIENT_FAULTS: &str = "eventcore_transient_faults_total";
/// Attempts the store repeated itself on a fresh connection because a
/// pooled one had died, by `operation`.
pub const STORE_RETRIES: &str = "eventcore_store_retries_total";
/// Appends by `outcome`: `written`, `replayed` (a re-send recognised by
/// its event ids), `conflict`, `error`.
pub const APPENDS: &str = "eventcore_appends_total";
/// Events written by appends.
pub const EVENTS_APPENDED: &str = "eventcore_events_appended_total";
/// Appends refused because a stream was not at the expected version.
pub const CONFLICTS: &str = "eventcore_append_conflicts_total";
/// Events returned by reads, by `operation`.
pub const EVENTS_READ: &str = "eventcore_events_read_total";
/// Time to get a connection from the pool.
pub const POOL_WAIT: &str = "eventcore_pool_acquire_duration_seconds";
/// Failed attempts to get a connection (pool timeout or connect error).
pub const POOL_FAILURES: &str = "eventcore_pool_acquire_failures_total";
/// Open pool connections by `state` (`in_use` | `idle`), published by
/// every [`get_pool_metrics`](crate::PostgresEventStore::get_pool_metrics)
/// call, so every tick of
/// [`start_pool_monitoring`](crate::PostgresEventStore::start_pool_monitoring).
pub const POOL_CONNECTIONS: &str = "eventcore_pool_connections";
/// The pool's limit.
pub const POOL_MAX: &str = "eventcore_pool_max_connections";
/// WAL the primary wrote that a read replica has not replayed, in bytes,
/// by `replica` (`host:port`); published by every
/// [`replica_lag`](crate::PostgresEventStore::replica_lag) and
/// [`health_check`](crate::PostgresEventStore::health_check).
pub const REPLICA_LAG_BYTES: &str = "eventcore_replica_lag_bytes";
/// How far a read replica's data is behind the primary, in seconds, by
/// `replica` (0 when it has replayed everything; see
/// [`ReplicaStatus::lag`](crate::ReplicaStatus::lag)).
pub const REPLICA_LAG_SECONDS: &str = "eventcore_replica_lag_seconds";

/// Describes every metric of the store and of the core
/// ([`eventcore::describe_metrics`]) to the installed recorder: units and
/// help texts (the `# HELP` lines of a Prometheus exporter). Call it once
/// after installing the recorder; recording works without it.
///
/// The bank example (`examples/bank`, `--metrics 127.0.0.1:9000`) wires a
/// Prometheus exporter (crate `metrics-exporter-prometheus`) like this:
///
/// ```text
/// PrometheusBuilder::new().with_http_listener(addr).install()?;
/// eventcore_postgres::describe_metrics();
/// ```
pub fn describe_metrics() {
    eventcore::describe_metrics();
    describe_counter!(
        STORE_CALLS,
        "Store calls by operation and outcome (ok, error)"
    );
    describe_histogram!(
        STORE_CALL_TIME,
        Unit::Seconds,
        "Duration of store calls by operation"
    );
    describe_counter!(
        TRANSIENT_FAULTS,
        "Transient faults returned by store calls (retried by the caller's policy), by operation"
    );
    describe_counter!(
        STORE_RETRIES,
        "Store call attempts repeated on a fresh connection after a pooled one was found dead"
    );
    describe_counter!(
        APPENDS,
        "Appends by outcome (written, replayed, conflict, error)"
    );
    describe_counter!(EVENTS_APPENDED, "Events written by appends");
    describe_counter!(
        CONFLICTS,
        "Appends refused because a stream was not at the expected version"
    );
    describe_counter!(EVENTS_READ, "Events returned by reads, by operation");
    describe_histogram!(
        POOL_WAIT,
        Unit::Seconds,
        "Time to get a connection from the pool"
    );
    describe_counter!(
        POOL_FAILURES,
        "Failed attempts to get a pool connection (timeout or connect error)"
    );
    describe_gauge!(
        POOL_CONNECTIONS,
        "Open pool connections by state (in_use, idle), as of the last pool monitoring tick"
    );
    describe_gauge!(POOL_MAX, "The pool's connection limit");
    describe_gauge!(
        REPLICA_LAG_BYTES,
        Unit::Bytes,
        "WAL written by the primary and not yet replayed by a read replica, by replica"
    );
    describe_gauge!(
        REPLICA_LAG_SECONDS,
        Unit::Seconds,
        "How far a read replica's data is behind the primary (0 when caught up), by replica"
    );
}

/// A store call ended after `took`: `failed` is `None` on success, else
/// whether the failure was transient.
pub(crate) fn call_finished(operation: &'static str, took: Duration, failed: Option<bool>) {
    let outcome = if failed.is_some() { "error" } else { "ok" };
    counter!(STORE_CALLS, "operation" => operation, "outcome" => outcome).increment(1);
    histogram!(STORE_CALL_TIME, "operation" => operation).record(took.as_secs_f64());
    if failed == Some(true) {
        counter!(TRANSIENT_FAULTS, "operation" => operation).increment(1);
    }
}

/// An attempt is repeated on a fresh connection.
pub(crate) fn stale_retry(operation: &'static str) {
    counter!(STORE_RETRIES, "operation" => operation).increment(1);
}

/// An append returned.
pub(crate) fn appended(result: &Result<AppendOutcome, Error>, events: usize) {
    let outcome = match result {
        Ok(o) if o.replayed => "replayed",
        Ok(_) => "written",
        Err(Error::Conflict(_)) => {
            counter!(CONFLICTS).increment(1);
            "conflict"
        }
        Err(_) => "error",
    };
    counter!(APPENDS, "outcome" => outcome).increment(1);
    if matches!(result, Ok(o) if !o.replayed && o.positions.is_some()) {
        counter!(EVENTS_APPENDED).increment(events as u64);
    }
}

/// A read returned `events` events.
pub(crate) fn events_read(operation: &'static str, events: usize) {
    counter!(EVENTS_READ, "operation" => operation).increment(events as u64);
}

/// A connection was asked of the pool.
pub(crate) fn acquired(waited: Duration, ok: bool) {
    if ok {
        histogram!(POOL_WAIT).record(waited.as_secs_f64());
    } else {
        counter!(POOL_FAILURES).increment(1);
    }
}

/// The pool as [`PostgresEventStore::get_pool_metrics`](crate::PostgresEventStore::get_pool_metrics)
/// found it (so every tick of `start_pool_monitoring` publishes it).
pub(crate) fn pool(m: &crate::PoolMetrics) {
    let idle = m.idle_connections.min(m.current_connections);
    gauge!(POOL_CONNECTIONS, "state" => "in_use").set(f64::from(m.current_connections - idle));
    gauge!(POOL_CONNECTIONS, "state" => "idle").set(f64::from(idle));
    gauge!(POOL_MAX).set(f64::from(m.max_connections));
}

/// A replica's lag as a health check or `replica_lag` found it.
pub(crate) fn replica_lag(status: &crate::ReplicaStatus) {
    let replica = status.replica.clone();
    gauge!(REPLICA_LAG_BYTES, "replica" => replica.clone()).set(status.lag_bytes as f64);
    gauge!(REPLICA_LAG_SECONDS, "replica" => replica).set(status.lag.as_secs_f64());
}
