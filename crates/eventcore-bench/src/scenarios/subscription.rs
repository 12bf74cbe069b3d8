//! F: subscription latency, and what a live subscriber costs the writers.
//!
//! A's workload (16 writers, 1 event per append on random streams of
//! 10,000, version read first) runs on a fresh store while a controller
//! switches a subscriber on and off in alternating [`SLICE`]s: off, on, off,
//! on, ... through the measured window. Each on-slice starts a new
//! [`subscribe`]r after the highest position the writers have had returned
//! and, when the slice ends, lets it deliver up to the highest one returned
//! by then before dropping it. (The store's `head_position()` is not used:
//! it takes a connection straight from the pool, which the store's
//! connection cache keeps busy while the writers run.) Each writer notes the
//! instant its append returned `Ok`, by event id; the subscriber notes the
//! instant each event reached it.
//!
//! * Latency = delivered - append returned, for the events appended inside
//!   the on-slices (one delivered before the writer saw its `Ok` counts 0).
//! * Cost = the writers' rate in the on-slices against the off-slices just
//!   before and after. Alternating every [`SLICE`] cancels the drift of a
//!   shared machine's load, which back-to-back runs of a few seconds do not
//!   (they differ by ±15% with nothing changed).
//!
//! Variants: `F-same-store` subscribes through the writers' own store
//! (woken in-process on every append), `F-other-store` through a second
//! `PostgresEventStore` on the same schema, as another process would (woken
//! by LISTEN/NOTIFY, polling as the fallback), `F-none` switches nothing on
//! (the ratio's noise floor). The second store is opened before the run and
//! its LISTEN connection kept up through the off-slices, so switching on is
//! only the subscription itself.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use eventcore::{
    EventFilter, EventId, EventStore, GlobalPosition, SubscriptionOptions, subscribe,
    testing::{CountingStore, ReadCounts},
};
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    cpu,
    ctx::{Ctx, close},
    measure::{Timing, drive_from, histogram, quantile_ms},
    report::{Row, round, round3},
    workload::{AppendWorker, StampLog, seed_order, write_streams},
};

/// A's writer count.
const WRITERS: usize = 16;

/// Length of each off- and on-slice.
const SLICE: Duration = Duration::from_millis(250);

/// How long a subscriber may take, once its slice ends, to deliver what was
/// committed by then; the rest counts as undelivered.
const DRAIN: Duration = Duration::from_secs(5);

/// What the on-slices switch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// A subscriber on the writers' store: woken in-process by every append.
    SameStore,
    /// A subscriber on a second store on the same schema: woken by NOTIFY,
    /// else polling.
    OtherStore,
    /// Nothing: the same alternation with no subscriber, so the ratio shows
    /// the method's own noise.
    Nothing,
}

impl Variant {
    /// Row name, schema, and what it switches on.
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Variant::SameStore => (
                "F-same-store",
                "bench_f_same_w16",
                "subscriber on the writers' store (in-process wake-ups)",
            ),
            Variant::OtherStore => (
                "F-other-store",
                "bench_f_other_w16",
                "subscriber on a second store (LISTEN/NOTIFY + polling)",
            ),
            Variant::Nothing => (
                "F-none",
                "bench_f_none_w16",
                "nothing switched on: the ratio's noise floor",
            ),
        }
    }
}

/// What the subscribers saw, all slices together.
#[derive(Default)]
struct Deliveries {
    /// (event id, instant it was yielded).
    stamps: Vec<(EventId, Instant)>,
    errors: u64,
    first_error: Option<String>,
    /// Subscribers that had not caught up [`DRAIN`] after their slice.
    late_stops: u64,
}

/// One subscriber following a store from a position until told where to
/// stop.
struct Subscriber {
    /// Stop once an event at or past this position was delivered.
    stop_at: watch::Sender<Option<GlobalPosition>>,
    task: JoinHandle<Deliveries>,
}

