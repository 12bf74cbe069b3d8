//! S: a command on a stream of 100,000 events against one on a stream of
//! 100 (a random one of 1,000, so that none grows much during the run),
//! with durable snapshots (`PostgresSnapshotStore`, every 100 events), each
//! command through a fresh executor (no in-memory cache, as in a process
//! that just started, or one of many). Outside `--quick`, both again
//! without snapshots: the long stream is then read whole by every command.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use anyhow::Context as _;
use eventcore::{
    AppendRequest, Command, CommandExecutor, Decide, Decision, EventMetadata, EventStore,
    ExpectedVersion, NewEvent, Snapshots, State, States, StreamId,
    testing::{CountingStore, ReadCounts},
};
use eventcore_postgres::{PostgresEventStore, PostgresSnapshotStore};
use serde::{Deserialize, Serialize};

use rand::{Rng, SeedableRng, rngs::SmallRng};

use crate::{
    ctx::{Ctx, close},
    measure::{Measured, Outcome, Worker, drive},
    report::{Row, round},
    workload::{OrderPlaced, command_outcome, stream_ids},
};

/// Events on the long stream.
const LONG: usize = 100_000;
/// Events on each short stream.
const SHORT: usize = 100;
/// Short streams.
const SHORT_STREAMS: usize = 1_000;
/// Events per seeding append.
const SEED_BATCH: usize = 5_000;
/// Snapshot interval.
const EVERY: u64 = 100;

/// Orders placed on one stream.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Orders {
    count: u64,
    last: u64,
}

impl State for Orders {
    type Event = OrderPlaced;

    fn apply(&mut self, _event: &OrderPlaced) {
        self.count += 1;
        self.last += 1;
    }

    fn snapshots() -> Option<Snapshots<Self>> {
        Some(Snapshots::new("bench.orders").every(EVERY))
    }
}

/// The same fold without snapshots.
#[derive(Clone, Debug, Default)]
struct OrdersNoSnapshot(u64);

impl State for OrdersNoSnapshot {
    type Event = OrderPlaced;

    fn apply(&mut self, _event: &OrderPlaced) {
        self.0 += 1;
    }
}

/// Places one more order on its stream.
#[derive(eventcore::Command)]
struct PlaceNext<S> {
    #[stream]
    stream: StreamId,
    state: std::marker::PhantomData<fn() -> S>,
}

impl<S: State<Event = OrderPlaced>> Decide for PlaceNext<S> {
    type State = S;
    type Error = std::convert::Infallible;

    fn decide(
        &self,
        _states: &States<S>,
        d: &mut Decision<OrderPlaced>,
    ) -> Result<(), Self::Error> {
        d.emit(&self.stream, OrderPlaced::sample(7));
        Ok(())
    }
}

/// Runs [`PlaceNext`] on a random one of `streams`, a fresh executor per
/// command.
struct SnapshotWorker<S> {
    store: CountingStore<PostgresEventStore>,
    snapshots: Option<PostgresSnapshotStore>,
    streams: Arc<[StreamId]>,
    rng: SmallRng,
    /// Commands run, warm-up included.
    ran: Arc<AtomicU64>,
    state: std::marker::PhantomData<fn() -> S>,
}

impl<S: State<Event = OrderPlaced>> Worker for SnapshotWorker<S>
where
    PlaceNext<S>: Command<Error = std::convert::Infallible>,
{
    async fn op(&mut self) -> anyhow::Result<Outcome> {
        let mut executor = CommandExecutor::new(self.store.clone());
        if let Some(snapshots) = &self.snapshots {
            executor = executor.with_snapshots(snapshots.clone());
        }
        self.ran.fetch_add(1, Ordering::Relaxed);
        let stream = &self.streams[self.rng.random_range(0..self.streams.len())];
        let command = PlaceNext::<S> {
            stream: stream.clone(),
            state: std::marker::PhantomData,
        };
        command_outcome(executor.execute(command).await)
    }
}

