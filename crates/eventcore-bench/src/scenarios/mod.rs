//! The scenarios, the registry that lists them, and the machinery they
//! share: the timed worker loop, the event payload, seeding.
//!
//! Adding a scenario: write `scenarios/<family>.rs` with an
//! `async fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>>`, add a variant
//! to [`Scenario`] and to [`Scenario::ALL`], and fill in its arms of `key`,
//! `title`, `needs_postgres` and `run`. `--only`, the tables and the JSON pick it up
//! from there.

pub(crate) mod append;
pub(crate) mod command;
pub(crate) mod memory;
pub(crate) mod read;
pub(crate) mod snapshot;
pub(crate) mod subscription;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use eventcore::{
    AppendRequest, Event, EventMetadata, EventStore, ExpectedVersion, NewEvent, RetryPolicy,
    StreamId,
};
use eventcore_postgres::PostgresEventStore;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{
    cpu,
    db::{BenchDb, Ceiling, CeilingResult, STREAMS, Script},
    report::Row,
};

/// Every scenario, in run order. The registry: `--only` names are
/// [`Scenario::key`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// 1 event per append on random streams, 1..64 writers.
    A,
    /// A through the `CommandExecutor`.
    ACmd,
    /// 10 and 100 events per append.
    B,
    /// Two-stream atomic transfers through the executor.
    C,
    /// One hot stream, conflicts retried.
    D,
    /// Stream and `$all` reads over a large store.
    E,
    /// Subscription latency (append to delivery) under A's load, and what
    /// the subscriber costs the writers.
    F,
    /// The write scenarios on the in-memory store.
    G,
    /// A command on a stream of 100,000 events vs 100, with snapshots.
    S,
}

impl Scenario {
    /// Run order.
    pub(crate) const ALL: &'static [Scenario] = &[
        Scenario::A,
        Scenario::ACmd,
        Scenario::B,
        Scenario::C,
        Scenario::D,
        Scenario::E,
        Scenario::F,
        Scenario::G,
        Scenario::S,
    ];

    /// The name `--only` takes.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Scenario::A => "A",
            Scenario::ACmd => "A-cmd",
            Scenario::B => "B",
            Scenario::C => "C",
            Scenario::D => "D",
            Scenario::E => "E",
            Scenario::F => "F",
            Scenario::G => "G",
            Scenario::S => "S",
        }
    }

    pub(crate) fn title(self) -> &'static str {
        match self {
            Scenario::A => "A: 1 event per append, random stream of 10,000, version read first",
            Scenario::ACmd => "A-cmd: A through CommandExecutor (fold the stream, append 1 event)",
            Scenario::B => "B: batched appends (10 and 100 events per append)",
            Scenario::C => "C: 2-stream atomic transfer through CommandExecutor",
            Scenario::D => "D: one hot stream, every writer on it",
            Scenario::E => "E: reads (read_stream of 100, read_all pages of 1,000)",
            Scenario::F => "F: subscription latency, append to delivery, under A with 16 writers",
            Scenario::G => "G: write scenarios on InMemoryEventStore (no ceiling)",
            Scenario::S => "S: a command on a stream of 100,000 events vs 100, with snapshots",
        }
    }

    /// Whether it needs the PostgreSQL server (G does not).
    pub(crate) fn needs_postgres(self) -> bool {
        !matches!(self, Scenario::G)
    }

    /// Looks a `--only` name up, case-insensitively.
    pub(crate) fn from_key(key: &str) -> Option<Scenario> {
        Self::ALL
            .iter()
            .copied()
            .find(|s| s.key().eq_ignore_ascii_case(key.trim()))
    }

    pub(crate) async fn run(self, ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
        match self {
            Scenario::A => append::run_a(ctx).await,
            Scenario::ACmd => command::run_a_cmd(ctx).await,
            Scenario::B => append::run_b(ctx).await,
            Scenario::C => command::run_c(ctx).await,
            Scenario::D => command::run_d(ctx).await,
            Scenario::E => read::run_e(ctx).await,
            Scenario::F => subscription::run_f(ctx).await,
            Scenario::G => memory::run_g(ctx).await,
            Scenario::S => snapshot::run_s(ctx).await,
        }
    }
}

/// Warm-up (not measured) and measured time of every library run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub(crate) warmup: Duration,
    pub(crate) measure: Duration,
}

/// What the scenarios run against.
pub(crate) struct Ctx {
    pub(crate) quick: bool,
    pub(crate) timing: Timing,
    /// `None` when only in-memory scenarios were selected.
    pub(crate) db: Option<BenchDb>,
    /// `None` without pgbench or with `--no-ceiling`.
    pub(crate) ceiling: Option<Ceiling>,
    /// The executor's retry policy in D (`--d-retry`, else
    /// [`command::hot_stream_retry`]).
    pub(crate) d_retry: RetryPolicy,
    /// A write ceiling measured by [`Ctx::ceiling_before`], waiting for its
    /// second half: (script key, clients, result).
    pub(crate) ceiling_pending: Option<(String, usize, CeilingResult)>,
}