impl Subscriber {
    fn spawn<S: EventStore + 'static>(store: S, after: GlobalPosition) -> Self {
        let (stop_at, mut target) = watch::channel(None::<GlobalPosition>);
        let task = tokio::spawn(async move {
            let options = SubscriptionOptions::default()
                .after(after)
                .filter(EventFilter::all().stream_prefix("stream-"));
            let mut live = Box::pin(subscribe(store, options));
            let mut seen = Deliveries::default();
            let mut cursor = after;
            let done = |cursor, target: Option<GlobalPosition>| target.is_some_and(|t| cursor >= t);
            loop {
                tokio::select! {
                    biased;
                    changed = target.changed() => {
                        let stop = *target.borrow_and_update();
                        if changed.is_err() || done(cursor, stop) {
                            break;
                        }
                    }
                    item = live.next() => match item {
                        Some(Ok(event)) => {
                            seen.stamps.push((event.event_id, Instant::now()));
                            cursor = event.position;
                            if done(cursor, *target.borrow()) {
                                break;
                            }
                        }
                        Some(Err(e)) => {
                            seen.errors += 1;
                            if seen.first_error.is_none() {
                                seen.first_error = Some(format!("{e:#}"));
                            }
                        }
                        None => break,
                    },
                }
            }
            seen
        });
        Self { stop_at, task }
    }

    /// Lets it deliver up to `head` (at most [`DRAIN`]), then stops it.
    async fn finish(self, head: GlobalPosition, into: &mut Deliveries) -> anyhow::Result<()> {
        let _ = self.stop_at.send(Some(head));
        let mut task = self.task;
        let seen = match tokio::time::timeout(DRAIN, &mut task).await {
            Ok(joined) => joined.context("the subscriber panicked")?,
            Err(_) => {
                into.late_stops += 1;
                // Dropping the sender ends it at its next step.
                drop(self.stop_at);
                task.await.context("the subscriber panicked")?
            }
        };
        into.stamps.extend(seen.stamps);
        into.errors += seen.errors;
        if into.first_error.is_none() {
            into.first_error = seen.first_error;
        }
        Ok(())
    }
}

/// A stretch of the measured window with the subscriber off or on.
#[derive(Clone, Copy, Debug)]
struct Slice {
    from: Instant,
    to: Instant,
    on: bool,
    /// Where its subscriber started.
    after: GlobalPosition,
    /// CPU seconds this process (writers and subscriber) and the server
    /// used during the slice, where they could be read.
    cpu: (Option<f64>, Option<f64>),
}

impl Slice {
    fn holds(&self, t: Instant) -> bool {
        self.from <= t && t < self.to
    }
}

/// Switches a subscriber on `store` off and on, [`SLICE`] each, from `from`
/// to `until`; returns the slices as they happened and what was delivered.
/// A subscriber starts after the highest position the writers have seen
/// returned and, when its slice ends, stops once it has delivered the
/// highest one returned by then: every event whose append returned in its
/// slice, except those of appends still in flight when it started that
/// committed below its start.
async fn alternate<S: EventStore + Clone + 'static>(
    store: Option<S>,
    stamps: StampLog,
    from: Instant,
    until: Instant,
) -> anyhow::Result<(Vec<Slice>, Deliveries)> {
    let mut slices = Vec::new();
    let mut seen = Deliveries::default();
    let mut t = from;
    let mut on = false;
    tokio::time::sleep_until(from.into()).await;
    while t < until {
        let end = (t + SLICE).min(until);
        if on {
            let begun = Instant::now();
            let before = cpu_mark().await;
            let after = GlobalPosition::new(stamps.high.load(Ordering::Relaxed));
            let subscriber = store.as_ref().map(|s| Subscriber::spawn(s.clone(), after));
            tokio::time::sleep_until(end.into()).await;
            slices.push(Slice {
                from: begun,
                to: end,
                on,
                after,
                cpu: cpu_since(before).await,
            });
            if let Some(subscriber) = subscriber {
                let high = GlobalPosition::new(stamps.high.load(Ordering::Relaxed));
                subscriber.finish(high, &mut seen).await?;
            }
        } else {
            let before = cpu_mark().await;
            tokio::time::sleep_until(end.into()).await;
            slices.push(Slice {
                from: t,
                to: end,
                on,
                after: GlobalPosition::START,
                cpu: cpu_since(before).await,
            });
        }
        t = end;
        on = !on;
    }
    Ok((slices, seen))
}

