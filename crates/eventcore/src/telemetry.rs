//! Metrics of the core: command retries, subscription and projection lag,
//! projection apply time. Recorded through the [`metrics`] facade, so they
//! go wherever the application's recorder sends them (a Prometheus
//! exporter, say) and cost next to nothing when none is installed.
//!
//! The store's own metrics (appends, events, conflicts, transient faults,
//! pool use) are recorded by the store: see `eventcore_postgres::describe_metrics`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::{GlobalPosition, StoredEvent};

/// Commands re-run after a version conflict, or retried after a transient
/// fault: label `reason` = `conflict` | `transient`.
pub const COMMAND_RETRIES: &str = "eventcore_command_retries_total";
/// Commit-to-delivery delay of the newest event of each page a
/// subscription delivers (the store's `recorded_at` against this clock).
pub const SUBSCRIPTION_LAG: &str = "eventcore_subscription_lag_seconds";
/// Per projection (label `projection`): events applied, or skipped under
/// [`ErrorStrategy::Skip`](crate::ErrorStrategy::Skip) (label `outcome`).
pub const PROJECTION_EVENTS: &str = "eventcore_projection_events_total";
/// Per projection: how long `apply_batch` or one `apply` took.
pub const PROJECTION_APPLY_TIME: &str = "eventcore_projection_apply_duration_seconds";
/// Per projection: commit-to-applied delay of the newest event of each page.
pub const PROJECTION_LAG: &str = "eventcore_projection_lag_seconds";
/// Per projection: the last checkpoint saved.
pub const PROJECTION_CHECKPOINT: &str = "eventcore_projection_checkpoint_position";
/// Per projection: runs that stopped on an error (lease loss included).
pub const PROJECTION_ERRORS: &str = "eventcore_projection_errors_total";

/// Describes the core's metrics to the installed recorder (units and help
/// texts, the `# HELP` lines of a Prometheus exporter). Call it once after
/// installing the recorder; recording works without it.
pub fn describe_metrics() {
    describe_counter!(
        COMMAND_RETRIES,
        "Commands re-run after a version conflict or retried after a transient fault, by reason"
    );
    describe_histogram!(
        SUBSCRIPTION_LAG,
        Unit::Seconds,
        "Delay from an event's commit to its delivery by a subscription (newest event of each page)"
    );
    describe_counter!(
        PROJECTION_EVENTS,
        "Events a projection applied or skipped, by projection and outcome"
    );
    describe_histogram!(
        PROJECTION_APPLY_TIME,
        Unit::Seconds,
        "Time a projection's apply_batch (or one apply) took"
    );
    describe_histogram!(
        PROJECTION_LAG,
        Unit::Seconds,
        "Delay from an event's commit to its application by a projection (newest event of each page)"
    );
    describe_gauge!(
        PROJECTION_CHECKPOINT,
        "Last checkpoint a projection runner saved (a global position)"
    );
    describe_counter!(
        PROJECTION_ERRORS,
        "Projection runs that stopped on an error"
    );
}

pub(crate) fn command_retry(reason: &'static str) {
    counter!(COMMAND_RETRIES, "reason" => reason).increment(1);
}

/// How long ago `event` was recorded, by this machine's clock (0 if the
/// clocks disagree the other way).
fn age(recorded_at: DateTime<Utc>) -> f64 {
    (Utc::now() - recorded_at)
        .to_std()
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

pub(crate) fn subscription_page(page: &[StoredEvent]) {
    if let Some(last) = page.last() {
        histogram!(SUBSCRIPTION_LAG).record(age(last.recorded_at));
    }
}

pub(crate) fn projection_applied(projection: &str, events: usize, took: Duration) {
    let name = projection.to_owned();
    counter!(PROJECTION_EVENTS, "projection" => name.clone(), "outcome" => "applied")
        .increment(events as u64);
    histogram!(PROJECTION_APPLY_TIME, "projection" => name).record(took.as_secs_f64());
}

pub(crate) fn projection_skipped(projection: &str) {
    counter!(PROJECTION_EVENTS, "projection" => projection.to_owned(), "outcome" => "skipped")
        .increment(1);
}

pub(crate) fn projection_page(projection: &str, page: &[StoredEvent]) {
    if let Some(last) = page.last() {
        histogram!(PROJECTION_LAG, "projection" => projection.to_owned())
            .record(age(last.recorded_at));
    }
}

pub(crate) fn projection_checkpoint(projection: &str, position: GlobalPosition) {
    gauge!(PROJECTION_CHECKPOINT, "projection" => projection.to_owned()).set(position.get() as f64);
}

pub(crate) fn projection_error(projection: &str) {
    counter!(PROJECTION_ERRORS, "projection" => projection.to_owned()).increment(1);
}