impl Ctx {
    pub(crate) fn db(&self) -> anyhow::Result<&BenchDb> {
        self.db.as_ref().context("this scenario needs PostgreSQL")
    }

    /// The first half of a write ceiling, measured just before the library
    /// run it is compared with; [`Ctx::ceiling`] after the run measures the
    /// second half and returns both combined. A ceiling that brackets its
    /// library run cancels the drift of this machine's fsync latency, which
    /// moves pgbench alone by +-10 % within minutes.
    pub(crate) async fn ceiling_before(&mut self, script: &Script, clients: usize) {
        self.ceiling_pending = self
            .measure_ceiling(script, clients)
            .await
            .map(|r| (script.key.clone(), clients, r));
    }

    /// The pgbench figure for `script` at `clients`, or `None` without a
    /// ceiling: measured now (reads: once per invocation), combined with the
    /// half measured by [`Ctx::ceiling_before`] for the same script if any.
    pub(crate) async fn ceiling(
        &mut self,
        script: &Script,
        clients: usize,
    ) -> Option<CeilingResult> {
        let after = self.measure_ceiling(script, clients).await;
        match (self.ceiling_pending.take(), after) {
            (Some((key, c, before)), Some(after)) if key == script.key && c == clients => {
                Some(CeilingResult::combine(&before, &after))
            }
            (_, after) => after,
        }
    }

    /// The pgbench figure for `script` at `clients`, measured now (reads:
    /// once per invocation), on its own.
    pub(crate) async fn measure_ceiling(
        &mut self,
        script: &Script,
        clients: usize,
    ) -> Option<CeilingResult> {
        let (Some(ceiling), Some(db)) = (self.ceiling.as_mut(), self.db.as_ref()) else {
            return None;
        };
        ceiling
            .measure(db, script, clients, self.timing.measure)
            .await
    }

    /// A fresh store in `schema` seeded with `streams`, vacuumed, analyzed and
    /// checkpointed like the ceiling tables, its pool warm for `writers`.
    pub(crate) async fn prepared_store<E: Event>(
        &self,
        schema: &str,
        writers: usize,
        streams: &[StreamId],
        seed: impl Fn(usize) -> E,
    ) -> anyhow::Result<PostgresEventStore> {
        let db = self.db()?;
        let store = db.fresh_store(schema, writers).await?;
        seed_streams(&store, streams, seed).await?;
        db.settle(schema).await?;
        BenchDb::warm_pool(store.pool(), writers).await?;
        Ok(store)
    }
}

/// Releases a store's connections before the next run (and the ceiling).
pub(crate) async fn close(store: PostgresEventStore) {
    store.pool().close().await;
}

/// What one operation of a worker came to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome {
    /// Done: `events` written or read, after `retries` conflict retries.
    Ok { events: u64, retries: u64 },
    /// Failed its expected-version check (after `retries` retries); counted,
    /// not fatal.
    Conflict { retries: u64 },
}

/// One concurrent writer or reader. Each gets its own task.
pub(crate) trait Worker: Send + 'static {
    /// One timed operation.
    fn op(&mut self) -> impl Future<Output = anyhow::Result<Outcome>> + Send;
}

/// A timed run of several workers.
#[derive(Debug)]
pub(crate) struct Measured {
    /// Latency of successful operations, in microseconds.
    pub(crate) hist: Histogram<u64>,
    pub(crate) ops: u64,
    pub(crate) events: u64,
    pub(crate) conflicts: u64,
    pub(crate) retries: u64,
    /// Most retries one successful operation needed.
    pub(crate) max_retries: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// Successful operations of each worker (starvation check).
    pub(crate) per_worker_ops: Vec<u64>,
    pub(crate) seconds: f64,
    /// CPU time the whole bench process used during the measured window
    /// (`None` where `/proc/self/stat` cannot be read).
    pub(crate) client_cpu_seconds: Option<f64>,
    /// CPU time the server used meanwhile, when it runs on this machine.
    pub(crate) server_cpu_seconds: Option<f64>,
}

impl Measured {
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    fn empty(seconds: f64) -> anyhow::Result<Self> {
        Ok(Self {
            hist: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            ops: 0,
            events: 0,
            conflicts: 0,
            retries: 0,
            max_retries: 0,
            errors: 0,
            first_error: None,
            per_worker_ops: Vec::new(),
            seconds,
            client_cpu_seconds: None,
            server_cpu_seconds: None,
        })
    }
}

/// Runs every worker concurrently: a warm-up, then `timing.measure` during
/// which every operation that completes counts.
pub(crate) async fn drive<W: Worker>(workers: Vec<W>, timing: Timing) -> anyhow::Result<Measured> {
    drive_from(workers, timing, Instant::now() + Duration::from_millis(20)).await
}