/// [`cpu::mark`] on a blocking thread (the server's is a walk through
/// `/proc`).
async fn cpu_mark() -> Option<cpu::Mark> {
    tokio::task::spawn_blocking(cpu::mark).await.ok()
}

/// [`cpu::Mark::since`] on a blocking thread.
async fn cpu_since(before: Option<cpu::Mark>) -> (Option<f64>, Option<f64>) {
    match before {
        Some(m) => tokio::task::spawn_blocking(move || m.since())
            .await
            .unwrap_or((None, None)),
        None => (None, None),
    }
}

/// Events whose append returned inside the `on` (or off) slices, and those
/// slices' length in seconds.
fn events_in(
    appended: &[(EventId, GlobalPosition, Instant)],
    slices: &[Slice],
    on: bool,
) -> (usize, f64) {
    let picked: Vec<&Slice> = slices.iter().filter(|s| s.on == on).collect();
    let seconds: f64 = picked.iter().map(|s| (s.to - s.from).as_secs_f64()).sum();
    let events = appended
        .iter()
        .filter(|(_, _, t)| picked.iter().any(|s| s.holds(*t)))
        .count();
    (events, seconds)
}

/// Events whose append returned inside the `on` (or off) slices, per second.
fn rate(appended: &[(EventId, GlobalPosition, Instant)], slices: &[Slice], on: bool) -> f64 {
    match events_in(appended, slices, on) {
        (events, seconds) if seconds > 0.0 => events as f64 / seconds,
        _ => 0.0,
    }
}

/// This process's and the server's CPU per event appended in the `on` (or
/// off) slices, in microseconds; `None` where a reading is missing.
fn cpu_per_event(
    appended: &[(EventId, GlobalPosition, Instant)],
    slices: &[Slice],
    on: bool,
) -> (Option<f64>, Option<f64>) {
    let (events, _) = events_in(appended, slices, on);
    let picked = || slices.iter().filter(|s| s.on == on);
    let sum = |pick: fn(&Slice) -> Option<f64>| picked().map(pick).sum::<Option<f64>>();
    (
        cpu::us_per_event(sum(|s| s.cpu.0), events as f64),
        cpu::us_per_event(sum(|s| s.cpu.1), events as f64),
    )
}

/// Delivery latency of the events appended inside the on-slices.
struct Latency {
    /// Microseconds.
    hist: Histogram<u64>,
    /// Appended in an on-slice but never delivered.
    missing: u64,
    /// Delivered before the writer saw its append return (counted as 0).
    early: u64,
    /// Appended in an on-slice but committed below where its subscriber
    /// started (in flight at the start): not expected, not counted.
    below_start: u64,
}

impl Latency {
    fn of(
        appended: &[(EventId, GlobalPosition, Instant)],
        delivered: &[(EventId, Instant)],
        slices: &[Slice],
    ) -> anyhow::Result<Self> {
        let at: HashMap<EventId, Instant> = delivered.iter().copied().collect();
        let mut latency = Self {
            hist: histogram()?,
            missing: 0,
            early: 0,
            below_start: 0,
        };
        let on: Vec<&Slice> = slices.iter().filter(|s| s.on).collect();
        for (id, position, returned) in appended {
            let Some(slice) = on.iter().find(|s| s.holds(*returned)) else {
                continue;
            };
            if *position <= slice.after {
                latency.below_start += 1;
                continue;
            }
            match at.get(id) {
                Some(got) if got < returned => {
                    latency.early += 1;
                    latency.hist.saturating_record(1);
                }
                Some(got) => {
                    let us = (*got - *returned).as_micros() as u64;
                    latency.hist.saturating_record(us.max(1));
                }
                None => latency.missing += 1,
            }
        }
        Ok(latency)
    }

    fn ms(&self, q: f64) -> f64 {
        quantile_ms(&self.hist, q)
    }
}

