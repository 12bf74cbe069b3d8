//! S: a command on a stream of 100,000 events against one on a stream of
//! 100, both with durable snapshots (`PostgresSnapshotStore`, every 100
//! events), each command through a fresh executor (no in-memory cache, as
//! in a process that just started, or one of many). Without snapshots the
//! long stream is read whole by every command (`S-100k-nosnap`, skipped
//! with `--quick`).

use std::sync::{Arc, atomic::Ordering};

use anyhow::Context as _;
use eventcore::{
    AppendRequest, Command, CommandError, CommandExecutor, Decide, Decision, EventMetadata,
    EventStore, ExpectedVersion, NewEvent, Snapshots, State, States, StreamId,
    testing::{CountingStore, ReadCounts},
};
use eventcore_postgres::{PostgresEventStore, PostgresSnapshotStore};
use serde::{Deserialize, Serialize};

use super::{Ctx, Measured, OrderPlaced, Outcome, Worker, close, drive};
use crate::report::Row;

/// Events on the long stream.
const LONG: usize = 100_000;
/// Events on the short stream.
const SHORT: usize = 100;
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

/// Runs [`PlaceNext`] on one stream, a fresh executor per command.
struct SnapshotWorker<S> {
    store: CountingStore<PostgresEventStore>,
    snapshots: Option<PostgresSnapshotStore>,
    stream: StreamId,
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
        let command = PlaceNext::<S> {
            stream: self.stream.clone(),
            state: std::marker::PhantomData,
        };
        match executor.execute(command).await {
            Ok(outcome) => Ok(Outcome::Ok {
                events: outcome.events_written as u64,
                retries: u64::from(outcome.attempts - 1),
            }),
            Err(CommandError::RetriesExhausted { attempts, .. }) => Ok(Outcome::Conflict {
                retries: u64::from(attempts - 1),
            }),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        }
    }
}

async fn seed(store: &PostgresEventStore, stream: &StreamId, n: usize) -> anyhow::Result<()> {
    let mut left = n;
    while left > 0 {
        let batch = left.min(SEED_BATCH);
        let events = (0..batch)
            .map(|i| NewEvent::new(&OrderPlaced::sample(i as u64), EventMetadata::new()))
            .collect::<Result<Vec<_>, _>>()?;
        store
            .append(AppendRequest::new().append(stream.clone(), ExpectedVersion::Any, events))
            .await
            .context("seeding")?;
        left -= batch;
    }
    Ok(())
}

/// One measured row: commands on `stream`, with or without snapshots.
async fn measure<S: State<Event = OrderPlaced>>(
    ctx: &Ctx,
    store: &PostgresEventStore,
    stream: &StreamId,
    snapshots: bool,
) -> anyhow::Result<(Measured, f64)>
where
    PlaceNext<S>: Command<Error = std::convert::Infallible>,
{
    let counting = CountingStore::new(store.clone());
    let counts: Arc<ReadCounts> = counting.counts();
    let worker = SnapshotWorker::<S> {
        store: counting,
        snapshots: snapshots.then(|| PostgresSnapshotStore::new(store.clone())),
        stream: stream.clone(),
        state: std::marker::PhantomData,
    };
    // One command first, outside the measurement: the first one folds the
    // stream and takes the first snapshot.
    let mut first = SnapshotWorker::<S> {
        store: CountingStore::new(store.clone()),
        snapshots: worker.snapshots.clone(),
        stream: stream.clone(),
        state: std::marker::PhantomData,
    };
    first.op().await?;
    let m = drive(vec![worker], ctx.timing).await?;
    let commands = (m.ops + m.conflicts).max(1);
    // Reads of the warm-up count too: per command, over every command run.
    let read = counts.stream_events.load(Ordering::Relaxed) as f64;
    let per_command = read / (commands as f64).max(1.0);
    Ok((m, per_command))
}

pub(crate) async fn run_s(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let db = ctx.db()?;
    let schema = "bench_snapshot";
    eprintln!("[S] seeding a stream of {LONG} events and one of {SHORT}");
    let store = db.fresh_store(schema, 4).await?;
    let long = StreamId::new("orders-long")?;
    let short = StreamId::new("orders-short")?;
    seed(&store, &long, LONG).await?;
    seed(&store, &short, SHORT).await?;
    db.settle(schema).await?;
    let mut rows = Vec::new();
    let mut runs = vec![("S-100", &short, true), ("S-100k", &long, true)];
    if !ctx.quick {
        runs.push(("S-100k-nosnap", &long, false));
    }
    for (name, stream, snapshots) in runs {
        eprintln!("[{name}] 1 writer");
        let start = store.stream_version(stream).await?.get();
        let (m, read) = if snapshots {
            measure::<Orders>(ctx, &store, stream, true).await?
        } else {
            measure::<OrdersNoSnapshot>(ctx, &store, stream, false).await?
        };
        let length = store.stream_version(stream).await?.get();
        let how = if snapshots {
            format!("snapshot every {EVERY} events, loaded then topped up")
        } else {
            "no snapshot: the whole stream is read".to_owned()
        };
        rows.push(
            Row::from_measured(name, 1, 1, &m)
                .extra("stream_length_at_start", start)
                .extra("stream_length_at_end", length)
                .extra("events_read_per_command", crate::report::round(read))
                .note(format!(
                    "a command appending to a stream of {start} events ({length} at the end), \
                     fresh executor each: {how}; {read:.0} events read per command"
                )),
        );
    }
    close(store).await;
    Ok(rows)
}