/// [`drive`] with the warm-up starting at `start`: the measured window is
/// `start + warmup .. start + warmup + measure`.
pub(crate) async fn drive_from<W: Worker>(
    workers: Vec<W>,
    timing: Timing,
    start: Instant,
) -> anyhow::Result<Measured> {
    let measure_from = start + timing.warmup;
    let until = measure_from + timing.measure;
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                let mut m = Measured::empty(timing.measure.as_secs_f64())?;
                tokio::time::sleep_until(start.into()).await;
                loop {
                    let began = Instant::now();
                    if began >= until {
                        break;
                    }
                    let result = w.op().await;
                    let ended = Instant::now();
                    // Completions inside the window count: an unbiased
                    // throughput however long single operations take.
                    if ended < measure_from || ended > until {
                        continue;
                    }
                    match result {
                        Ok(Outcome::Ok { events, retries }) => {
                            m.ops += 1;
                            m.events += events;
                            m.retries += retries;
                            m.max_retries = m.max_retries.max(retries);
                            let us = (ended - began).as_micros() as u64;
                            m.hist.saturating_record(us.max(1));
                        }
                        Ok(Outcome::Conflict { retries }) => {
                            m.conflicts += 1;
                            m.retries += retries;
                        }
                        Err(e) => {
                            m.errors += 1;
                            if m.first_error.is_none() {
                                m.first_error = Some(format!("{e:#}"));
                            }
                            // Do not spin on a dead server.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                anyhow::Ok(m)
            })
        })
        .collect();
    // The client's and the server's CPU per event: what the library costs
    // the machine, and what it makes the server do. Sampled on a thread of
    // its own: workers whose operations never wait (the in-memory store)
    // would starve a task.
    let cpu = tokio::task::spawn_blocking(move || {
        std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
        let before = cpu::mark();
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        before.since()
    });
    let mut total = Measured::empty(timing.measure.as_secs_f64())?;
    (total.client_cpu_seconds, total.server_cpu_seconds) =
        cpu.await.context("the CPU sampler panicked")?;
    for task in tasks {
        let m = task.await.context("a worker panicked")??;
        total.hist.add(&m.hist)?;
        total.ops += m.ops;
        total.events += m.events;
        total.conflicts += m.conflicts;
        total.retries += m.retries;
        total.max_retries = total.max_retries.max(m.max_retries);
        total.errors += m.errors;
        if total.first_error.is_none() {
            total.first_error = m.first_error;
        }
        total.per_worker_ops.push(m.ops);
    }
    Ok(total)
}

/// The event every write scenario appends: about 200 bytes of JSON, like
/// the ceiling's `payload`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct OrderPlaced {
    order: u64,
    customer: String,
    sku: String,
    quantity: u32,
    price_cents: u64,
    currency: String,
    comment: String,
}

impl Event for OrderPlaced {
    fn event_type(&self) -> &'static str {
        "OrderPlaced"
    }
}

impl OrderPlaced {
    pub(crate) fn sample(order: u64) -> Self {
        Self {
            order: 1_000_000 + order % 1_000_000,
            customer: format!("customer-{:06}", order % 100_000),
            sku: "SKU-48213-BLUE-XL".into(),
            quantity: 3,
            price_cents: 12_999,
            currency: "EUR".into(),
            comment: "leave at the back door; ring twice; fragile, handle with care".into(),
        }
    }
}

/// The seed event of the `i`-th stream.
pub(crate) fn seed_order(i: usize) -> OrderPlaced {
    OrderPlaced::sample(i as u64)
}

/// The payload and metadata the ceiling sends, as JSON text: the same shape
/// and size as what the library writes.
pub(crate) fn ceiling_payload() -> (String, String) {
    let payload = serde_json::to_string(&OrderPlaced::sample(0)).expect("serializable");
    let meta = serde_json::to_string(&EventMetadata::new()).expect("serializable");
    (payload, meta)
}

/// `prefix-1` .. `prefix-n`.
pub(crate) fn stream_ids(prefix: &str, n: usize) -> anyhow::Result<Arc<[StreamId]>> {
    (1..=n)
        .map(|i| Ok(StreamId::new(format!("{prefix}-{i}"))?))
        .collect()
}

/// The 10,000 streams of the write scenarios.
pub(crate) fn write_streams() -> anyhow::Result<Arc<[StreamId]>> {
    stream_ids("stream", STREAMS)
}

/// Gives every stream one event, `seed(i)` for the i-th, with multi-stream
/// appends of 500 streams each.
pub(crate) async fn seed_streams<S: EventStore, E: Event>(
    store: &S,
    streams: &[StreamId],
    seed: impl Fn(usize) -> E,
) -> anyhow::Result<()> {
    for (chunk_no, chunk) in streams.chunks(500).enumerate() {
        let mut request = AppendRequest::new();
        for (i, stream) in chunk.iter().enumerate() {
            let event = NewEvent::new(&seed(chunk_no * 500 + i), EventMetadata::new())?;
            request = request.append(stream.clone(), ExpectedVersion::NoStream, vec![event]);
        }
        store.append(request).await.context("seeding streams")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_about_300_bytes_with_metadata() {
        let (payload, meta) = ceiling_payload();
        assert!((180..=220).contains(&payload.len()), "{}", payload.len());
        assert!((70..=120).contains(&meta.len()), "{}", meta.len());
    }

    #[test]
    fn keys_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::from_key(&s.key().to_lowercase()), Some(*s));
        }
    }
}