async fn f_row(ctx: &mut Ctx, variant: Variant) -> anyhow::Result<Row> {
    let (name, schema, describe) = variant.names();
    eprintln!(
        "[{name}] A with {WRITERS} writers, subscriber off/on every {} ms",
        SLICE.as_millis()
    );
    let streams = write_streams()?;
    // Room in the pool for the same-store subscriber's reads, in both variants.
    let store = ctx
        .prepared_store(schema, WRITERS + 1, &streams, seed_order)
        .await?;
    let other = match variant {
        Variant::OtherStore => Some(ctx.db()?.plain_store(schema, 2).await?),
        _ => None,
    };
    // Keeps the second store's LISTEN connection up between on-slices.
    let _listening = other.as_ref().and_then(|o| o.commit_signal());
    let subscribed = match (variant, &other) {
        (Variant::SameStore, _) => Some(CountingStore::new(store.clone())),
        (Variant::OtherStore, Some(o)) => Some(CountingStore::new(o.clone())),
        _ => None,
    };
    let counts = subscribed.as_ref().map(CountingStore::counts);

    let stamps = StampLog::default();
    let workers = (0..WRITERS)
        .map(|id| AppendWorker::new(store.clone(), streams.clone(), 1, id).stamped(stamps.clone()))
        .collect();
    // Twice the usual window: the ratio compares its two halves (on- and
    // off-slices), and one 10 s half left ±3 % of noise (F-none).
    let timing = Timing {
        measure: ctx.timing.measure * 2,
        ..ctx.timing
    };
    let start = Instant::now() + Duration::from_millis(50);
    let from = start + timing.warmup;
    let until = from + timing.measure;
    let controller = tokio::spawn(alternate(subscribed, stamps.clone(), from, until));
    let m = drive_from(workers, timing, start).await?;
    let (slices, seen) = controller.await.context("the controller panicked")??;
    if let Some(other) = other {
        close(other).await;
    }
    close(store).await;

    let appended = std::mem::take(&mut *stamps.log.lock().unwrap_or_else(|e| e.into_inner()));
    let latency = Latency::of(&appended, &seen.stamps, &slices)?;
    let with = rate(&appended, &slices, true);
    let without = rate(&appended, &slices, false);
    let mut row = Row::from_measured(name, WRITERS, 1, &m);
    // Over the whole run, on- and off-slices mixed: see run_events_per_sec.
    row.extra.remove("ops_per_sec");
    row.events_per_sec = with;
    row.ceiling_events_per_sec = Some(without);
    row.p50_ms = latency.ms(0.50);
    row.p99_ms = latency.ms(0.99);
    let ratio = row.ratio().unwrap_or(0.0);
    let on_seconds: f64 = slices
        .iter()
        .filter(|s| s.on)
        .map(|s| (s.to - s.from).as_secs_f64())
        .sum();
    let count = |pick: fn(&ReadCounts) -> &AtomicU64| {
        counts
            .as_deref()
            .map_or(0, |c| pick(c).load(Ordering::Relaxed))
    };
    let reads = count(|c| &c.reads);
    let read_events = count(|c| &c.events);
    let empty_per_sec = count(|c| &c.empty_reads) as f64 / on_seconds.max(1e-9);
    let heads_per_sec = count(|c| &c.head_reads) as f64 / on_seconds.max(1e-9);
    row = row
        .extra("run_events_per_sec", round(m.per_sec(m.events)))
        .extra("slice_ms", SLICE.as_millis() as u64)
        .extra("slices_on", slices.iter().filter(|s| s.on).count())
        .note(format!(
            "{}; writers {with:.0} ev/s with it, {without:.0} without \
             (alternating {} ms slices): {ratio:.3}",
            describe,
            SLICE.as_millis()
        ));
    // What the subscriber adds to the machine's work per written event.
    let (client_on, server_on) = cpu_per_event(&appended, &slices, true);
    let (client_off, server_off) = cpu_per_event(&appended, &slices, false);
    if let (Some(c_on), Some(c_off)) = (client_on, client_off) {
        row = row
            .extra("client_cpu_us_per_event_on", round3(c_on))
            .extra("client_cpu_us_per_event_off", round3(c_off));
        let mut note = format!("CPU per written event, on / off: client {c_on:.1} / {c_off:.1} µs");
        if let (Some(s_on), Some(s_off)) = (server_on, server_off) {
            row = row
                .extra("server_cpu_us_per_event_on", round3(s_on))
                .extra("server_cpu_us_per_event_off", round3(s_off));
            let more = (c_on + s_on) / (c_off + s_off) - 1.0;
            note.push_str(&format!(
                ", server {s_on:.1} / {s_off:.1} µs (both: {:+.1} %)",
                more * 100.0
            ));
        }
        row = row.note(note);
    }
    if variant == Variant::Nothing {
        return Ok(row);
    }
    let reads_per_sec = reads as f64 / on_seconds.max(1e-9);
    let events_per_read = read_events as f64 / reads.max(1) as f64;
    row = row
        .extra("delivered", latency.hist.len())
        .extra("undelivered", latency.missing)
        .extra("delivered_before_ack", latency.early)
        .extra("committed_below_start", latency.below_start)
        .extra("delivery_p999_ms", round3(latency.ms(0.999)))
        .extra("delivery_max_ms", round3(latency.ms(1.0)))
        .extra("subscriber_reads_per_sec", round(reads_per_sec))
        .extra("events_per_read", round(events_per_read))
        .extra("empty_reads_per_sec", round(empty_per_sec))
        .extra("head_reads_per_sec", round(heads_per_sec))
        .note(format!(
            "p50/p99 = delivery latency (append returned -> event yielded), max {:.1} ms; \
             {reads_per_sec:.0} reads/s of {events_per_read:.1} events \
             ({empty_per_sec:.0}/s empty), {heads_per_sec:.0} head reads/s",
            latency.ms(1.0),
        ));
    if latency.missing > 0 || seen.late_stops > 0 {
        row = row.note(format!(
            "{} event(s) not delivered within {} s of their slice's end",
            latency.missing,
            DRAIN.as_secs()
        ));
    }
    if seen.errors > 0 {
        row = row.extra("subscriber_errors", seen.errors).note(format!(
            "{} subscriber error(s) (first: {})",
            seen.errors,
            seen.first_error.as_deref().unwrap_or("?")
        ));
    }
    Ok(row)
}