/// Gives each of `streams` `n` events, about [`SEED_BATCH`] per append.
async fn seed(store: &PostgresEventStore, streams: &[StreamId], n: usize) -> anyhow::Result<()> {
    let events = |count: usize| {
        (0..count)
            .map(|i| NewEvent::new(&OrderPlaced::sample(i as u64), EventMetadata::new()))
            .collect::<Result<Vec<_>, _>>()
    };
    let per_append = (SEED_BATCH / n).max(1);
    for chunk in streams.chunks(per_append) {
        let mut left = n;
        while left > 0 {
            let batch = left.min(SEED_BATCH);
            let mut request = AppendRequest::new();
            for stream in chunk {
                request = request.append(stream.clone(), ExpectedVersion::Any, events(batch)?);
            }
            store.append(request).await.context("seeding")?;
            left -= batch;
        }
    }
    Ok(())
}

/// One measured row: commands on `streams`, with or without snapshots.
async fn measure<S: State<Event = OrderPlaced>>(
    ctx: &Ctx,
    store: &PostgresEventStore,
    streams: &Arc<[StreamId]>,
    snapshots: bool,
) -> anyhow::Result<(Measured, f64)>
where
    PlaceNext<S>: Command<Error = std::convert::Infallible>,
{
    let counting = CountingStore::new(store.clone());
    let counts: Arc<ReadCounts> = counting.counts();
    let snapshots = snapshots.then(|| PostgresSnapshotStore::new(store.clone()));
    let worker = |store, streams, seed, ran| SnapshotWorker::<S> {
        store,
        snapshots: snapshots.clone(),
        streams,
        rng: SmallRng::seed_from_u64(seed),
        ran,
        state: std::marker::PhantomData,
    };
    let ran = Arc::new(AtomicU64::new(0));
    let measured = worker(counting, Arc::clone(streams), 0x5A, Arc::clone(&ran));
    if snapshots.is_some() {
        // A command on each stream first, outside the measurement: the
        // first one folds the stream and takes its first snapshot.
        for stream in streams.iter() {
            let one = Arc::from([stream.clone()]);
            worker(CountingStore::new(store.clone()), one, 0, Arc::default())
                .op()
                .await?;
        }
    }
    let m = drive(vec![measured], ctx.timing).await?;
    // Every command the worker ran, warm-up included, read through `counting`.
    let read = counts.stream_events.load(Ordering::Relaxed) as f64;
    let per_command = read / ran.load(Ordering::Relaxed).max(1) as f64;
    Ok((m, per_command))
}

pub(super) async fn run_s(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let db = ctx.db()?;
    let schema = "bench_snapshot";
    eprintln!("[S] seeding a stream of {LONG} events and {SHORT_STREAMS} of {SHORT}");
    let store = db.fresh_store(schema, 4).await?;
    let long: Arc<[StreamId]> = Arc::from([StreamId::new("orders-long")?]);
    let short = stream_ids("orders-short", SHORT_STREAMS)?;
    seed(&store, &long, LONG).await?;
    seed(&store, &short, SHORT).await?;
    db.settle(schema).await?;
    let mut rows = Vec::new();
    let mut runs = vec![("S-100", &short, true), ("S-100k", &long, true)];
    if !ctx.quick {
        runs.push(("S-100-nosnap", &short, false));
        runs.push(("S-100k-nosnap", &long, false));
    }
    for (name, streams, snapshots) in runs {
        eprintln!("[{name}] 1 writer");
        let length = |store: PostgresEventStore, streams: Arc<[StreamId]>| async move {
            let mut total = 0;
            for s in streams.iter() {
                total += store.stream_version(s).await?.get();
            }
            anyhow::Ok(total / streams.len() as u64)
        };
        let start = length(store.clone(), Arc::clone(streams)).await?;
        let (m, read) = if snapshots {
            measure::<Orders>(ctx, &store, streams, true).await?
        } else {
            measure::<OrdersNoSnapshot>(ctx, &store, streams, false).await?
        };
        let end = length(store.clone(), Arc::clone(streams)).await?;
        let how = if snapshots {
            format!("snapshot every {EVERY} events, loaded then topped up")
        } else {
            "no snapshot: the whole stream is read".to_owned()
        };
        let which = match streams.len() {
            1 => "one stream".to_owned(),
            n => format!("a random one of {n} streams"),
        };
        rows.push(
            Row::from_measured(name, 1, 1, &m)
                .extra("stream_length_at_start", start)
                .extra("stream_length_at_end", end)
                .extra("events_read_per_command", round(read))
                .note(format!(
                    "a command appending to {which} of {start} events ({end} at the end, \
                     on average), fresh executor each: {how}; {read:.0} events read per command"
                )),
        );
    }
    close(store).await;
    Ok(rows)
}