pub(super) async fn run_f(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for variant in [Variant::Nothing, Variant::SameStore, Variant::OtherStore] {
        rows.push(f_row(ctx, variant).await?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_counts_only_on_slices_after_their_start() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let ids: Vec<EventId> = (0..6).map(|_| EventId::new()).collect();
        let id = |n: usize| ids[n];
        let slices = [
            Slice {
                from: ms(0),
                to: ms(100),
                on: false,
                after: GlobalPosition::START,
                cpu: (Some(0.002), Some(0.010)),
            },
            Slice {
                from: ms(100),
                to: ms(200),
                on: true,
                after: GlobalPosition::new(10),
                cpu: (Some(0.012), None),
            },
        ];
        let p = GlobalPosition::new;
        let appended = [
            (id(1), p(5), ms(50)),   // off-slice: ignored
            (id(2), p(9), ms(110)),  // below the subscriber's start
            (id(3), p(11), ms(120)), // delivered 3 ms later
            (id(4), p(12), ms(130)), // delivered before the ack
            (id(5), p(13), ms(140)), // never delivered
        ];
        let delivered = [(id(3), ms(123)), (id(4), ms(129))];
        let l = Latency::of(&appended, &delivered, &slices).unwrap();
        assert_eq!(l.hist.len(), 2);
        assert_eq!((l.missing, l.early, l.below_start), (1, 1, 1));
        assert!((l.ms(1.0) - 3.0).abs() < 0.01);
        assert!((rate(&appended, &slices, true) - 40.0).abs() < 1e-6);
        assert!((rate(&appended, &slices, false) - 10.0).abs() < 1e-6);
        // CPU per event appended in the slices: one off (2 ms client, 10 ms
        // server), four on (12 ms client, the server's reading missing).
        assert_eq!(
            cpu_per_event(&appended, &slices, false),
            (Some(2000.0), Some(10000.0))
        );
        let (client_on, server_on) = cpu_per_event(&appended, &slices, true);
        assert!((client_on.unwrap() - 3000.0).abs() < 1e-6);
        assert_eq!(server_on, None);
    }
}
